"""Process trees of blocks: the shepherd each block runs under, and killing a tree to the last process.

Part of the supervisor (see ``_supervisor.py``): shipped into containers as text, Python 3.8+,
standard library only.
"""

import json
import os
import time

MYPY = False
if MYPY:  # for type comments only: importing typing would slow every start
    import signal
    from typing import Callable, Dict, List, Optional, Set, Tuple  # noqa: F401

    from ._forkserver import ForkServer  # noqa: F401
else:
    try:  # the C module: `signal` wraps it in enums, and importing enum costs ~4 ms a start
        import _signal as signal
    except ImportError:  # pragma: no cover - CPython always has it
        import signal
try:  # imported from ccexec on the host
    from ._listing import report
    from ._protocol import KILL_WAIT_LIMIT, LISTING, BlockEnd, RunRequest  # noqa: F401 - RunRequest in type comments
except ImportError:  # shipped as text after _protocol's and _listing's: their names are defined already
    pass

PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
PR_CAPBSET_DROP = 24
CAP_SYS_PTRACE = 19
#: Resource limits ``(RLIMIT_* number, soft, hard)`` each shepherd sets on itself before its first
#: block, so blocks inherit them and cannot raise the hard ones; given on the supervisor's command
#: line (the sandbox does), else none.
BLOCK_LIMITS = []  # type: List[Tuple[int, int, int]]
#: Every signal but SIGKILL and SIGSTOP: reset to their defaults in each block.
SIGNALS = tuple(n for n in signal.valid_signals() if n not in (signal.SIGKILL, signal.SIGSTOP))


def _load_prctl():
    # type: () -> Optional[object]
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):  # no ctypes (or no libc prctl): guards are reported missing
        return None


_prctl = _load_prctl()


def prctl(option, value):
    # type: (int, int) -> bool
    """Call prctl(2); return whether it worked."""
    return _prctl is not None and _prctl(option, value, 0, 0, 0) == 0  # type: ignore[operator]


def process_table():
    # type: () -> Dict[int, Tuple[int, str]]
    """Map every visible pid to (parent pid, state letter), from /proc."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/" + name + "/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        table[int(name)] = (int(fields[1]), fields[0].decode())
    return table


def descendants(table, roots, exclude=()):
    # type: (Dict[int, Tuple[int, str]], Set[int], Tuple[int, ...]) -> List[int]
    """Every live (not zombie) descendant of ``roots`` in ``table``, roots and ``exclude``'s subtrees left out."""
    children = {}  # type: Dict[int, List[int]]
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child in exclude:
                continue
            todo.append(child)
            if table[child][1] != "Z":
                found.append(child)
    return found


def kill_tree(roots, sig=None, limit=None, exclude=(), reap=None):
    # type: (Set[int], Optional[int], Optional[float], Tuple[int, ...], Optional[Callable[[], None]]) -> bool
    """Send ``sig`` (SIGKILL) to every descendant of ``roots`` until none is left alive.

    A killed process's children are re-parented to the nearest subreaper, which is a root
    here, so they are found by the next scan; killed processes cannot fork any more. Our own
    zombie children are reaped on the way (by ``reap``). Returns False if some survived
    ``limit`` seconds. With another signal, sends it once to the descendants alive now.
    """
    end = time.monotonic() + (KILL_WAIT_LIMIT if limit is None else limit)
    kill = signal.SIGKILL if sig is None else sig
    while True:
        pids = descendants(process_table(), roots, exclude)
        for pid in pids:
            try:
                os.kill(pid, kill)
            except OSError:
                continue
        if sig is not None or not pids:
            return True
        if reap is None:
            reap_all(0.0)
        else:
            reap()
        if time.monotonic() > end:
            return False
        time.sleep(0.001)


def reap_all(limit):
    # type: (float) -> bool
    """Reap our exited children for up to ``limit`` seconds; return whether none is left."""
    end = time.monotonic() + limit
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            if time.monotonic() >= end:
                return False
            time.sleep(0.001)


def which(program, env):
    # type: (str, Dict[str, str]) -> str
    """Resolve a program name with the block's PATH (posix_spawnp would use ours)."""
    if "/" in program:
        return program
    for directory in env.get("PATH", os.defpath).split(os.pathsep):
        candidate = os.path.join(directory or ".", program)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    raise FileNotFoundError(2, "No such file or directory")


def shepherd(command_read, out_write, status_write, fork_server=None):
    # type: (int, int, int, Optional[Callable[[int], ForkServer]]) -> None
    """In a forked child: become a subreaper, then run blocks one after another until EOF.

    Each block comes on ``command_read`` as ``LENGTH\n`` + JSON ``[argv, env, fork]``; its wait
    status goes back on ``status_write`` as ``STATUS\n`` (then a note, if any) once the block
    and everything it started are dead, so the shepherd can take the next one. If something
    survived, the shepherd exits after reporting (it is not reused). ``fork`` > 0: a python
    block, forked from ``fork_server``'s zygote (see ``_forkserver.py``).
    """
    signal.set_wakeup_fd(-1)
    for number in SIGNALS:
        if number != signal.SIGCHLD:
            signal.signal(number, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # A root block keeps its powers, but not the one that reads a non-dumpable process's fds and
    # memory: the supervisor's channel stays out of its reach (a no-op for other users).
    prctl(PR_CAPBSET_DROP, CAP_SYS_PTRACE)
    limit_blocks()
    keep = (command_read, out_write, status_write)
    for name in os.listdir("/proc/self/fd"):  # the protocol pipes and other blocks' pipes
        if int(name) > 2 and int(name) not in keep:
            try:
                os.close(int(name))
            except OSError:
                pass
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    pending = b""
    server = None  # type: Optional[ForkServer]
    while True:
        command, pending = read_command(command_read, pending)
        argv, env, fork = json.loads(command)
        note = ""
        if fork and fork_server is not None:
            server = server or fork_server(out_write)
            status, clean, note = server.run(argv, env, fork)
        elif argv[0] == LISTING:  # a zygote of ours lives on: it is no leftover
            close = (command_read, status_write)
            status, clean = run_listing(argv[1:], out_write, close, None if server is None else server.settle)
        else:
            status, clean = run_leader(argv, env, out_write, None if server is None else server.settle)
        os.write(status_write, b"%d\n" % status + note.encode("utf-8", "replace")[:2048])
        if not clean:
            os._exit(0)
        if server is not None:
            server.reported()


def limit_blocks():
    # type: () -> None
    """Set BLOCK_LIMITS on this process (never above the hard limits it has)."""
    if BLOCK_LIMITS:
        import resource

        for number, soft, hard in BLOCK_LIMITS:
            now = resource.getrlimit(number)[1]
            if now == resource.RLIM_INFINITY:
                resource.setrlimit(number, (soft, hard))
            else:
                resource.setrlimit(number, (min(soft, now), min(hard, now)))


def read_command(fd, pending):
    # type: (int, bytes) -> Tuple[bytes, bytes]
    """The next ``LENGTH\n`` + payload on ``fd`` (after ``pending``), and what came after it; exit at EOF."""
    while b"\n" not in pending:
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            os._exit(0)  # the supervisor is done with us
        pending += chunk
    header, pending = pending.split(b"\n", 1)
    while len(pending) < int(header):
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            os._exit(0)
        pending += chunk
    return pending[: int(header)], pending[int(header) :]


def run_leader(argv, env, out_write, settle=None):
    # type: (List[str], Dict[str, str], int, Optional[Callable[[], bool]]) -> Tuple[int, bool]
    """Spawn the block in a new session with default signal dispositions; wait for it, kill what it left.

    Returns its wait status (127 when it could not start: the reason is written to its
    output) and whether nothing of it survived (``settle()`` says, when given).
    """
    try:
        leader = os.posix_spawn(
            which(argv[0], env),
            argv,
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, out_write, 1), (os.POSIX_SPAWN_DUP2, out_write, 2)],
            setsid=True,
            setsigdef=SIGNALS,
            setsigmask=(),
        )
    except OSError as exc:
        message = "ccexec: cannot start %r: %s\n" % (argv[0], exc.strerror or exc)
        os.write(out_write, message.encode("utf-8", "replace"))
        return 127 << 8, True
    return ended(leader, settle)


def run_listing(args, out_write, close, settle=None):
    # type: (List[str], int, Tuple[int, ...], Optional[Callable[[], bool]]) -> Tuple[int, bool]
    """Write ``_listing.report(args)`` to ``out_write`` from a forked process (no interpreter to
    start: it is this one); return as ``run_leader`` does."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        code = 1
        try:
            os.setsid()
            for fd in close:
                os.close(fd)
            os.dup2(out_write, 1)
            os.dup2(out_write, 2)
            report(args)
            code = 0
        except BaseException as exc:  # noqa: BLE001 - said on its output, as a program would
            os.write(2, ("ccexec: listing failed: %r\n" % (exc,)).encode("utf-8", "replace"))
        finally:
            os._exit(code)
    return ended(pid, settle)


def ended(leader, settle):
    # type: (int, Optional[Callable[[], bool]]) -> Tuple[int, bool]
    """Wait for the block's first process; return its wait status and whether nothing of it survived."""
    _, status = os.waitpid(leader, 0)
    if settle is not None:
        return status, settle()
    if reap_all(0.0):
        return status, True  # nothing left: the common case costs no /proc scan
    # It left something behind: kill it all, then reap the zombies (some come to us only as
    # their parents are reaped), so that the next block starts with no child of ours around.
    return status, kill_tree({os.getpid()}) and reap_all(KILL_WAIT_LIMIT)


class Shepherd:
    """The supervisor's handle on a shepherd: its pid, the pipe blocks go down, the pipes that come back."""

    def __init__(self, pid, command, out_read, status_read):
        # type: (int, int, int, int) -> None
        self.pid = pid
        self.command = command
        self.out_read = out_read
        self.status_read = status_read
        self.alive = True
        self.note = ""  # what it added to its last status

    @classmethod
    def fork(cls, fork_server=None):
        # type: (Optional[Callable[[int], ForkServer]]) -> Shepherd
        """Fork a shepherd that waits for blocks (forks python blocks from ``fork_server``'s zygotes when asked)."""
        command_read, command_write = os.pipe()
        out_read, out_write = os.pipe()
        status_read, status_write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            try:
                shepherd(command_read, out_write, status_write, fork_server)
            finally:
                os._exit(126)
        for fd in (command_read, out_write, status_write):
            os.close(fd)
        os.set_blocking(out_read, False)  # read until EAGAIN once the status says all is dead
        return cls(pid, command_write, out_read, status_read)

    def send(self, argv, env, fork=0):
        # type: (List[str], Dict[str, str], int) -> bool
        """Hand it a block (``fork``: see shepherd()); return False if it is gone."""
        command = json.dumps([argv, env, fork]).encode("utf-8", "surrogatepass")
        data = b"%d\n" % len(command) + command
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.command, view) :]
        except OSError:
            return False
        return True

    def read_status(self):
        # type: () -> Optional[int]
        """The status line it wrote, or None if it died first (EOF or garbage); keeps its note."""
        try:
            data = os.read(self.status_read, 4096)  # one write of at most PIPE_BUF bytes
        except OSError:
            return None
        line, newline, note = data.partition(b"\n")
        self.note = str(note, "utf-8", "replace")
        return int(line) if newline and line.isdigit() else None

    def discard(self):
        # type: () -> None
        """Close its pipes and kill it (its death is reaped by the supervisor)."""
        self.alive = False
        for fd in (self.command, self.out_read, self.status_read):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            os.kill(self.pid, signal.SIGKILL)
        except OSError:
            pass


class Block:
    """A running block: its shepherd, deadline and how it is ending."""

    def __init__(self, request, shepherd, oom_before):
        # type: (RunRequest, Shepherd, int) -> None
        self.ident = request.ident
        self.shepherd = shepherd
        self.start = time.monotonic()
        self.deadline = self.start + request.timeout
        self.oom_before = oom_before
        self.timed_out = False
        self.cancelled = False
        self.kill_at = None  # type: Optional[float]
        self.kill_rounds = 0
        self.cleanup = None  # type: Optional[str]  # the generated file to delete at the end

    def end(self, status, note):
        # type: (Optional[int], str) -> BlockEnd
        """The block's end frame, from the leader's wait status (None: unknown, the shepherd was killed)."""
        exit_code = sig = None
        if status is not None and os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
        elif status is not None:
            exit_code = os.WEXITSTATUS(status)
        elif self.timed_out or self.cancelled:
            sig = signal.SIGKILL
        else:
            exit_code = 1
        oom = sig == signal.SIGKILL and self.oom_before >= 0 and oom_kills() > self.oom_before
        duration = time.monotonic() - self.start
        return BlockEnd(self.ident, exit_code, sig, self.timed_out, self.cancelled, duration, oom=oom, note=note)


_OOM_FILES = ("/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control")
#: The cgroup file that counts kills for memory (v2 or v1), found once: it is read twice a block.
_OOM_FILE = next((path for path in _OOM_FILES if os.path.exists(path)), None)


def oom_kills():
    # type: () -> int
    """The cgroup's count of processes killed for memory, or -1 when unknown."""
    if _OOM_FILE is None:
        return -1
    try:
        with open(_OOM_FILE, "rb") as handle:
            for line in handle:
                if line.startswith(b"oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return -1
