"""A raw JSON-RPC client for ``python -m ccexec mcp``: the server as a real subprocess, its pipes read line by line."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parent.parent
Message = dict[str, Any]


class RawServer:
    """The server process; every stdout line is parsed, and one that is not a JSON-RPC object is kept in ``bad``."""

    def __init__(self, args: Sequence[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ccexec", "mcp", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        )
        self.messages: queue.Queue[Message] = queue.Queue()
        self.bad: list[bytes] = []
        self.stderr = bytearray()
        self._ids = iter(range(1_000_000, 2_000_000))
        self._readers = [threading.Thread(target=f, daemon=True) for f in (self._read, self._read_stderr)]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                self.bad.append(line)
                continue
            if not isinstance(message, dict) or message.get("jsonrpc") != "2.0" or not line.endswith(b"\n"):
                self.bad.append(line)
            else:
                self.messages.put(message)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr += line

    def send_line(self, data: bytes) -> None:
        """Write raw bytes and a newline to the server's stdin."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(data + b"\n")
        self.proc.stdin.flush()

    def send(self, message: Message) -> None:
        self.send_line(json.dumps(message).encode())

    def call(self, method: str, params: Message | None = None) -> int:
        """Send a request; return its id."""
        ident = next(self._ids)
        self.send({"jsonrpc": "2.0", "id": ident, "method": method, **({} if params is None else {"params": params})})
        return ident

    def wait_for(self, ident: object, within: float = 30.0, seen: list[Message] | None = None) -> Message:
        """Return the response with ``ident``; other messages read meanwhile go to ``seen``."""
        end = time.monotonic() + within
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no response {ident!r} within {within} s; stderr: {self.stderr.decode()[-2000:]}")
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if "method" not in message and message.get("id") == ident:
                return message
            if seen is not None:
                seen.append(message)

    def request(self, method: str, params: Message | None = None, within: float = 30.0) -> Message:
        """Send a request and return its response."""
        return self.wait_for(self.call(method, params), within)

    def initialize(self, version: str = "2025-06-18") -> Message:
        response = self.request(
            "initialize", {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "0"}}
        )
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        return response

    def tool(self, name: str, arguments: Message, within: float = 30.0) -> Message:
        """Call a tool; return its result (raises on a JSON-RPC error)."""
        response = self.request("tools/call", {"name": name, "arguments": arguments}, within)
        assert "result" in response, response
        result: Message = response["result"]
        return result

    def close(self, within: float = 20.0) -> int:
        """Close stdin and return the exit code."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return self.proc.wait(within)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for reader in self._readers:
                reader.join(5)
            for pipe in (self.proc.stdout, self.proc.stderr):
                if pipe is not None:
                    pipe.close()

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.close()
