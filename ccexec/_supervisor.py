"""The supervisor: the only thing that starts block processes, on this host or in a container.

It speaks ``_protocol`` over its stdin and stdout (it is shipped as text after that file and
run as ``python -I -S -c SOURCE``) and runs in the work dir. Guarantees, against a hostile
block running as the same uid:

- Its channel is out of reach: it makes itself non-dumpable (``PR_SET_DUMPABLE 0``), so a
  block cannot open ``/proc/<supervisor>/fd/*`` nor ptrace it; blocks get only /dev/null and
  their own output pipe. It ignores every signal a block could send it but SIGKILL and
  SIGSTOP (in a container it is PID 1, which the kernel protects from those too).
- Every block's tree is attributed: each block runs under a *shepherd*, a forked copy of the
  supervisor that is a child subreaper (``PR_SET_CHILD_SUBREAPER``). Whatever the block starts
  (``setsid``, empty environment, non-dumpable, double fork) stays a descendant of its
  shepherd, so killing a block is killing the shepherd's subtree until nothing is left
  (``kill_tree``); no environment marker, no pid counter is trusted.
- A shepherd that a block killed or stopped is noticed: its orphans come to the supervisor
  (a subreaper too), which kills every child it did not start itself; a stopped shepherd is
  continued. The block's end then says so.

Files are written with ``openat`` and ``O_NOFOLLOW`` on every component, so a symlink the
block planted cannot redirect the supervisor outside the work dir.
"""

import json
import os
import select
import sys
import time

MYPY = False
if MYPY:  # for type comments only: importing typing would slow every start
    import signal
    from typing import Callable, Dict, List, Optional, Set, Tuple  # noqa: F401
else:
    try:  # the C module: `signal` wraps it in enums, and importing enum costs ~4 ms a start
        import _signal as signal
    except ImportError:  # pragma: no cover - CPython always has it
        import signal
try:  # imported from ccexec on the host (tests, tools)
    from ._protocol import (
        DRAIN_LIMIT,
        TERM_GRACE,
        TO_SUPERVISOR,
        VERSION,
        BlockEnd,
        FrameParser,
        Hello,
        ProtocolError,
        RunRequest,
        frame,
        load_json,
    )
    from ._tree import PR_SET_CHILD_SUBREAPER, PR_SET_DUMPABLE, Block, Spare, kill_tree, oom_kills, prctl
    from ._workdir import delete_file, scrub, write_file
except ImportError:  # shipped as text after _protocol's: its names are defined already
    pass

CHUNK = 65536
# Signals a block may send us by mistake or malice; SIGKILL and SIGSTOP cannot be ignored.
_IGNORED = ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGTSTP", "SIGTTIN",
            "SIGTTOU", "SIGPIPE", "SIGXCPU", "SIGXFSZ", "SIGVTALRM", "SIGPROF")  # fmt: skip


def send(data):
    # type: (bytes) -> None
    view = memoryview(data)
    while view:
        view = view[os.write(1, view) :]


# -- blocks --------------------------------------------------------------------------------------


class Blocks:
    """The running blocks: start each under a shepherd, stop, kill, reap, drain and report them."""

    def __init__(self):
        # type: () -> None
        self.root = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        self.root_path = os.getcwd()
        self.blocks = {}  # type: Dict[int, Block]
        self.by_shepherd = {}  # type: Dict[int, Block]
        self.chained = {}  # type: Dict[int, RunRequest]
        self.outcomes = {}  # type: Dict[int, bool]
        self.parser = FrameParser(TO_SUPERVISOR)
        self.strays = False
        self.spare = None  # type: Optional[Spare]
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.wake = wake_read

    def fail(self, ident, message, exit_code):
        # type: (int, str, int) -> None
        send(frame(b"O", ident, message.encode("utf-8", "replace")))
        send(BlockEnd(ident, exit_code=exit_code, not_started=True).encode())
        self.settle(ident, False)

    # -- the loop

    def start(self, request):
        # type: (RunRequest) -> None
        """Write the block's file, fork its shepherd."""
        argv = [sys.executable if part == "{python}" else part for part in request.argv]
        if request.path is not None:
            try:
                write_file(self.root, request.path, request.code)
            except ValueError:
                return self.fail(request.ident, "Filename is not in the workspace: %r\n" % request.path, 1)
            except OSError as exc:
                return self.fail(request.ident, "ccexec: cannot write %s: %s\n" % (request.path, exc.strerror), 1)
            file_path = os.path.join(self.root_path, request.path)
            argv = [file_path if part == "{file}" else part for part in argv]
        env = dict(request.env) if request.clear_env else dict(os.environ, **request.env)
        command = json.dumps([argv, env]).encode("utf-8", "surrogatepass")
        spare = self.take_spare()
        oom_before = oom_kills()
        try:
            view = memoryview(command)
            while view:
                view = view[os.write(spare.command, view) :]
        except OSError:  # a block killed the spare: the fresh one below gets it (the dead one is reaped)
            spare = self.take_spare()
            os.write(spare.command, command)
        os.close(spare.command)
        block = Block(request, spare.pid, spare.out_read, spare.status_read, oom_before)
        self.blocks[block.ident] = block
        self.by_shepherd[spare.pid] = block
        self.fork_spare()  # now, on the other core, while the block starts: off the next block's path

    def take_spare(self):
        # type: () -> Spare
        """The shepherd forked ahead of need (a new one if there is none)."""
        spare = self.spare or Spare.fork()
        self.spare = None
        return spare

    def fork_spare(self):
        # type: () -> None
        """Fork the next block's shepherd now (forking costs ~0.5-1 ms: not on a block's path)."""
        self.spare = Spare.fork()

    # -- ending blocks

    def stop(self, block, timed_out):
        # type: (Block, bool) -> None
        """Timeout or cancel: SIGTERM the block's processes now, SIGKILL them TERM_GRACE later."""
        if block.kill_at is None:
            block.timed_out, block.cancelled = timed_out, not timed_out
            kill_tree({block.shepherd}, sig=signal.SIGTERM)
            block.kill_at = time.monotonic() + TERM_GRACE

    def finish(self, block):
        # type: (Block) -> None
        """The shepherd is gone: drain the output, report the end."""
        status = None
        try:
            data = os.read(block.status_fd, 64)
            status = int(data) if data.isdigit() else None
        except OSError:
            pass
        os.close(block.status_fd)
        shepherd = block.shepherd_status or 0
        note = ""
        if status is None and os.WIFEXITED(shepherd) and os.WEXITSTATUS(shepherd) == 127:
            status = 127 << 8  # the block could not start; the shepherd wrote why
        elif status is None:  # killed by us at the deadline, or by the block itself
            self.sweep_orphans()
            if not (block.timed_out or block.cancelled):
                note = "ccexec: the block killed its supervising process; everything it started was killed\n"
        self.drain(block)
        end = block.end(status, note)
        send(end.encode())
        self.settle(block.ident, end.exit_code == 0 and not block.timed_out and not block.cancelled)

    def drain(self, block):
        # type: (Block) -> None
        end = time.monotonic() + DRAIN_LIMIT
        while block.out_fd >= 0 and time.monotonic() < end:
            ready, _, _ = select.select([block.out_fd], [], [], max(0.0, end - time.monotonic()))
            if not ready or not self.forward(block):
                break
        if block.out_fd >= 0:
            os.close(block.out_fd)
            block.out_fd = -1

    def forward(self, block):
        # type: (Block) -> bool
        """Send one chunk of the block's output; at EOF close the pipe and return False."""
        chunk = os.read(block.out_fd, CHUNK)
        if chunk:
            send(frame(b"O", block.ident, chunk))
            return True
        os.close(block.out_fd)
        block.out_fd = -1
        return False

    def sweep_orphans(self):
        # type: () -> None
        """Kill every process we adopted: a child we did not fork is an orphan of a killed shepherd."""
        self.strays = False
        spare = () if self.spare is None else (self.spare.pid,)
        kill_tree({os.getpid()}, exclude=tuple(self.by_shepherd) + spare, reap=self.reap)

    def kill_block(self, block):
        # type: (Block) -> None
        """SIGKILL the block's tree, then its shepherd (whose end is collected by reap)."""
        kill_tree({block.shepherd}, reap=self.reap)
        try:
            os.kill(block.shepherd, signal.SIGKILL)
        except OSError:
            pass

    def reap(self):
        # type: () -> None
        """Collect ended shepherds and adopted orphans; continue stopped shepherds."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | os.WUNTRACED)
            except ChildProcessError:
                return
            if pid == 0:
                return
            block = self.by_shepherd.get(pid)
            spare = self.spare is not None and pid == self.spare.pid
            if os.WIFSTOPPED(status):
                if block is not None or spare:
                    os.kill(pid, signal.SIGCONT)  # a block stopped a shepherd of ours
                else:
                    self.strays = True
            elif spare and self.spare is not None:
                self.spare.discard()  # a block killed it; the next block forks another
                self.spare = None
            elif block is None:
                self.strays = True  # an orphan ended: there may be more of them
            else:
                block.shepherd_status = status
                del self.by_shepherd[pid]

    def shutdown(self):
        # type: () -> None
        """The host is gone: kill every block's tree and exit."""
        for block in list(self.blocks.values()):
            if block.ident in self.blocks and block.shepherd in self.by_shepherd:
                self.kill_block(block)
        if self.spare is not None:
            self.spare.discard()  # it reads EOF and exits; the sweep kills it if it does not
            self.spare = None
        self.sweep_orphans()
        os._exit(0)

    def settle(self, ident, ok):
        # type: (int, bool) -> None
        """Block ``ident`` ended (``ok``: it succeeded); see Supervisor."""
        raise NotImplementedError


class Supervisor(Blocks):
    """Read requests, chain blocks, stream output, report ends."""

    # -- requests

    def __init__(self):
        # type: () -> None
        Blocks.__init__(self)
        # As root in a container whose work dir is a mount from the host, blocks could leave
        # setuid-root files or device nodes there: strip them at the end of each call.
        self.scrubs = os.getpid() == 1 and os.geteuid() == 0 and os.stat(".").st_dev != os.stat("..").st_dev

    def handle(self, kind, ident, payload):
        # type: (bytes, int, bytes) -> None
        if kind == b"R":
            self.run(RunRequest.decode(ident, payload))
        elif kind == b"C":
            block = self.blocks.get(ident)
            if block is not None:
                self.stop(block, timed_out=False)
        elif kind == b"D":
            paths = load_json(payload)
            for path in paths if isinstance(paths, list) else ():
                try:
                    delete_file(self.root, str(path))
                except (OSError, ValueError):
                    continue  # gone already, or replaced by the block: nothing of ours to delete
            send(BlockEnd(ident, exit_code=0).encode())

    def run(self, request):
        # type: (RunRequest) -> None
        after = request.after
        if after is not None:
            ok = self.outcomes.pop(after, None)
            if ok is None:  # still running: start this one when it has ended
                self.chained[after] = request
                return
            if not ok:
                self.chained[after] = request
                self.settle(after, False)
                return
        self.start(request)

    def settle(self, ident, ok):
        # type: (int, bool) -> None
        """Block ``ident`` ended: start or skip the block chained after it, or remember how it went."""
        chained = self.chained.pop(ident, None)
        if chained is None:  # the end of a call's chain
            if self.scrubs:
                scrub(self.root)
            self.outcomes[ident] = ok
            if len(self.outcomes) > 1000:  # ids nobody chains to
                del self.outcomes[min(self.outcomes)]
        elif ok:
            self.start(chained)
        else:
            send(BlockEnd(chained.ident, skipped=True).encode())
            self.settle(chained.ident, False)

    def loop(self):
        # type: () -> None
        while True:
            wait = self.tick(time.monotonic())
            readers = [0, self.wake] + [b.out_fd for b in self.blocks.values() if b.out_fd >= 0]
            ready, _, _ = select.select(readers, [], [], wait)
            for fd in ready:
                if fd == 0:
                    self.read_requests()
                elif fd == self.wake:
                    os.read(self.wake, 4096)
                else:
                    for block in list(self.blocks.values()):
                        if block.out_fd == fd:
                            self.forward(block)
            self.reap()
            if self.strays:
                self.sweep_orphans()

    def tick(self, now):
        # type: (float) -> float
        """Finish ended blocks, act on deadlines; return how long the loop may sleep."""
        wait = 1.0
        for block in list(self.blocks.values()):
            if block.shepherd_status is not None:
                del self.blocks[block.ident]
                self.finish(block)
                wait = 0.0  # a chained block may have started: look again at once
            elif block.kill_at is not None and now >= block.kill_at:
                self.kill_block(block)
                block.kill_at = now + 1.0  # until its death is reaped
            elif block.kill_at is None and now >= block.deadline:
                self.stop(block, timed_out=True)
            if block.ident in self.blocks:
                wait = min(wait, max(0.0, (block.kill_at or block.deadline) - now))
        return wait

    def read_requests(self):
        # type: () -> None
        data = os.read(0, CHUNK)
        if not data:
            self.shutdown()
        try:
            for kind, ident, payload in self.parser.feed(data):
                self.handle(kind, ident, payload)
        except ProtocolError as exc:
            sys.stderr.write("ccexec supervisor: %s\n" % exc)
            self.shutdown()


def main():
    # type: () -> None
    guards = []
    if prctl(PR_SET_DUMPABLE, 0):
        guards.append("nondumpable")
    if os.getpid() == 1 or prctl(PR_SET_CHILD_SUBREAPER, 1):
        guards.append("subreaper")
    for name in _IGNORED:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    supervisor = Supervisor()
    send(Hello(VERSION, sys.executable, guards).encode())
    supervisor.loop()


if __name__ == "__main__":
    main()
