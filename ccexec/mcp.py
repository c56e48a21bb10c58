"""``python -m ccexec mcp``: a Model Context Protocol server on stdio, standard library only.

JSON-RPC 2.0, one message per line. The main thread reads stdin (each line bounded) and
answers everything but ``tools/call`` at once; each tool call runs in a thread of its own, so
several can be in flight, and ``notifications/cancelled`` kills the code of the call it names
(the executor's Cancel kills the block's whole process tree). While serving, fd 1 points at
stderr and fd 0 at /dev/null: stdout carries protocol messages only, and nothing started here
can read the client's messages.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any, BinaryIO, Callable, Dict, Union

from ._client import Cancel
from ._mcp_tools import Tools
from .errors import CcexecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .executor import BaseCommandLineExecutor

JSON = Dict[str, Any]
RequestId = Union[str, int]

#: Protocol versions spoken, newest first; a client asking for another one gets the newest.
PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
#: Longest message line read, in bytes (a write_file's content travels in one line).
MAX_LINE_BYTES = 8 << 20
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR = -32700, -32600, -32601, -32602, -32603
#: Seconds shutdown waits for each cancelled call's thread (its block is being killed meanwhile).
CALL_JOIN_GRACE = 15.0
_METHODS = "initialize, ping, tools/list and tools/call"


class RpcError(Exception):
    """A JSON-RPC error answer: ``code`` and a message saying what to send instead."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class LineTooLong(Exception):
    """A line over MAX_LINE_BYTES was read and skipped."""


class Channel:
    """Protocol messages out: one JSON object per line, each written whole under a lock."""

    def __init__(self, out: BinaryIO) -> None:
        self._out, self._lock, self.closed = out, threading.Lock(), False

    def send(self, message: JSON) -> None:
        """Write one message; a closed pipe marks the channel closed (the client is gone)."""
        data = json.dumps(message, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n"
        with self._lock:
            if self.closed:
                return
            try:
                self._out.write(data)
                self._out.flush()
            except (OSError, ValueError):
                self.closed = True

    def result(self, ident: RequestId, result: JSON) -> None:
        self.send({"jsonrpc": "2.0", "id": ident, "result": result})

    def error(self, ident: RequestId | None, code: int, message: str) -> None:
        self.send({"jsonrpc": "2.0", "id": ident, "error": {"code": code, "message": message}})

    def notify(self, method: str, params: JSON) -> None:
        self.send({"jsonrpc": "2.0", "method": method, "params": params})


def read_line(stream: BinaryIO, limit: int = MAX_LINE_BYTES) -> bytes | None:
    """Return the next line without its newline, None at the end of the stream.

    Raises LineTooLong once a line longer than ``limit`` has been read to its end and dropped.
    """
    line = stream.readline(limit + 1)
    if not line:
        return None
    if line.endswith(b"\n"):
        return line[:-1]
    if len(line) <= limit:
        return line  # the last line, without a newline
    while line and not line.endswith(b"\n"):
        line = stream.readline(1 << 16)
    raise LineTooLong


def _is_id(value: object) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


class Server:
    """Answer one client's messages; run tool calls on ``executor``, each in its own thread."""

    def __init__(self, executor: BaseCommandLineExecutor, channel: Channel, tools: Tools) -> None:
        self._executor, self._channel, self._tools = executor, channel, tools
        self._version = PROTOCOL_VERSIONS[0]
        self._calls: dict[RequestId, tuple[Cancel, threading.Thread]] = {}
        self._lock = threading.Lock()

    def serve(self, stream: BinaryIO) -> None:
        """Handle lines until the end of ``stream``, then kill running code and stop the executor."""
        try:
            while not self._channel.closed:
                try:
                    line = read_line(stream)
                except LineTooLong:
                    self._channel.error(None, PARSE_ERROR, f"message longer than {MAX_LINE_BYTES} bytes; dropped")
                    continue
                if line is None:
                    break
                self.handle_line(line)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        """Cancel every running call (its processes are killed), wait for them, stop the executor."""
        with self._lock:
            calls = list(self._calls.values())
        for cancel, _ in calls:
            cancel.set()
        for _, thread in calls:
            thread.join(CALL_JOIN_GRACE)
        self._executor.stop()

    def handle_line(self, line: bytes) -> None:
        """Parse one line and answer it (or not, for a notification); never raises for bad input."""
        if not line.strip():
            return
        try:
            message = json.loads(line)
        except (ValueError, RecursionError) as exc:
            self._channel.error(None, PARSE_ERROR, f"not valid JSON ({exc}); send one JSON object per line")
            return
        try:
            self._dispatch(message)
        except RpcError as exc:
            ident = message.get("id") if isinstance(message, dict) else None
            if isinstance(message, dict) and "id" not in message:
                print(f"ccexec mcp: ignored a notification: {exc.message}", file=sys.stderr)
            else:
                self._channel.error(ident if _is_id(ident) else None, exc.code, exc.message)

    def _dispatch(self, message: object) -> None:
        if isinstance(message, list):
            raise RpcError(INVALID_REQUEST, "batches are not supported; send one message per line")
        if not isinstance(message, dict):
            raise RpcError(INVALID_REQUEST, "a message must be a JSON object")
        if "method" not in message and ("result" in message or "error" in message):
            return  # a response: this server sends no requests, so there is nothing to match it with
        if message.get("jsonrpc") != "2.0":
            raise RpcError(INVALID_REQUEST, 'the "jsonrpc" member must be exactly "2.0"')
        method, params = message.get("method"), message.get("params", {})
        if not isinstance(method, str):
            raise RpcError(INVALID_REQUEST, 'the "method" member must be a string')
        if "id" in message and not _is_id(message["id"]):
            raise RpcError(INVALID_REQUEST, 'the "id" member must be a string or an integer')
        if not isinstance(params, dict):
            raise RpcError(INVALID_PARAMS, f'"params" of {method} must be an object')
        if "id" not in message:
            self._notification(method, params)
        else:
            self._request(message["id"], method, params)

    def _notification(self, method: str, params: JSON) -> None:
        ident = params.get("requestId")
        if method == "notifications/cancelled" and isinstance(ident, (str, int)) and _is_id(ident):
            with self._lock:
                call = self._calls.get(ident)
            if call is not None:
                call[0].set()

    def _request(self, ident: RequestId, method: str, params: JSON) -> None:
        if method == "tools/call":
            self._start_call(ident, params)
            return
        handlers: dict[str, Callable[[JSON], JSON]] = {
            "initialize": self._initialize,
            "ping": lambda _: {},
            "tools/list": lambda _: {"tools": self._tools.definitions(structured=self._structured)},
        }
        handler = handlers.get(method)
        if handler is None:
            raise RpcError(METHOD_NOT_FOUND, f"method {method!r} not found; this server answers {_METHODS}")
        self._channel.result(ident, handler(params))

    @property
    def _structured(self) -> bool:
        """Whether the client's protocol knows outputSchema and structuredContent (2025-06-18 on)."""
        return self._version >= "2025-06-18"

    def _initialize(self, params: JSON) -> JSON:
        asked = params.get("protocolVersion")
        if not isinstance(asked, str):
            raise RpcError(INVALID_PARAMS, 'initialize needs "protocolVersion", a string such as "2025-06-18"')
        self._version = asked if asked in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0]
        from . import __version__

        return {
            "protocolVersion": self._version,
            "capabilities": {"tools": {"listChanged": False}},
            "serverInfo": {"name": "ccexec", "version": __version__},
            "instructions": self._tools.instructions(),
        }

    def _start_call(self, ident: RequestId, params: JSON) -> None:
        name, arguments = params.get("name"), params.get("arguments", {})
        if not isinstance(name, str) or not self._tools.has(name):
            raise RpcError(INVALID_PARAMS, f"unknown tool {name!r}; the tools are {', '.join(self._tools.names)}")
        if not isinstance(arguments, dict):
            raise RpcError(INVALID_PARAMS, f'"arguments" of {name} must be an object')
        meta = params.get("_meta")
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        cancel = Cancel()
        thread = threading.Thread(
            target=self._call, args=(ident, name, arguments, cancel, token if _is_id(token) else None), daemon=True
        )
        with self._lock:
            if ident in self._calls:
                raise RpcError(INVALID_REQUEST, f"request id {ident!r} is already in use by a running call")
            self._calls[ident] = (cancel, thread)
        thread.start()

    def _call(self, ident: RequestId, name: str, arguments: JSON, cancel: Cancel, token: RequestId | None) -> None:
        """Run one tool call and answer it, unless it was cancelled (then the client expects no answer)."""
        progress = None if token is None else self._progress(token)
        error = ""
        try:
            result: JSON | None = self._tools.call(name, arguments, cancel, progress, structured=self._structured)
        except CcexecError as exc:
            result = self._tools.failure(f"ccexec could not run it: {exc}")
        except Exception as exc:  # noqa: BLE001 - one failing call must not end the server
            import traceback

            traceback.print_exc(file=sys.stderr)
            result = None
            error = f"internal error in ccexec's {name}: {type(exc).__name__}: {exc}; see the server's stderr"
        finally:
            with self._lock:
                self._calls.pop(ident, None)
        if cancel.is_set():
            return
        if result is None:
            self._channel.error(ident, INTERNAL_ERROR, error)
        else:
            self._channel.result(ident, result)

    def _progress(self, token: RequestId) -> Callable[[bytes], None]:
        from ._mcp_tools import ProgressStream

        send = lambda params: self._channel.notify("notifications/progress", {"progressToken": token, **params})  # noqa: E731
        return ProgressStream(send, self._tools.max_output_bytes)


def serve_stdio(executor: BaseCommandLineExecutor, tools: Tools) -> int:
    """Serve on this process's stdin and stdout until stdin ends; return the exit code (0)."""
    out = os.fdopen(os.dup(1), "wb")
    stream = os.fdopen(os.dup(0), "rb")
    os.dup2(2, 1)  # a stray print, ours or a library's, must not corrupt the protocol
    sys.stdout = sys.stderr
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    _exit_on_sigterm()
    server = Server(executor, Channel(out), tools)
    try:
        server.serve(stream)
    finally:
        stream.close()
        out.close()
    return 0


def _exit_on_sigterm() -> None:
    """SIGTERM ends the server through its cleanup (code killed, container removed), as EOF does."""
    import signal

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, stop)


def tools_for(executor: BaseCommandLineExecutor, args: Any) -> Tools:
    """The tools over ``executor``, configured from the command line's backend flags."""
    if args.backend == "local":
        files: str | None = str(executor.work_dir)
        note = "on the server's host, with its user's permissions (not a sandbox)"
    elif args.backend == "sandbox":
        files = str(executor.work_dir)
        network = getattr(executor, "sandbox_network", False)
        note = "in a sandbox on the server's host" + ("" if network else " without network access")
    else:
        mounted = getattr(executor, "mounts_work_dir", False)
        files = str(executor.work_dir) if mounted else None
        note = "in a container" + (" without network access" if args.hardened and args.network is None else "")
    return Tools(executor, timeout=args.timeout, max_output_bytes=args.max_output_bytes, files=files, note=note)
