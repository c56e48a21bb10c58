"""The fork server: python blocks forked from an interpreter that has already started (``fork_server=True``).

Part of the supervisor (see ``_supervisor.py``): shipped into containers as text, Python 3.8+,
standard library only.

Each shepherd that is handed a fork request keeps one *zygote*: ``python -c ZYGOTE`` started
like a block (same interpreter, environment, work dir, default signal dispositions, a new
session), so it is what a block's interpreter is once started, and it has imported nothing
more (``ctypes``, which it needs, is taken out of ``sys.modules`` again). For each block the
zygote forks a child, which takes the block's output pipe as fds 1 and 2, starts a session,
gets a fresh ``__main__`` module, the block's ``sys.argv`` and ``sys.path[0]``, and runs the
file with ``PyRun_SimpleFileExFlags``: the C function ``python FILE`` itself runs, so
tracebacks, ``SyntaxError`` reports, ``sys.exit()``, ``KeyboardInterrupt`` (the child dies
of SIGINT), atexit handlers and the join of non-daemon threads are the interpreter's own.

Supervision is unchanged: the zygote is the shepherd's child, so every block is in the
shepherd's subtree (the shepherd is a subreaper: what the block leaves behind comes to it,
and a timeout kills the subtree, the zygote with it). The zygote never runs user code, makes
itself non-dumpable (a block, its child, can neither ptrace it nor open its fds) and gets a
SIGKILL when its shepherd dies; each child turns dumpable again, as a process is after
``execve``. A zygote that died is started again for the next block; one that cannot start
leaves the blocks to the normal spawn, with the reason in the first block's output.
"""

import json
import os
import select
import time

MYPY = False
if MYPY:  # for type comments only: importing typing would slow every start
    import signal
    from typing import Dict, List, Optional, Tuple  # noqa: F401
else:
    try:  # the C module: `signal` wraps it in enums, and importing enum costs ~4 ms a start
        import _signal as signal
    except ImportError:  # pragma: no cover - CPython always has it
        import signal
try:  # imported from ccexec on the host
    from ._protocol import KILL_WAIT_LIMIT
    from ._tree import SIGNALS, kill_tree, process_table, run_leader, which
except ImportError:  # shipped as text after _tree's: its names are defined already
    pass

#: Seconds a zygote may take to start before blocks run the normal way.
START_LIMIT = 10.0
#: The zygote's descriptors: 3 paths to run (from the shepherd), 4 replies, 5 the blocks' output pipe.
ZYGOTE_FDS = (3, 4, 5)

# The zygote's program, run by the block's interpreter (any Python 3.8+): the first statement
# keeps the fresh `__main__` namespace, which each child's new `__main__` starts from.
ZYGOTE = r"""_fresh = dict(globals())
import os, sys


def _zygote(fresh):
    if not getattr(sys.flags, "safe_path", False) and sys.path[:1] == [""]:
        del sys.path[0]  # `-c` put the work dir first: nothing is imported from there here
    if sys.version_info >= (3, 13):
        sys.modules.pop("linecache", None)  # imported for `-c`'s source (3.13+): `python FILE` has none
    known = set(sys.modules)
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        prctl, fopen = libc.prctl, libc.fopen
        fopen.restype, fopen.argtypes = ctypes.c_void_p, [ctypes.c_char_p, ctypes.c_char_p]
        run_file = ctypes.pythonapi.PyRun_SimpleFileExFlags
        run_file.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
        # The block's file is run from a frame that looks to `warnings` as "no frame" does
        # (module "sys", file "sys", line 1; 3.13: "<sys>", line 0): a warning with a stacklevel
        # one past the module is attributed and filtered as usual. Compiled here once: a compile
        # in each child costs it most of a millisecond (it writes to pages the child then copies).
        where, line = ("<sys>", 0) if sys.version_info >= (3, 13) else ("sys", 1)
        scope = {"__name__": "sys", "__builtins__": fresh["__builtins__"]}
        exec(compile("def run(f, *a): return f(*a)", where, "exec"), scope)
        run = scope["run"]
        run.__code__ = run.__code__.replace(co_name="<module>", co_firstlineno=line)
        get_errno = ctypes.get_errno
        import atexit
        import gc

        # What each block's end calls, taken now: importing them again in every child costs 0.2 ms.
        ending = (atexit._run_exitfuncs, gc.collect, gc.get_objects, sys.modules["builtins"])

        # The start's objects out of the collector's reach: a block's collections and its exit
        # then write to none of their headers, so its process copies half as many pages.
        gc.freeze()
    finally:  # a block's `import ctypes` must find what a fresh interpreter has: nothing
        for name in set(sys.modules) - known:
            del sys.modules[name]
    # The start's modules, which a block's end leaves as they are but for what the block added.
    start = set(sys.modules)
    sizes = [(vars(module), len(vars(module))) for module in sys.modules.values() if hasattr(module, "__dict__")]
    tools = (prctl, fopen, run_file, get_errno, run, ending, start, sizes)
    # PR_SET_DUMPABLE 0: a block, our child, cannot ptrace us nor open our fds. PR_SET_PDEATHSIG.
    if prctl(4, 0, 0, 0, 0) != 0 or prctl(1, 9, 0, 0, 0) != 0:
        raise SystemExit("ccexec fork server: prctl failed (errno %d)" % get_errno())
    sys.stdout.flush()
    sys.stderr.flush()
    os.write(4, b"ready\n")
    zygote = os.getpid()
    while True:
        # The go-ahead for the next child: a NUL byte, sent once nothing of the last block is left.
        # Anything before it is a block's path that its child, killed first, never read: dropped.
        pending = b""
        while not pending.endswith(b"\0"):
            chunk = os.read(3, 65536)
            if not chunk:
                os._exit(0)  # the shepherd is done with us
            pending += chunk
        pid = os.fork()
        if pid == 0:
            return _child(zygote, fresh, tools)
        os.write(4, b"%d\n" % pid)  # before the block comes: the shepherd knows whom to wait for
        # Its status is read without reaping it, told, and only then reaped: if the block kills
        # us first, it is still there (a zombie at worst) for the shepherd, its new parent, to reap.
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        if info.si_code == os.CLD_EXITED:
            status = (info.si_status & 0xFF) << 8
        else:
            status = info.si_status | (0x80 if info.si_code == os.CLD_DUMPED else 0)
        os.write(4, b"%d\n" % status)
        os.waitpid(pid, 0)


def _child(zygote, fresh, tools):
    prctl, fopen, run_file, get_errno, run, ending, start, sizes = tools
    os.close(4)
    # The interpreter's own sys.stdout and sys.stderr, made at its start for fds 1 and 2 (a
    # pipe then as now, never written since): the same objects a block's start would make.
    os.dup2(5, 1)
    os.dup2(5, 2)
    os.close(5)
    os.setsid()
    # Forked ahead of its block, which it then reads from the shepherd: until then it dies with
    # the zygote (PR_SET_PDEATHSIG) and stays non-dumpable, as the zygote is.
    prctl(1, 9, 0, 0, 0)
    if os.getppid() != zygote:
        os._exit(0)
    pending, size = b"", -1  # the path comes as its length, a newline, then its bytes
    while size < 0 or len(pending) < size:
        chunk = os.read(3, 65536)
        if not chunk:
            os._exit(0)  # the shepherd is done with us
        pending += chunk
        if size < 0 and b"\n" in pending:
            head, pending = pending.split(b"\n", 1)
            size = int(head)
    path = os.fsdecode(pending[:size])
    os.close(3)
    prctl(1, 0, 0, 0, 0)  # the block outlives a zygote it kills, as any process would
    prctl(4, 1, 0, 0, 0)  # dumpable again, as any process is after execve
    main = type(sys)("__main__")
    for key, value in fresh.items():
        main.__dict__[key] = dict(value) if key == "__annotations__" else value
    sys.modules["__main__"] = main
    sys.argv[:] = [path]
    if hasattr(sys, "orig_argv"):
        sys.orig_argv = [sys.orig_argv[0], path]
    if not getattr(sys.flags, "safe_path", False):
        sys.path.insert(0, os.path.dirname(os.path.realpath(path)))
    name = os.fsencode(path)
    handle = fopen(name, b"rb")
    if not handle:
        error = get_errno()  # as `python FILE` says it
        sys.stderr.write("%s: can't open file %r: [Errno %d] %s\n" % (sys.executable, path, error, os.strerror(error)))
        raise SystemExit(2)
    failed = run(run_file, handle, name, 1, None) != 0
    interrupted = failed and getattr(sys, "last_type", None) is KeyboardInterrupt
    _end(1 if failed and not interrupted else 0, interrupted, ending, start, sizes)


def _end(code, interrupted, ending, start, sizes):
    # What the interpreter's finalization does that a block can see, in its order: join the
    # threads, run atexit, flush; take the block's modules out, drop what it added to builtins,
    # collect, clear the namespaces cycles kept alive; free what it hung on the start's modules
    # (their __del__, weakref callbacks and unflushed files), sys's last and silently. The start's
    # own objects are not torn down: that writes to every page they are on, and the child would
    # copy them all (about 4 ms a block). gc.get_objects() leaves out the frozen start: what it
    # lists was made after the fork.
    threading = sys.modules.get("threading")
    if threading is not None and hasattr(threading, "_shutdown"):
        threading._shutdown()
    run_exitfuncs, collect, get_objects, builtins = ending
    exit, kill, getpid = os._exit, os.kill, os.getpid
    atexit = sys.modules.get("atexit")  # the block's, if anything imported it (before 3.10 it has its own list)
    try:
        (run_exitfuncs if atexit is None else atexit._run_exitfuncs)()
    except BaseException:  # noqa: S110 - before 3.10 it raises the last error again, printed already
        pass
    code = _flush(code)
    builtin = set(sys.builtin_module_names)  # gc and atexit among them: needed to the end
    mine = [name for name in sys.modules if name == "__main__" or (name not in start and name not in builtin)]
    alive = []
    for name in reversed(mine):
        module = sys.modules.pop(name, None)
        if isinstance(module, type(sys)) and type(module.__dict__) is dict:
            alive.append(module.__dict__)
        del module
    made = {id(item) for item in get_objects()}
    # Only the namespaces the block added to are looked through: a look at each would copy it.
    grown = {id(namespace): namespace for namespace, size in sizes if len(namespace) > size}
    if id(vars(builtins)) in grown:
        _drop(vars(builtins), made)
    collect()
    for namespace in alive:  # what cycles kept: cleared as the interpreter clears module dicts
        for names in ([k for k in namespace if k.startswith("_") and not k.startswith("__")], list(namespace)):
            for key in names:
                if key != "__builtins__" and isinstance(key, str):
                    namespace[key] = None
    del alive, namespace
    collect()
    for namespace in grown.values():
        if namespace is not vars(sys) and namespace is not vars(builtins):
            _drop(namespace, made)
    collect()
    code = _flush(code)
    if id(vars(sys)) in grown:
        sys.unraisablehook = lambda unraisable: None  # sys goes last, when errors have nowhere to go
        _drop(vars(sys), made)
    del made, grown
    collect()
    _flush(0)
    if interrupted:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_DFL)
        kill(getpid(), signal.SIGINT)
    exit(code)


def _drop(namespace, made):
    for key in [key for key, value in namespace.items() if id(value) in made]:
        if key not in ("stdout", "stderr", "unraisablehook"):
            del namespace[key]


def _flush(code):
    for stream in (getattr(sys, "stdout", None), getattr(sys, "stderr", None)):
        try:
            if stream is not None:
                stream.flush()
        except Exception:
            code = 120 if stream is getattr(sys, "stdout", None) else code
    return code


_zygote(_fresh)
"""


class ForkServer:
    """A shepherd's zygote: started on the first fork request, again when it died or the environment changed."""

    def __init__(self, out_write):
        # type: (int) -> None
        self.out_write = out_write
        self.pid = 0  # the zygote's, 0 when none runs
        self.key = ""  # the interpreter and environment it was started with
        self.command = self.reply = -1
        self.pending = b""
        self.blocks = 0  # forked by this zygote
        self.next_ready = False  # the last block is settled: the zygote may fork the next one
        self.preamble = b""  # what its start printed (a sitecustomize's output): each block's start prints it
        self.failed = {}  # type: Dict[str, str]  # keys it could not start with, and why

    def run(self, argv, env, limit):
        # type: (List[str], Dict[str, str], int) -> Tuple[int, bool, str]
        """Run ``[python, file]`` forked from the zygote (at most ``limit`` blocks per zygote).

        Returns the block's wait status, whether nothing of it is left, and a note for its output.
        """
        key = json.dumps([argv[0], env], sort_keys=True)
        if self.pid and (key != self.key or self.blocks >= limit):
            self.stop()
        note = ""
        for _ in range(2):  # a zygote found dead before the block reached it is started again, once
            if not self.pid and key not in self.failed:
                reason = self.start(argv[0], env, key)
                if reason:
                    self.failed[key] = reason
                    note = "ccexec: the fork server could not start (%s); python blocks run the normal way\n" % reason
            if not self.pid:
                break
            self.blocks += 1
            forked = self.fork(argv[1])
            if forked is not None:
                clean = self.settle()
                self.next_ready = bool(self.pid) and self.blocks < limit  # go() once the end is reported
                return forked[0], clean, note + forked[1]
        status, clean = run_leader(argv, env, self.out_write, self.settle)
        return status, clean, note

    def start(self, python, env, key):
        # type: (str, Dict[str, str], str) -> str
        """Start a zygote; return why it did not start ("" when it did)."""
        import fcntl

        pipes = os.pipe() + os.pipe() + os.pipe()
        # Above the zygote's fds, so that no dup2 of the spawn overwrites a source of a later one.
        command_read, command_write, reply_read, reply_write, errors_read, errors_write, out_write = (
            fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (*pipes, self.out_write)
        )
        for fd in pipes:
            os.close(fd)
        actions = [(os.POSIX_SPAWN_DUP2, errors_write, 1), (os.POSIX_SPAWN_DUP2, errors_write, 2)]
        actions += [(os.POSIX_SPAWN_DUP2, fd, to) for fd, to in zip((command_read, reply_write, out_write), ZYGOTE_FDS)]
        try:
            pid = os.posix_spawn(
                which(python, env), [python, "-c", ZYGOTE], env, file_actions=actions, setsid=True,
                setsigdef=SIGNALS, setsigmask=(),
            )  # fmt: skip
        except OSError as exc:
            pid, reason = 0, "%s: %s" % (python, exc.strerror or exc)
        else:
            reason = ""
        for fd in (command_read, reply_write, errors_write, out_write):
            os.close(fd)
        self.pid, self.key, self.command, self.reply = pid, key, command_write, reply_read
        self.pending, self.blocks = b"", 0
        if pid:
            ready = select.select([reply_read], [], [], START_LIMIT)[0] and self.line() == "ready"
            errors = _read_available(errors_read)  # the zygote's start wrote that much at most
            if ready:
                self.preamble = errors
            else:
                reason = (errors.decode("utf-8", "replace").strip().splitlines() or ["no output"])[-1][-500:]
                if not errors:
                    reason = "it did not start within %g s" % START_LIMIT
        os.close(errors_read)
        if reason:
            self.stop()
        else:
            self.go()
        return reason

    def reported(self):
        # type: () -> None
        """The shepherd reported the block's end: now let the zygote fork the next block's process
        (off the reported block's path, which it would otherwise slow on a busy machine)."""
        if self.next_ready:
            self.next_ready = False
            self.go()

    def go(self):
        # type: () -> None
        """Let the zygote fork the next block's process (nothing of the last block is left)."""
        try:
            os.write(self.command, b"\0")
        except OSError:
            pass  # it died: the next fork() finds out

    def fork(self, path):
        # type: (str) -> Optional[Tuple[int, str]]
        """Have the zygote's waiting child run ``path``; return its wait status and a note.

        None if the zygote died before the block reached its child (nothing of the block ran).
        """
        line = self.line()  # the pid of the child the zygote forked for the next block
        if line is None:
            self.stop()
            return None
        leader = int(line)
        if self.preamble:
            _write_all(self.out_write, self.preamble)
        data = os.fsencode(path)
        try:
            _write_all(self.command, b"%d\n" % len(data) + data)
        except OSError:
            pass  # it died: the status line is missing too
        line = self.line()
        if line is not None:
            return int(line), ""
        # The zygote died first (a timeout killed it, or the block did): once it is reaped, the
        # block is our child (we are a subreaper), and its status ours to take.
        self.stop()
        try:
            return os.waitpid(leader, 0)[1], ""
        except ChildProcessError:  # cannot happen: the zygote reaps a block only once it told us
            note = "ccexec: the fork server died with block process %d; its exit status is lost\n" % leader
            return signal.SIGKILL, note

    def line(self):
        # type: () -> Optional[str]
        """The zygote's next reply line, or None when it is gone."""
        while b"\n" not in self.pending:
            if not select.select([self.reply], [], [], 0.05)[0]:
                self.wake()
                continue
            try:
                chunk = os.read(self.reply, 4096)
            except OSError:
                return None
            if not chunk:
                return None
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        return line.decode("ascii", "replace")

    def wake(self):
        # type: () -> None
        """Continue the zygote if a block stopped it (SIGSTOP to its parent): it has a status to send us."""
        try:
            with open("/proc/%d/stat" % self.pid, "rb") as handle:
                state = handle.read().rsplit(b")", 1)[1].split()[0]
            if state in (b"T", b"t"):
                os.kill(self.pid, signal.SIGCONT)
        except (OSError, IndexError):
            pass  # gone: its pipe says so

    def stop(self):
        # type: () -> None
        """Kill the zygote (if any) and reap it; close its pipes."""
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except OSError:
                pass  # reaped already (settle())
        self.forget()

    def forget(self):
        # type: () -> None
        for fd in (self.command, self.reply):
            if fd >= 0:
                os.close(fd)
        self.pid, self.command, self.reply = 0, -1, -1

    def settle(self):
        # type: () -> bool
        """A block ended: reap, kill what it left (never the zygote); return whether nothing of it is left."""
        self.reap()
        if not self.others():
            return True  # the common case: one read of /proc, no scan
        kill_tree({os.getpid()}, exclude=(self.pid,), reap=self.reap)
        end = time.monotonic() + KILL_WAIT_LIMIT
        while self.others():
            if time.monotonic() > end:
                return False
            time.sleep(0.001)
            self.reap()
        return True

    def reap(self):
        # type: () -> None
        """Reap our exited children (a zygote among them is forgotten)."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if pid == self.pid:
                self.forget()

    def others(self):
        # type: () -> List[int]
        """Our children other than the zygote (zombies included)."""
        me = os.getpid()
        try:
            with open("/proc/%d/task/%d/children" % (me, me), "rb") as handle:
                children = [int(pid) for pid in handle.read().split()]
        except OSError:  # a kernel without CONFIG_PROC_CHILDREN: scan
            table = process_table()
            children = [pid for pid, (ppid, _) in table.items() if ppid == me]
        return [pid for pid in children if pid != self.pid]


def _read_available(fd):
    # type: (int) -> bytes
    """What can be read from ``fd`` now, up to 64 KiB."""
    data = b""
    while len(data) < 65536 and select.select([fd], [], [], 0)[0]:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


def _write_all(fd, data):
    # type: (int, bytes) -> None
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
