"""The in-container runner: ccexec ships this file as text and runs it as the container's main
process (``python -c SOURCE``), attached to the host over the container's stdin and stdout.

Wire protocol (all integers decimal, ids chosen by the host):
  host -> runner, one JSON object per line:
    {"op": "run", "id": N, "path": "rel/name.py" | null, "code": str, "argv": [...],
     "timeout": seconds, "env": {...}}   write ``code`` to ``path`` (when given), run argv
    {"op": "cancel", "id": N}            stop block N now (as a timeout would)
    {"op": "delete", "paths": [...]}     remove generated code files
  runner -> host, frames:
    b"r <json>\\n"                       ready, once: {"python": sys.executable, "init": ...}
    b"o <id> <length>\\n" + bytes        output of block <id>
    b"x <id> <json>\\n"                  block <id> ended: {"exit_code", "timed_out", ...}
Each block is a NEW process in its own session, with a marker variable in its environment;
when it ends (exit, deadline, cancel) its group and every process carrying its marker are
killed. The runner is PID 1: it reaps every orphan, and it exits (killing all blocks) when
its stdin closes, which is how the container ends when the host process ends, even by
SIGKILL. It must run on any Python 3.8+, so it uses nothing newer.
"""

import os
import select
import sys
import time

MYPY = False
if MYPY:  # for type comments only: importing typing would slow every container start
    import signal
    from typing import Any  # noqa: F401 - used in type comments
else:
    try:  # the C module itself: `signal` wraps it in enums, and importing enum costs ~4 ms a start
        import _signal as signal
    except ImportError:  # pragma: no cover - CPython always has it
        import signal

# Imported by main() once the ready line is out: json pulls in re, which slows the start.
json = None  # type: Any

MARKER = "CCEXEC_BLOCK_ID"
TERM_GRACE = 0.5
CHUNK = 65536


def send(data):
    # type: (bytes) -> None
    view = memoryview(data)
    while view:
        written = os.write(1, view)
        view = view[written:]


def kill_marked(marker):
    # type: (str) -> None
    """SIGKILL every process carrying the marker, until none is left (a zombie has no environ)."""
    needle = (MARKER + "=" + marker).encode()
    end = time.monotonic() + 2.0
    while True:
        found = False
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) in (1, os.getpid()):
                continue
            try:
                with open("/proc/" + name + "/environ", "rb") as handle:
                    if needle not in handle.read():
                        continue
                os.kill(int(name), signal.SIGKILL)
                found = True
            except OSError:
                continue
        if not found or time.monotonic() > end:
            return
        time.sleep(0.002)


def signal_group(pgid, sig):
    # type: (int, int) -> None
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


class Block:
    """One running block: its process, output pipe and deadline."""

    def __init__(self, ident, pid, out_fd, timeout, marker):
        # type: (int, int, int, float, str) -> None
        self.ident = ident
        self.pid = pid
        self.out_fd = out_fd
        self.start = time.monotonic()
        self.deadline = self.start + timeout
        self.marker = marker
        self.status = None  # type: int | None
        self.timed_out = False
        self.cancelled = False
        self.kill_at = None  # type: float | None

    def stop(self, timed_out):
        # type: (bool) -> None
        if self.kill_at is None:
            self.timed_out, self.cancelled = timed_out, not timed_out
            signal_group(self.pid, signal.SIGTERM)
            self.kill_at = time.monotonic() + TERM_GRACE

    def finish(self):
        # type: () -> bool
        signal_group(self.pid, signal.SIGKILL)
        kill_marked(self.marker)
        end = time.monotonic() + 2.0
        while self.out_fd >= 0 and time.monotonic() < end:
            ready, _, _ = select.select([self.out_fd], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                break
            chunk = os.read(self.out_fd, CHUNK)
            if not chunk:
                break
            send(b"o %d %d\n" % (self.ident, len(chunk)) + chunk)
        if self.out_fd >= 0:
            os.close(self.out_fd)
        status = self.status or 0
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
        result = {
            "exit_code": code,
            "timed_out": self.timed_out,
            "cancelled": self.cancelled,
            "duration": time.monotonic() - self.start,
        }
        send(b"x %d %s\n" % (self.ident, json.dumps(result).encode()))
        return code == 0 and not self.timed_out and not self.cancelled


class Runner:
    def __init__(self):
        # type: () -> None
        self.root = os.path.realpath(os.getcwd())
        self.blocks = {}  # type: dict[int, Block]
        self.chained = {}  # type: dict[int, dict[str, Any]]
        self.outcomes = {}  # type: dict[int, bool]
        self.by_pid = {}  # type: dict[int, Block]
        self.pending = b""
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, lambda signum, frame: self.shutdown(0))
        self.wake = wake_read

    def fail(self, ident, message):
        # type: (int, str) -> None
        data = message.encode("utf-8", "replace")
        send(b"o %d %d\n" % (ident, len(data)) + data)
        send(b"x %d %s\n" % (ident, json.dumps({"exit_code": 1, "not_started": True}).encode()))
        self.settle(ident, False)

    def settle(self, ident, ok):
        # type: (int, bool) -> None
        """Block ``ident`` ended: start or skip the block chained after it, or remember how it ended."""
        chained = self.chained.pop(ident, None)
        if chained is None:
            self.outcomes[ident] = ok
            if len(self.outcomes) > 1000:  # ids nobody chains to
                del self.outcomes[min(self.outcomes)]
        elif ok:
            self.start(chained)
        else:
            send(b"x %d %s\n" % (chained["id"], b'{"exit_code": 1, "skipped": true}'))
            self.settle(chained["id"], False)

    def resolve(self, name):
        # type: (str) -> str | None
        path = os.path.realpath(os.path.join(self.root, name))
        return path if path.startswith(self.root.rstrip("/") + "/") else None

    def run(self, request):
        # type: (dict[str, Any]) -> None
        after = request.get("after")
        if after is not None:
            # Chained: run only once block `after` has succeeded (the rest of a call's blocks).
            ok = self.outcomes.pop(after, None)
            if ok is None:
                self.chained[after] = request
                return None
            if not ok:
                self.chained[after] = request
                return self.settle(after, False)
        return self.start(request)

    def start(self, request):
        # type: (dict[str, Any]) -> None
        """Write the block's file and spawn its process in a new session."""
        ident = request["id"]
        argv = [sys.executable if part == "{python}" else part for part in request["argv"]]
        if request.get("path") is not None:
            path = self.resolve(request["path"])
            if path is None:
                return self.fail(ident, "Filename is not in the workspace: %r\n" % request["path"])
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8", newline="") as handle:
                    handle.write(request["code"])
            except OSError as exc:
                return self.fail(ident, "ccexec: cannot write %s: %s\n" % (request["path"], exc.strerror))
            argv = [path if part == "{file}" else part for part in argv]
        marker = os.urandom(12).hex()
        env = dict(os.environ)
        env.update(request.get("env") or {})
        env[MARKER] = marker
        out_read, out_write = os.pipe()
        try:
            pid = os.posix_spawnp(
                argv[0],
                argv,
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out_write, 1),
                    (os.POSIX_SPAWN_DUP2, out_write, 2),
                ],
                setsid=True,
            )
        except OSError as exc:
            os.close(out_read)
            os.close(out_write)
            return self.fail(ident, "ccexec: cannot start %r: %s\n" % (argv[0], exc.strerror))
        os.close(out_write)
        block = Block(ident, pid, out_read, float(request["timeout"]), marker)
        self.blocks[ident] = block
        self.by_pid[pid] = block

    def handle(self, line):
        # type: (bytes) -> None
        request = json.loads(line)
        op = request.get("op")
        if op == "run":
            self.run(request)
        elif op == "cancel":
            block = self.blocks.get(request["id"])
            if block is not None:
                block.stop(timed_out=False)
        elif op == "delete":
            for name in request["paths"]:
                path = self.resolve(name)
                if path is not None:
                    try:
                        os.remove(path)
                    except OSError:
                        pass

    def read_requests(self):
        # type: () -> None
        data = os.read(0, CHUNK)
        if not data:
            self.shutdown(0)
        self.pending += data
        while b"\n" in self.pending:
            line, self.pending = self.pending.split(b"\n", 1)
            if line.strip():
                self.handle(line)

    def reap(self):
        # type: () -> None
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            block = self.by_pid.pop(pid, None)
            if block is not None:
                block.status = status

    def shutdown(self, code):
        # type: (int) -> None
        for block in self.blocks.values():
            signal_group(block.pid, signal.SIGKILL)
            kill_marked(block.marker)
        os._exit(code)

    def loop(self):
        # type: () -> None
        while True:
            now = time.monotonic()
            wait = 1.0
            for block in list(self.blocks.values()):
                if block.status is not None:
                    del self.blocks[block.ident]
                    self.settle(block.ident, block.finish())
                    continue
                if block.kill_at is not None and now >= block.kill_at:
                    signal_group(block.pid, signal.SIGKILL)
                    kill_marked(block.marker)
                elif block.kill_at is None and now >= block.deadline:
                    block.stop(timed_out=True)
                wait = min(wait, max(0.0, (block.kill_at or block.deadline) - now))
            readers = [0, self.wake] + [b.out_fd for b in self.blocks.values() if b.out_fd >= 0]
            ready, _, _ = select.select(readers, [], [], wait)
            for fd in ready:
                if fd == 0:
                    self.read_requests()
                elif fd == self.wake:
                    os.read(self.wake, 4096)
                else:
                    self.forward(fd)
            self.reap()

    def forward(self, fd):
        # type: (int) -> None
        for block in self.blocks.values():
            if block.out_fd == fd:
                chunk = os.read(fd, CHUNK)
                if chunk:
                    send(b"o %d %d\n" % (block.ident, len(chunk)) + chunk)
                else:
                    # EOF: the block's stdout is closed; its exit arrives through SIGCHLD.
                    os.close(fd)
                    block.out_fd = -1
                return


def main():
    # type: () -> None
    global json
    init = os.environ.get("CCEXEC_INIT_COMMAND")
    if init:
        import json
        import subprocess

        done = subprocess.run(
            ["/bin/sh", "-c", init],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
        output = done.stdout.decode("utf-8", "replace")[-65536:]
        info = {"python": sys.executable, "init_exit_code": done.returncode, "init_output": output}
        ready = json.dumps(info)
    else:
        ready = '{"python": "%s"}' % sys.executable.replace("\\", "\\\\").replace('"', '\\"')
    runner = Runner()
    send(b"r " + ready.encode() + b"\n")
    import json  # here, once the host already knows the runner is up

    runner.loop()


if __name__ == "__main__":
    main()
