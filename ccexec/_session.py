"""How blocks reach a running container: the attached runner, or one ``docker exec`` each.

Both sessions offer the same calls: ``run(request, capture, cancel, deadline)`` returns the
block's end as a dict, ``delete(paths)``, ``close()`` and the ``alive`` flag.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import threading
import time
from collections import deque
from typing import Any, Iterator

from .backends import docker_cli as _docker_cli
from ._capture import OutputCapture
from .backends.docker_cli import DockerCLI
from ._process import Cancel, run_block
from .blocks import FilenameOutsideWorkspace, host_code_path
from .docker import WORKSPACE
from .errors import ContainerGoneError, DockerError, DockerTimeoutError

#: Seconds a block may overrun its deadline before the runner counts as hung.
RUNNER_GRACE = 10.0
#: Seconds close() waits for the attached client to end before removing the container.
STOP_DEADLINE = 10.0


class _Attached:
    """A docker client process attached to a container (``run -i`` or ``exec -i``).

    Its stdin is ours: closing it (or our death) ends the process inside, and with it the
    container when that process is the container's main one.
    """

    def __init__(self, cli: DockerCLI, args: list[str], name: str) -> None:
        self.cli = cli
        self.name = name
        self.argv = [*cli.argv, *args]
        self._stderr: deque[bytes] = deque(maxlen=64)
        # A new session: a Ctrl-C in the terminal must not kill the client before we stop.
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
        threading.Thread(target=self._read_stderr, name=f"ccexec-{name}-err", daemon=True).start()

    def _read_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        with stream:  # closed at EOF, by this thread, which is the only reader
            for line in iter(stream.readline, b""):
                self._stderr.append(line)

    def stderr_text(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace").strip()

    def close(self, remove: bool) -> int:
        """Close stdin and wait for the client; past STOP_DEADLINE kill it (and remove the container)."""
        with contextlib.suppress(OSError, ValueError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            return self.proc.wait(STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            if remove:
                remove_container(self.cli, self.name)
            self.proc.kill()
            return self.proc.wait()

    def discard(self) -> None:
        """Kill the client (it failed to start) and release its stdin."""
        self.proc.kill()
        self.proc.wait()
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def gone_error(self) -> ContainerGoneError:
        code = self.proc.wait()
        reason = "killed (SIGKILL or out of memory)" if code == 137 else f"exit status {code}"
        return ContainerGoneError(
            f"container {self.name} ended while a block was running ({reason}); the block's result "
            f"is lost. The next call starts a new container. {self.stderr_text()}".strip(),
            container=self.name,
            exit_status=code,
        )


def remove_container(cli: DockerCLI, name: str) -> None:
    """Remove a container by force, ignoring failures (it may be gone already)."""
    with contextlib.suppress(DockerError):
        cli.run(*cli.remove_args(name), check=False)


class _Pending:
    """A block the runner is working on: where its output goes, and its end."""

    __slots__ = ("capture", "done", "result")

    def __init__(self, capture: OutputCapture) -> None:
        self.capture = capture
        self.done = threading.Event()
        self.result: dict[str, Any] | None = None


class RunnerSession:
    """Blocks sent as framed requests to ccexec's runner over one attached client."""

    def __init__(self, cli: DockerCLI, args: list[str], name: str, image: str, *, owns_container: bool) -> None:
        self.name = name
        self.info: dict[str, Any] = {}
        self.alive = False
        self._owns_container = owns_container
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._write_lock = threading.Lock()
        self._ready = threading.Event()
        self._client = _Attached(cli, args, name)
        threading.Thread(target=self._read_frames, name=f"ccexec-{name}-out", daemon=True).start()
        deadline = _docker_cli.RUN_DEADLINE
        if not self._ready.wait(deadline) or not self.alive:
            timed_out = not self._ready.is_set()
            self._client.discard()
            if owns_container:
                remove_container(cli, name)
            if timed_out:
                raise DockerTimeoutError(
                    f"the container did not start within {deadline:g} s and the client was killed; the "
                    f"engine ({cli.target()}) may be hung or pulling a large image: check `{cli.name} info`",
                    command=self._client.argv,
                )
            raise cli.error(self._client.argv, self._client.stderr_text(), image=image)

    def _read_frames(self) -> None:
        import json

        stream = self._client.proc.stdout
        assert stream is not None
        try:  # the stream is closed at EOF, by this thread, which is its only reader
            for header in iter(stream.readline, b""):
                kind, _, rest = header.rstrip(b"\n").partition(b" ")
                if kind == b"o":
                    ident, length = rest.split(b" ")
                    data = stream.read(int(length))
                    pending = self._pending.get(int(ident))
                    if pending is not None:
                        pending.capture.feed(data)
                elif kind == b"x":
                    ident, payload = rest.split(b" ", 1)
                    pending = self._pending.get(int(ident))
                    if pending is not None:
                        pending.result = json.loads(payload)
                        pending.done.set()
                elif kind == b"r":
                    self.info = json.loads(rest)
                    self.alive = True
                    self._ready.set()
        finally:
            stream.close()
            self.alive = False
            self._ready.set()
            for pending in list(self._pending.values()):
                pending.done.set()

    def _send(self, *requests: dict[str, Any]) -> None:
        import json

        line = b"".join(json.dumps(request).encode() + b"\n" for request in requests)
        stdin = self._client.proc.stdin
        assert stdin is not None
        try:
            with self._write_lock:
                stdin.write(line)
                stdin.flush()
        except (OSError, ValueError):
            self.alive = False

    def run(self, request: dict[str, Any], capture: OutputCapture, cancel: Cancel, deadline: float) -> dict[str, Any]:
        """Send one block and wait for its end; raise ContainerGoneError when the container dies."""
        return next(self.run_chain([request], [capture], cancel, deadline))

    def run_chain(
        self, requests: list[dict[str, Any]], captures: list[OutputCapture], cancel: Cancel, deadline: float
    ) -> Iterator[dict[str, Any]]:
        """Send all blocks at once, each to run only if the one before succeeds; yield their ends.

        One write instead of a round trip per block: the runner starts each block as soon as
        the previous one succeeded, and skips the rest after a failure.
        """
        ids = [next(self._ids) for _ in requests]
        pendings = [_Pending(capture) for capture in captures]
        self._pending.update(zip(ids, pendings))
        try:
            lines = [
                {**request, "op": "run", "id": ident, "after": ids[index - 1] if index else None}
                for index, (request, ident) in enumerate(zip(requests, ids))
            ]
            self._send(*lines)
            for ident, pending in zip(ids, pendings):
                yield self._wait(ident, pending, cancel, deadline)
        finally:
            for ident in ids:
                del self._pending[ident]

    def _wait(self, ident: int, pending: _Pending, cancel: Cancel, deadline: float) -> dict[str, Any]:
        end = time.monotonic() + deadline + RUNNER_GRACE
        cancel_sent = False
        while not pending.done.wait(0.05):
            if cancel.is_set() and not cancel_sent:
                self._send({"op": "cancel", "id": ident})
                cancel_sent = True
                end = min(end, time.monotonic() + RUNNER_GRACE)
            if time.monotonic() > end:
                self.close()
                raise ContainerGoneError(
                    f"container {self.name} did not report the end of a block {deadline:g} s after "
                    "it started; it was stopped. The next call starts a new container.",
                    container=self.name,
                )
        if pending.result is None:
            raise self._client.gone_error()
        return pending.result

    def delete(self, paths: list[str]) -> None:
        """Remove files from the workspace (relative paths), after the blocks sent before."""
        self._send({"op": "delete", "paths": paths})

    def close(self) -> None:
        """The runner sees its stdin close, kills its blocks and exits."""
        self._client.close(remove=self._owns_container)
        self.alive = False


# The attached main process of exec mode: says it is up, then lives until its stdin closes.
WAITER = "echo ready; while read -r _; do :; done"
# Runs a block under docker exec. Every exec'd process leads its own process group: the pid
# file lets a timeout kill that group from another exec (no pkill needed in the image). At a
# normal end the shell itself kills what the block left in its group: TERM to the group (the
# shell survives it through its trap; the block does not inherit a handler), then SIGKILL to
# each remaining member found in /proc (not to the group, which would end the shell too).
_EXEC_WRAPPER = (
    'pf="/tmp/ccexec-$CCEXEC_BLOCK_ID.pid"; echo $$ > "$pf"; cd /workspace || exit 1; trap : TERM; '
    '"$@"; rc=$?; rm -f "$pf"; kill -s TERM 0 2>/dev/null; '
    'for f in /proc/[0-9]*/stat; do read -r s < "$f" 2>/dev/null || continue; p=${f#/proc/}; p=${p%/stat}; '
    's=${s##*) }; set -- $s; [ "$3" = "$$" ] && [ "$p" != "$$" ] && kill -s KILL "$p" 2>/dev/null; done; '
    "exit $rc"
)
_KILL_GROUP = 'f="/tmp/ccexec-$1.pid"; [ -f "$f" ] && kill -s "$2" -- "-$(cat "$f")"; [ "$2" = KILL ] && rm -f "$f"; :'


class ExecSession:
    """Blocks run one ``docker exec`` each: slower, but needs only ``sh`` in the image."""

    def __init__(self, cli: DockerCLI, name: str, main: _Attached | None, host_work_dir: str | None) -> None:
        self.name = name
        self.info: dict[str, Any] = {}
        self._cli = cli
        self._main = main
        self._host_work_dir = host_work_dir  # set when the work dir is bind-mounted
        self._open = True
        self._python_path: str | None = None

    @classmethod
    def attached(cls, cli: DockerCLI, args: list[str], name: str, image: str, host_work_dir: str | None) -> ExecSession:
        """Start the container with the waiter as its attached main process."""
        main = _Attached(cli, args, name)
        assert main.proc.stdout is not None
        if main.proc.stdout.readline() != b"ready\n":
            main.discard()
            main.proc.stdout.close()
            raise cli.error(main.argv, main.stderr_text(), image=image)
        return cls(cli, name, main, host_work_dir)

    def run(self, request: dict[str, Any], capture: OutputCapture, cancel: Cancel, deadline: float) -> dict[str, Any]:
        """Write the file, run it with docker exec, kill its group inside on timeout or cancel."""
        path, code = request.get("path"), request["code"]
        block_id = os.urandom(8).hex()
        if path is not None:
            try:
                self._write(path, code)
            except FilenameOutsideWorkspace:
                capture.feed(f"Filename is not in the workspace: {path!r}\n".encode())
                return {"exit_code": 1, "not_started": True}
            except OSError as exc:  # a directory by that name, a name too long...
                capture.feed(f"ccexec: cannot write {path!r}: {exc.strerror}\n".encode())
                return {"exit_code": 1, "not_started": True}
        argv = [f"{WORKSPACE}/{path}" if part == "{file}" else part for part in request["argv"]]
        if "{python}" in argv:
            argv = [self._python() if part == "{python}" else part for part in argv]
        env_flags = [item for key, value in request["env"].items() for item in ("--env", f"{key}={value}")]
        exec_argv = [
            *self._cli.argv, "exec", "--env", f"CCEXEC_BLOCK_ID={block_id}", *env_flags, self.name,
            "/bin/sh", "-c", _EXEC_WRAPPER, "sh", *argv,
        ]  # fmt: skip
        outcome = run_block(exec_argv, cwd=".", env=dict(os.environb), timeout=deadline, capture=capture, cancel=cancel)
        if outcome.timed_out or outcome.cancelled:
            self._signal(block_id, "TERM")
            time.sleep(0.5)
            self._signal(block_id, "KILL")
        if self._main is not None and self._main.proc.poll() is not None:
            raise self._main.gone_error()
        return {
            "exit_code": outcome.exit_code,
            "timed_out": outcome.timed_out,
            "cancelled": outcome.cancelled,
            "duration": outcome.duration,
        }

    def run_chain(
        self, requests: list[dict[str, Any]], captures: list[OutputCapture], cancel: Cancel, deadline: float
    ) -> Iterator[dict[str, Any]]:
        """Run blocks one after another; the caller stops iterating after a failure."""
        for request, capture in zip(requests, captures):
            yield self.run(request, capture, cancel, deadline)

    def _python(self) -> str:
        """The image's Python: python3, else python (found once, with one more exec)."""
        if self._python_path is None:
            find = "command -v python3 || command -v python || echo python3"
            done = self._cli.run("exec", self.name, "/bin/sh", "-c", find, check=False)
            self._python_path = done.stdout.decode("utf-8", "replace").strip() or "python3"
        return self._python_path

    def _write(self, path: str, code: str) -> None:
        if self._host_work_dir is not None:
            target = host_code_path(path, self._host_work_dir)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "w", encoding="utf-8", newline="") as handle:
                handle.write(code)
            return
        script = 'mkdir -p "$(dirname "$1")" && cat > "$1"'
        target = f"{WORKSPACE}/{path}"
        done = self._cli.run(
            "exec", "-i", self.name, "/bin/sh", "-c", script, "sh", target, input=code.encode(), check=False
        )
        if done.returncode != 0:
            raise OSError(done.returncode, done.stderr.decode("utf-8", "replace").strip() or "write failed")

    def _signal(self, block_id: str, signal_name: str) -> None:
        with contextlib.suppress(DockerError):
            self._cli.run("exec", self.name, "/bin/sh", "-c", _KILL_GROUP, "sh", block_id, signal_name, check=False)

    @property
    def alive(self) -> bool:
        """Whether the container's main process still runs (always True when detached)."""
        return self._open and (self._main is None or self._main.proc.poll() is None)

    def delete(self, paths: list[str]) -> None:
        """Remove files from the workspace (relative paths)."""
        if self._host_work_dir is not None:
            for path in paths:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(self._host_work_dir, path))
            return
        quoted = [f"{WORKSPACE}/{path}" for path in paths]
        with contextlib.suppress(DockerError):
            self._cli.run("exec", self.name, "rm", "-f", *quoted, check=False)

    def close(self) -> None:
        """End the waiter (so the container) when it is ours."""
        if self._main is not None:
            self._main.close(remove=True)
            assert self._main.proc.stdout is not None
            self._main.proc.stdout.close()  # read only for the ready line
        self._open = False
