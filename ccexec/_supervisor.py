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
  (``kill_tree``); no environment marker, no pid counter is trusted. A shepherd takes the
  next block only once everything of the last one is dead and reaped, so no fork is on a
  block's path; one that cannot prove that exits instead.
- A shepherd that a block killed or stopped is noticed: its orphans come to the supervisor
  (a subreaper too), which kills every child it did not start itself; a stopped shepherd is
  continued. The block's end then says so.

Files are written with ``openat`` and ``O_NOFOLLOW`` on every component, so a symlink the
block planted cannot redirect the supervisor outside the work dir. As root in a container
with a mounted work dir, each call ends with a scrub of setuid/setgid bits and device nodes
there (``_scrubber.py``: what inotify says changed, or all of it).
"""

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
    from ._forkserver import ForkServer
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
    )
    from ._scrubber import Scrubber
    from ._tree import (
        BLOCK_LIMITS,
        PR_SET_CHILD_SUBREAPER,
        PR_SET_DUMPABLE,
        Block,
        Shepherd,
        kill_tree,
        oom_kills,
        prctl,
    )
    from ._workdir import delete_file, write_file
except ImportError:  # shipped as text after _protocol's: its names are defined already
    pass

CHUNK = 65536
#: Idle shepherds kept at most when blocks are forked (each holds a started interpreter, about
#: 10 MB): as many as blocks ran at once, so that concurrent calls do not start servers anew.
IDLE_FORKING = 8
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
    """The running blocks: start each under a shepherd, stop, kill, drain and report them."""

    def __init__(self):
        # type: () -> None
        self.root = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        self.root_path = os.getcwd()
        self.blocks = {}  # type: Dict[int, Block]
        self.shepherds = {}  # type: Dict[int, Shepherd]  # every live one, busy or idle, by pid
        self.idle = []  # type: List[Shepherd]
        self.strays = False
        self.chained = {}  # type: Dict[int, RunRequest]  # by the id of the block it waits for
        self.outcomes = {}  # type: Dict[int, bool]  # ended blocks nothing was chained to yet
        self.notes = set()  # type: Set[str]  # shepherds' notes said already (each is said once)
        self.keep_idle = 2  # idle shepherds kept for the next calls
        # As root in a container whose work dir is a mount from the host, blocks could leave
        # setuid-root files or device nodes there: strip them at the end of each call.
        scrubs = os.getpid() == 1 and os.geteuid() == 0 and os.stat(".").st_dev != os.stat("..").st_dev
        self.scrubber = Scrubber(self.root) if scrubs else None  # type: Optional[Scrubber]
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

    def start(self, request):
        # type: (RunRequest) -> None
        """Write the block's file, hand the block to an idle shepherd (a new one if none is idle)."""
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
        oom_before = oom_kills()
        # Only the plain `python FILE` is forked: another command line is the user's to run.
        fork = request.fork_server if request.argv == ["{python}", "{file}"] and request.path is not None else 0
        if fork:  # each shepherd keeps a started interpreter: keep as many as ran at once (up to a bound)
            self.keep_idle = max(self.keep_idle, min(IDLE_FORKING, len(self.blocks) + 1))
        shepherd = self.take_shepherd()
        while not shepherd.send(argv, env, fork):  # a block killed it while it was idle
            self.drop(shepherd)
            shepherd = self.take_shepherd()
        block = self.blocks[request.ident] = Block(request, shepherd, oom_before)
        block.cleanup = request.path if request.cleanup else None

    def take_shepherd(self):
        # type: () -> Shepherd
        if self.idle:
            return self.idle.pop()
        shepherd = Shepherd.fork(ForkServer)
        self.shepherds[shepherd.pid] = shepherd
        return shepherd

    def drop(self, shepherd):
        # type: (Shepherd) -> None
        """Kill a shepherd that cannot be trusted any more (its death is reaped later)."""
        shepherd.discard()
        if shepherd in self.idle:
            self.idle.remove(shepherd)

    # -- ending blocks

    def stop(self, block, timed_out):
        # type: (Block, bool) -> None
        """Timeout or cancel: SIGTERM the block's processes now, SIGKILL them TERM_GRACE later."""
        if block.kill_at is None:
            block.timed_out, block.cancelled = timed_out, not timed_out
            kill_tree({block.shepherd.pid}, sig=signal.SIGTERM)
            block.kill_at = time.monotonic() + TERM_GRACE

    def kill_block(self, block):
        # type: (Block) -> None
        """SIGKILL the block's tree; its shepherd, continued if a block stopped it, then reports."""
        kill_tree({block.shepherd.pid}, reap=self.reap)
        try:
            os.kill(block.shepherd.pid, signal.SIGCONT)
        except OSError:
            pass

    def finish(self, block):
        # type: (Block) -> None
        """The shepherd reported (or died): forward the rest of the output, report the end."""
        shepherd = block.shepherd
        status = shepherd.read_status()
        note = ""
        if status is None:  # the shepherd died: a block killed it, or we did after it hung
            self.drop(shepherd)
            self.sweep_orphans()
            if not (block.timed_out or block.cancelled):
                note = "ccexec: the block killed its supervising process; everything it started was killed\n"
        elif shepherd.note and shepherd.note not in self.notes:
            note = shepherd.note
            self.notes.add(note)
        self.drain(block, shepherd.out_read)
        end = block.end(status, note)
        if shepherd.alive:
            self.idle.append(shepherd)
            while len(self.idle) > self.keep_idle:  # enough for a few concurrent calls; the rest exit at EOF
                self.idle.pop(0).discard()
        if block.cleanup is not None:
            try:
                delete_file(self.root, block.cleanup)
            except (OSError, ValueError):
                pass  # gone already, or replaced by the block: nothing of ours to delete
        ok = end.exit_code == 0 and not block.timed_out and not block.cancelled
        if self.scrubber is not None and (not ok or block.ident not in self.chained):  # the call ends: scrub first
            self.scrubber.scrub()
        send(end.encode())
        self.settle(block.ident, ok)

    def drain(self, block, fd):
        # type: (Block, int) -> None
        """Forward what is left in the output pipe: all of it when the writers are all dead."""
        end = time.monotonic() + DRAIN_LIMIT
        while time.monotonic() < end and self.forward(block.ident, fd):
            pass

    def forward(self, ident, fd):
        # type: (int, int) -> bool
        """Send one chunk of output; return False when there is none now (or the pipe is closed)."""
        try:
            chunk = os.read(fd, CHUNK)
        except (BlockingIOError, OSError):
            return False
        if chunk:
            send(frame(b"O", ident, chunk))
        return bool(chunk)

    def sweep_orphans(self):
        # type: () -> None
        """Kill every process we adopted: a child that is no live shepherd is an orphan of a killed one."""
        self.strays = False
        live = tuple(pid for pid, shepherd in self.shepherds.items() if shepherd.alive)
        kill_tree({os.getpid()}, exclude=live, reap=self.reap)

    def reap(self):
        # type: () -> None
        """Collect dead shepherds and adopted orphans; continue stopped shepherds."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | os.WUNTRACED)
            except ChildProcessError:
                return
            if pid == 0:
                return
            shepherd = self.shepherds.get(pid)
            if os.WIFSTOPPED(status) and shepherd is not None:
                os.kill(pid, signal.SIGCONT)  # a block stopped a shepherd of ours
            elif shepherd is not None:
                del self.shepherds[pid]
                if shepherd in self.idle:
                    self.drop(shepherd)
                # a busy one: its status pipe reads EOF, and finish() handles the rest
            else:
                self.strays = True  # an orphan: there may be more of them

    def shutdown(self):
        # type: () -> None
        """The host is gone: kill every block's tree and every shepherd, and exit."""
        for block in list(self.blocks.values()):
            kill_tree({block.shepherd.pid}, limit=0.5)
        for shepherd in list(self.shepherds.values()):
            shepherd.discard()
        self.shepherds.clear()
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
        self.parser = FrameParser(TO_SUPERVISOR)

    def handle(self, kind, ident, payload):
        # type: (bytes, int, bytes) -> None
        if kind == b"R":
            self.run(RunRequest.decode(ident, payload))
        elif kind == b"C":
            block = self.blocks.get(ident)
            if block is not None:
                self.stop(block, timed_out=False)

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
        if chained is None:
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
            outputs = {b.shepherd.out_read: b for b in self.blocks.values()}
            statuses = {b.shepherd.status_read: b for b in self.blocks.values()}
            ready, _, _ = select.select([0, self.wake, *outputs, *statuses], [], [], wait)
            for fd in ready:
                if fd == 0:
                    self.read_requests()
                elif fd == self.wake:
                    os.read(self.wake, 4096)
                elif fd in outputs:
                    self.forward(outputs[fd].ident, fd)
            self.reap()
            if self.strays:
                self.sweep_orphans()
            for fd in ready:
                block = statuses.get(fd)
                if block is not None and self.blocks.pop(block.ident, None) is not None:
                    self.finish(block)

    def tick(self, now):
        # type: (float) -> float
        """Act on deadlines; return how long the loop may sleep."""
        wait = 1.0
        for block in list(self.blocks.values()):
            if block.kill_at is not None and now >= block.kill_at:
                block.kill_rounds += 1
                if block.kill_rounds > 3:
                    self.drop(block.shepherd)  # it does not report: hung, or stopped again and again
                else:
                    self.kill_block(block)
                block.kill_at = now + 1.0  # look again until it reports
            elif block.kill_at is None and now >= block.deadline:
                self.stop(block, timed_out=True)
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


def take_channel(path):
    # type: (str) -> None
    """Read the token from stdin, present it on the socket at ``path`` and make that socket fds 0 and 1.

    On any failure the protocol stays on stdin and stdout (see ``backends/channel.py``).
    """
    token = b""
    while not token.endswith(b"\n"):
        chunk = os.read(0, 64)
        if not chunk:
            os._exit(0)  # the host is gone already
        token += chunk
    try:
        import _socket  # the C module: `socket` imports enum

        connection = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            connection.connect(path)
            connection.sendall(token)
        except OSError:
            connection.close()
            return
        fd = connection.detach()
    except (ImportError, OSError):
        return
    os.dup2(fd, 0)
    os.dup2(fd, 1)
    os.close(fd)


def main():
    # type: () -> None
    for arg in sys.argv[1:]:  # python -c SOURCE --rlimit=NUMBER:SOFT:HARD... --channel=PATH
        if arg.startswith("--rlimit="):
            number, soft, hard = arg[len("--rlimit=") :].split(":")
            BLOCK_LIMITS.append((int(number), int(soft), int(hard)))
        elif arg.startswith("--channel="):
            take_channel(arg[len("--channel=") :])
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
