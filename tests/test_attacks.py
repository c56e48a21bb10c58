"""The attacker suite: hostile blocks written by someone who has read ccexec's source.

Each test runs one attack through the public API and checks what every call must meet: it
ends within its deadline (the timeout plus GRACE, timed around the call) with the truth (the
exit code and output the block really produced, never a forged PASS or exit 0) or with a
CcexecError; nothing the block started is left running; host memory stays bounded.

The attackers' processes carry a unique marker in their argv. A container's processes are
host processes too, so one scan of the host's /proc/*/cmdline finds survivors everywhere.
Attacks that would hit the machine itself (PID 1, ``kill -9 -1``) act only where the block's
pid namespace is not the host's; each block checks that itself. On the host, a block attacks
only its ancestors strictly below the process that owns the executor (the test, or the
driver in tests/helpers/attack_driver.py), never that process nor anything above it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator, Union

import pytest

import ccexec
from ccexec import CodeBlock, CommandLineCodeResult

from .conftest import HELPERS, REPO, TEST_PREFIX, Engine, Tester, pid_alive, wait_gone

#: The executor's timeout in most attacks, in seconds.
TIMEOUT = 3.0
#: What a call may take beyond its timeout before it counts as hung.
GRACE = 10.0
#: Seconds the kernel gets to reap what a block left, once the call returned.
REAP = 2.0
#: The most memory the host process may use while a block floods it with output.
PEAK_LIMIT_KIB = 200 * 1024
MIB = 1 << 20
#: The host's pid namespace: a block in any other one is in a container.
HOST_PIDNS = os.readlink("/proc/self/ns/pid")
DRIVER = HELPERS / "attack_driver.py"
#: Set by the driver (helpers/attack_driver.py) to its own pid: the executor's owner.
HOST_PID_VARIABLE = "CCEXEC_ATTACK_HOST_PID"

#: The attacks session's second pass sets it: every python block forked from a fork server (issue 16);
#: exec mode has none, so its cases are deselected there (``-k "not exec"``).
FORK_SERVER = os.environ.get("CCEXEC_ATTACK_FORK_SERVER") == "1"
MODES = pytest.mark.parametrize("mode", ["runner", "exec"])
HARDENED = pytest.mark.parametrize("hardened", [False, True], ids=["default", "hardened"])
Executor = Union[ccexec.LocalCommandLineCodeExecutor, ccexec.DockerCommandLineCodeExecutor]


def deadline(timeout: float) -> float:
    """The longest a call with this timeout may take."""
    return timeout + GRACE


# -- the attackers' code --------------------------------------------------------------------------


def fill(template: str, **values: object) -> str:
    """The template with each ``__NAME__`` replaced by ``repr(value)``: code that cannot be mis-quoted."""
    for name, value in values.items():
        template = template.replace(f"__{name.upper()}__", repr(value))
    assert "__" not in re.sub(r"__(name|main|file)__", "", template), "a placeholder was not filled"
    return template


def forbidden_pids() -> list[int]:
    """This process and its ancestors: blocks must never touch them."""
    chain, pid = [], os.getpid()
    while pid > 0:
        chain.append(pid)
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            pid = int(handle.read().rsplit(")", 1)[1].split()[1])
    return chain


# First lines of every Python block: the test session's PYTHONDEVMODE and
# PYTHONWARNDEFAULTENCODING reach local blocks, and their warnings would be output.
QUIET_WARNINGS = """
import warnings
warnings.simplefilter("ignore")
"""

# Where the block is, and whom it may attack: PID 1 and its ancestors in a container; on the
# host, only the ancestors below the executor's owner (none when the chain misses it).
PRELUDE = (
    QUIET_WARNINGS
    + r"""
import os, sys, time
HOST_PIDNS = __HOST_PIDNS__
FORBIDDEN = set(__FORBIDDEN__)
if os.environ.get("CCEXEC_ATTACK_HOST_PID"):
    FORBIDDEN.add(int(os.environ["CCEXEC_ATTACK_HOST_PID"]))
IN_CONTAINER = os.readlink("/proc/self/ns/pid") != HOST_PIDNS

def parent_of(pid):
    with open("/proc/%d/stat" % pid, "rb") as handle:
        return int(handle.read().rsplit(b")", 1)[1].split()[1])

def targets():
    chain, pid = [], os.getppid()
    while pid > 1:
        if not IN_CONTAINER and pid in FORBIDDEN:
            return chain
        chain.append(pid)
        try:
            pid = parent_of(pid)
        except (OSError, ValueError, IndexError):
            break
    return [1] + chain if IN_CONTAINER else []
"""
)

FORGER = (
    PRELUDE
    + r"""
IDS = range(65)
FRAMES = [
    # the runner's frames, for every id a host would plausibly use
    b"".join(b"o %d 5\nPASS\n" % i + b'x %d {"exit_code": 0, "timed_out": false}\n' % i for i in IDS),
    # shapes a rewritten protocol might take
    b"".join(b'{"op": "end", "id": %d, "exit_code": 0, "output": "PASS"}\n' % i for i in IDS),
    b"".join(b"E %d 20\n" % i + b'{"exit_code": 0}'.ljust(20) for i in IDS),
    b'r {"python": "/bin/false"}\n',
    b"o 1 4294967296\n",
    b"\xff\xfe\x00 garbage \x1b[2J\n" * 16,
    b"o 1 " + b"9" * (16 << 20),  # 16 MiB without a newline
]

def inject(pid, number):
    path = "/proc/%d/fd/%d" % (pid, number)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as exc:
        return "%s: %s" % (path, exc.strerror)
    written = 0
    try:
        for frame in FRAMES:
            view, end = memoryview(frame), time.monotonic() + 0.5
            while view and time.monotonic() < end:
                try:
                    count = os.write(fd, view)
                except BlockingIOError:
                    time.sleep(0.005)
                    continue
                except OSError:
                    break
                written += count
                view = view[count:]
    finally:
        os.close(fd)
    return "%s: wrote %d bytes" % (path, written)

print("container=%s targets=%s" % (IN_CONTAINER, targets()), flush=True)
sys.stdout.write('x 1 {"exit_code": 0}\no 1 12\nSELF-FORGED\n')
sys.stdout.flush()
for pid in targets():
    for number in (1, 2):
        print(inject(pid, number), flush=True)
time.sleep(30)
sys.exit(3)
"""
)

READER = (
    PRELUDE
    + r"""
import select
fds, notes = [], []
for pid in targets():
    path = "/proc/%d/fd/0" % pid
    try:
        fds.append(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        notes.append("%s: %s" % (path, exc.strerror))
open("reader-started", "w", encoding="ascii").close()
stolen, end = 0, time.monotonic() + __SECONDS__
while fds and time.monotonic() < end:
    for fd in select.select(fds, [], [], 0.05)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            continue
        if not chunk:
            fds.remove(fd)
        stolen += len(chunk)
print("container=%s targets=%s %s" % (IN_CONTAINER, targets(), notes))
print("stolen %d" % stolen)
"""
)

TERMINATOR = (
    PRELUDE
    + r"""
import signal
for pid in targets():
    try:
        os.kill(pid, signal.SIGTERM)
        print("SIGTERM sent", flush=True)
    except OSError as exc:
        print("SIGTERM refused: %s" % exc.strerror, flush=True)
print("container=%s done" % IN_CONTAINER)
"""
)

# Runs in the container only: from the host's pid namespace it does nothing but say so.
KILL_ALL = r"""
if [ "$(readlink /proc/self/ns/pid)" = __HOST_PIDNS__ ]; then echo "on the host: refused"; exit 99; fi
kill -9 -1
echo "killed the rest"
"""

# Truthful: says it started (a file in the work dir), waits, prints a token, exits 7.
TRUTHFUL = (
    QUIET_WARNINGS
    + r"""
import time
open(__STARTED__, "w", encoding="ascii").close()
time.sleep(__SECONDS__)
print(__TOKEN__)
raise SystemExit(7)
"""
)

FLOOD = (
    QUIET_WARNINGS
    + r"""
import sys
stream = getattr(sys, __STREAM__).buffer
chunk = b"x" * (1 << 20)
for _ in range(1024):
    stream.write(chunk)
stream.flush()
"""
)

# (b) and (e) forge frames into PID 1's stdout while they live, when given "nuisance" (in a
# container only), so that a survivor would also show in a later call's result.
NUISANCE = r"""
import os, sys, time
def live(seconds):
    if len(sys.argv) < 3 or sys.argv[2] != "nuisance" or os.readlink("/proc/self/ns/pid") == sys.argv[3]:
        time.sleep(seconds)
        return
    frames = b"".join(b"o %d 5\nPASS\n" % i + b'x %d {"exit_code": 0}\n' % i for i in range(65))
    time.sleep(1)  # the block that started it has returned by now: this is aimed at later calls
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            fd = os.open("/proc/1/fd/1", os.O_WRONLY | os.O_NONBLOCK)
            try:
                os.write(fd, frames)
            finally:
                os.close(fd)
        except OSError:
            pass
        time.sleep(0.2)
"""
NONDUMPABLE = (
    NUISANCE
    + r"""
import ctypes
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: /proc/<pid>/environ needs CAP_SYS_PTRACE
open(sys.argv[1] + ".ready", "w", encoding="ascii").close()
live(1000)
"""
)
DAEMON = (
    NUISANCE
    + r"""
import signal
if os.fork():
    os._exit(0)
os.setsid()
if os.fork():
    os._exit(0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGHUP, signal.SIG_IGN)
open(sys.argv[1] + ".ready", "w", encoding="ascii").close()
live(1000)
"""
)
REFORKER = r"""
import os, sys, time
beat, end, generation = sys.argv[2], time.monotonic() + 20, 0
while time.monotonic() < end:
    if os.fork():
        os._exit(0)
    os.setsid()
    generation += 1
    with open(beat, "w", encoding="ascii") as handle:
        handle.write(str(generation))
    time.sleep(0.02)
"""
SURVIVORS = (
    QUIET_WARNINGS
    + r"""
import os, subprocess, sys, time
MARK, VARIANTS, NUISANCE = __MARK__, __VARIANTS__, __NUISANCE__
QUIET = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
if "a" in VARIANTS:  # a new session and an empty environment: no group, no marker variable
    if os.fork() == 0:
        null = os.open("/dev/null", os.O_RDWR)
        for number in (0, 1, 2):
            os.dup2(null, number)
        os.setsid()
        os.execve("/bin/sleep", [MARK + "-a", "1000"], {})
if "b" in VARIANTS:  # non-dumpable, in a new session
    subprocess.Popen([sys.executable, "-c", __NONDUMPABLE__, MARK + "-b", NUISANCE, __HOST_PIDNS__],
                     start_new_session=True, **QUIET)
if "c" in VARIANTS:  # a new pid and a new session every 20 ms for 20 s, with no environment
    subprocess.Popen([sys.executable, "-c", __REFORKER__, MARK + "-c", os.path.abspath(MARK + "-c.beat")],
                     start_new_session=True, env={}, **QUIET)
if "d" in VARIANTS:  # a detached daemon, then the pid counter rewound (root on the host)
    subprocess.Popen([MARK + "-d", "1000"], executable="/bin/sleep", start_new_session=True, env={}, **QUIET)
    with open("/proc/sys/kernel/ns_last_pid", "w", encoding="ascii") as handle:
        handle.write("300")
if "e" in VARIANTS:  # fork, setsid, fork; ignores SIGTERM and SIGHUP
    subprocess.Popen([sys.executable, "-c", __DAEMON__, MARK + "-e", NUISANCE, __HOST_PIDNS__], **QUIET)

# Exit only once every survivor is in place (exec'd, non-dumpable, detached...), so that the
# executor's cleanup cannot win by catching one while it is still starting.
def running(argv0):
    for pid in os.listdir("/proc"):
        try:
            with open("/proc/%s/cmdline" % pid, "rb") as handle:
                if handle.read().split(b"\0")[0] == argv0.encode():
                    return True
        except OSError:
            pass
    return False

def ready(variant):
    if variant in "ad":
        return running(MARK + "-" + variant)
    return os.path.exists(MARK + "-" + variant + (".beat" if variant == "c" else ".ready"))

end = time.monotonic() + 10
while not all(ready(variant) for variant in VARIANTS) and time.monotonic() < end:
    time.sleep(0.01)
print("spawned" if all(ready(variant) for variant in VARIANTS) else "not ready")
"""
)

# Holds the container's stdin pipe open for writing (so its main process never sees EOF) and
# its stdout pipe open for reading (so writing there never fails), from a detached process.
HOLDER = (
    QUIET_WARNINGS
    + r'''
import os, subprocess, sys
HOLD = """
import os, time
held = []
for path, flags in (("/proc/1/fd/0", os.O_WRONLY), ("/proc/1/fd/1", os.O_RDONLY)):
    try:
        held.append(os.open(path, flags | os.O_NONBLOCK))
    except OSError:
        pass
time.sleep(1000)
"""
if os.readlink("/proc/self/ns/pid") != __HOST_PIDNS__:
    subprocess.Popen([sys.executable, "-c", HOLD, __MARK__], start_new_session=True, env={},
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print("spawned")
'''
)

# Swaps sub/ between a directory and a symlink to the victim directory, atomically
# (renameat2 RENAME_EXCHANGE), from its first successful swap (it then creates started-N) until
# the file stop-N appears. Started once per call: whatever runs in the container may be killed
# when a block ends.
SWAPPER = r"""
import ctypes, os, sys
n = sys.argv[1]
if not os.path.lexists("sub"):
    os.mkdir("sub")
if not os.path.lexists("swap"):
    os.symlink(__VICTIM__, "swap")
libc = ctypes.CDLL(None, use_errno=True)
libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
AT_FDCWD, RENAME_EXCHANGE = -100, 2
exchange = lambda: libc.renameat2(AT_FDCWD, b"sub", AT_FDCWD, b"swap", RENAME_EXCHANGE) == 0
with open(("started-" if exchange() else "failed-") + n, "w", encoding="ascii") as handle:
    handle.write(os.strerror(ctypes.get_errno()))
while not os.path.exists("stop-" + n):
    for _ in range(1000):
        exchange()
"""


def survivor_code(marker: str, variants: str, *, nuisance: bool) -> str:
    """A block that starts each variant's survivor (argv[0] or argv[1] is ``marker-<variant>``) and exits 0."""
    return fill(
        SURVIVORS,
        mark=marker,
        variants=variants,
        nuisance="nuisance" if nuisance else "quiet",
        nondumpable=NONDUMPABLE,
        reforker=REFORKER,
        daemon=DAEMON,
        host_pidns=HOST_PIDNS,
    )


# -- processes ------------------------------------------------------------------------------------


def marked(needle: str) -> dict[int, str]:
    """Live processes (this one aside) whose command line contains ``needle``."""
    found: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                command = handle.read()
        except OSError:
            continue
        if needle.encode() in command and pid_alive(int(name)):
            argv = command.decode("utf-8", "replace").split("\0")
            found[int(name)] = " ".join([argv[0][:60]] + [part for part in argv[1:] if needle in part])
    return found


def survivors(needle: str, beat: Path | None = None, within: float = REAP) -> list[str]:
    """What still carries ``needle`` once ``within`` seconds passed (nothing: an empty list).

    Five empty scans in a row count as none: a process that keeps re-forking can slip between
    one listing of /proc and the next. Its heartbeat file, when given, must have stopped too.
    """
    end, quiet = time.monotonic() + within, 0
    found = marked(needle)
    while found or quiet < 5:
        quiet = 0 if found else quiet + 1
        if time.monotonic() > end:
            break
        time.sleep(0.05)
        found = marked(needle)
    left = [f"{pid} {command}" for pid, command in found.items()]
    if beat is not None and beat.exists():
        before = beat.read_bytes()
        time.sleep(0.3)
        if beat.read_bytes() != before:
            left.append(f"{beat.name} is still beating")
    return left


def kill_marked(needle: str, within: float = 5.0) -> None:
    """SIGKILL whatever carries ``needle`` until nothing has for a while (after a failed test)."""
    end, quiet = time.monotonic() + within, 0
    while quiet < 10 and time.monotonic() < end:
        found = marked(needle)
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        quiet = 0 if found else quiet + 1
        time.sleep(0.02)


def container_commands(engine: Engine, name: str) -> list[str]:
    """The command lines of the processes in the container, as the container itself lists them."""
    script = 'for p in /proc/[0-9]*; do tr "\\0" " " < "$p/cmdline" 2>/dev/null; echo; done'
    done = subprocess.run(
        [engine.client, "exec", name, "sh", "-c", script], capture_output=True, timeout=30, check=False
    )
    return done.stdout.decode("utf-8", "replace").splitlines()


class CommandLineWatch:
    """Scan every process's command line for ``needle`` on a thread, while the ``with`` block runs."""

    def __init__(self, needle: str) -> None:
        self.needle = needle
        self.seen: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.seen.update(marked(self.needle))
            time.sleep(0.01)

    def __enter__(self) -> CommandLineWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def wait_for_file(path: Path, within: float = 15.0) -> None:
    """Wait until a block created ``path`` (it started); fail after ``within`` seconds."""
    end = time.monotonic() + within
    while not path.exists():
        if time.monotonic() > end:
            pytest.fail(f"{path.name} did not appear within {within:.0f} s: the block did not start")
        time.sleep(0.01)


@pytest.fixture
def marker() -> Iterator[str]:
    """A unique string the attack puts in its processes' argv; whatever carries it is killed afterwards."""
    value = f"ccexec-attack-{uuid.uuid4().hex}"
    yield value
    kill_marked(value)


# -- calls ----------------------------------------------------------------------------------------


def listing(title: str, items: list[str]) -> str:
    """A failure message: a title, then one item a line."""
    return "\n  ".join([f"{title}:", *items])


def excerpt(text: str) -> str:
    """The end of a long output, for a failure message."""
    return text[-2000:]


class Call:
    """One call on its own thread, timed around the call: a hang fails the test instead of stalling it."""

    def __init__(self, executor: Executor, code: str, language: str = "python", *, use_async: bool = False) -> None:
        self.result: CommandLineCodeResult | None = None
        self.error: BaseException | None = None
        self.elapsed = math.inf
        self._done = threading.Event()
        blocks = [CodeBlock(code, language)]
        threading.Thread(target=self._run, args=(executor, blocks, use_async), daemon=True).start()

    def _run(self, executor: Executor, blocks: list[CodeBlock], use_async: bool) -> None:
        start = time.monotonic()
        try:
            if use_async:
                self.result = asyncio.run(executor.aexecute_code_blocks(blocks))
            else:
                self.result = executor.execute_code_blocks(blocks)
        except BaseException as exc:  # noqa: BLE001 - kept for wait() to judge
            self.error = exc
        finally:
            self.elapsed = time.monotonic() - start
            self._done.set()

    def wait(self, limit: float) -> Call:
        """Fail unless the call ended within ``limit`` seconds, with a result or a CcexecError."""
        if not self._done.wait(limit + 0.5):
            pytest.fail(f"the call was still running after its deadline of {limit:.1f} s")
        if self.error is not None and not isinstance(self.error, ccexec.CcexecError):
            raise AssertionError(f"the call raised {self.error!r}, which is not a CcexecError") from self.error
        assert self.elapsed <= limit, f"the call took {self.elapsed:.1f} s, past its deadline of {limit:.1f} s"
        return self

    def truth(self) -> CommandLineCodeResult:
        """The call's result, which it must have (no exception)."""
        assert self.error is None, f"expected the block's true result; the call raised {self.error!r}"
        assert self.result is not None
        return self.result


def run(executor: Executor, code: str, language: str = "python", timeout: float = TIMEOUT) -> Call:
    """Run one call and wait for it (within its deadline)."""
    return Call(executor, code, language).wait(deadline(timeout))


def assert_timed_out(call: Call, printed: str = "") -> None:
    """A timeout, reported as one (exit 124), with what the block printed; or a CcexecError."""
    if call.error is not None:
        return
    result = call.truth()
    assert (result.exit_code, result.timed_out) == (124, True), excerpt(result.output)
    assert printed in result.output, excerpt(result.output)


def assert_exact(call: Call, exit_code: int, output: str) -> None:
    """The block's true exit code and output, nothing forged in or missing."""
    result = call.truth()
    assert (result.exit_code, result.output) == (exit_code, output), excerpt(result.output)


def local_executor(work: Path, timeout: float = TIMEOUT) -> ccexec.LocalCommandLineCodeExecutor:
    """A local executor in ``work``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ccexec.LocalCommandLineCodeExecutor(timeout=timeout, work_dir=work, fork_server=FORK_SERVER)


def _stop_quietly(executor: Executor) -> None:
    with contextlib.suppress(ccexec.CcexecError):
        executor.stop()


#: Seconds stop() may take, and then the engine to report the container gone.
STOP_LIMIT, REMOVE_LIMIT = 10.0, 5.0


@contextlib.contextmanager
def container(engine: Engine, tmp_path: Path, **options: Any) -> Iterator[ccexec.DockerCommandLineCodeExecutor]:
    """A started Docker executor on ``engine``; afterwards stop() must end and remove its container."""
    name = f"{TEST_PREFIX}atk-{uuid.uuid4().hex[:12]}"
    options.setdefault("timeout", TIMEOUT)
    options.setdefault("work_dir", tmp_path / "work")
    options.setdefault("fork_server", FORK_SERVER and options.get("mode", "runner") == "runner")
    executor = ccexec.DockerCommandLineCodeExecutor(engine.image, name, docker=engine.client, **options)
    try:
        executor.start()
        yield executor
    finally:
        stopper = threading.Thread(target=_stop_quietly, args=(executor,), daemon=True)  # stop() may hang too
        start = time.monotonic()
        stopper.start()
        stopper.join(STOP_LIMIT)
        stopped = time.monotonic() - start
        state = engine.wait_state(name, "gone", REMOVE_LIMIT)
        if state != "gone":
            subprocess.run([engine.client, "rm", "-f", name], capture_output=True, timeout=60, check=False)
    assert stopped <= STOP_LIMIT, f"stop() was still running after {STOP_LIMIT:.0f} s"
    assert state == "gone", f"container {name} is {state} {REMOVE_LIMIT:.0f} s after stop()"


# -- the driver: an executor in a process of its own -----------------------------------------------


class Driver:
    """tests/helpers/attack_driver.py running a spec, as root or as the unprivileged user."""

    def __init__(self, spec: dict[str, Any], area: Path, user: Tester | None = None) -> None:
        self.result_path = area / "result.json"
        self.log_path = area / "driver.log"
        spec_path = area / "spec.json"
        spec_path.write_text(json.dumps({**spec, "result": str(self.result_path)}), encoding="utf-8")
        spec_path.chmod(0o644)
        if user is None:
            argv = [sys.executable, str(DRIVER), str(spec_path)]
            env = {**os.environ, "PYTHONPATH": str(REPO)}
        else:
            argv = user.command([user.python, str(user.code / "attack_driver.py"), str(spec_path)])
            env = user.environment()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log, stderr=log, cwd=area, env=env)

    def report(self, within: float) -> dict[str, Any]:
        """The driver's report, once every call ended; fail if that takes over ``within`` seconds."""
        end = time.monotonic() + within
        while not self.result_path.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"the driver exited with {self.proc.returncode} and no report:\n{self.log()}")
            if time.monotonic() > end:
                pytest.fail(f"the driver's calls had not all ended after {within:.0f} s:\n{self.log()}")
            time.sleep(0.02)
        report: dict[str, Any] = json.loads(self.result_path.read_text(encoding="utf-8"))
        return report

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]

    def close(self) -> None:
        """Let the driver stop its executor and exit; kill it if it does not within 30 s."""
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def driver(spec: dict[str, Any], area: Path, user: Tester | None = None) -> Iterator[Driver]:
    """Run the driver for the block; stop it afterwards."""
    running = Driver(spec, area, user)
    try:
        yield running
    finally:
        running.close()


def reported(call: dict[str, Any], limit: float) -> dict[str, Any]:
    """A call the driver made: it ended within ``limit`` seconds, with a result or a CcexecError."""
    assert "unexpected" not in call, f"the call raised {call['unexpected']}, which is not a CcexecError"
    assert call["elapsed"] <= limit, f"the call took {call['elapsed']:.1f} s, past its deadline of {limit:.1f} s"
    return call


def reported_truth(call: dict[str, Any], limit: float, exit_code: int, output: str) -> None:
    """A call the driver made returned the block's true exit code and output."""
    reported(call, limit)
    assert "error" not in call, f"expected the block's true result; the call raised {call['error']}"
    assert (call["exit_code"], call["output"]) == (exit_code, output), excerpt(call["output"])


def reported_timeout(call: dict[str, Any], limit: float) -> None:
    """A call the driver made timed out, and said so (or raised a CcexecError)."""
    reported(call, limit)
    if "error" not in call:
        assert (call["exit_code"], call["timed_out"]) == (124, True), excerpt(call["output"])


# == 1. forged results ============================================================================


def forger(*, in_container: bool) -> str:
    """The forging block: it may attack PID 1 only when it is told it runs in a container."""
    return fill(FORGER, host_pidns=HOST_PIDNS, forbidden=[] if in_container else forbidden_pids())


def truthful(started: str, token: str, seconds: float = 2.0) -> str:
    """A block that marks its start, waits, prints ``token`` and exits 7."""
    return fill(TRUTHFUL, started=started, token=token, seconds=seconds)


def forged_pass(output: str) -> bool:
    """Whether PASS shows other than inside the bytes the forger wrote verbatim (which are its true output)."""
    return "PASS" in re.sub(r"o \d+ 5\nPASS\n", "", output).replace('"output": "PASS"', "")


def check_forgery(forged: Call, honest: Call, token: str, *, in_container: bool) -> None:
    """The forger timed out, nothing forged in; the concurrent honest call got exactly its own result."""
    assert_timed_out(forged, "SELF-FORGED")
    if forged.result is not None:
        output = forged.result.output
        assert not forged_pass(output), excerpt(output)
        assert f"container={in_container} " in output, excerpt(output)
    assert_exact(honest, 7, f"{token}\n")


def test_local_forged_frames_to_ancestors(tmp_path: Path) -> None:
    """Fake protocol frames written to the fds of the block's ancestors forge neither its result nor another call's."""
    token, work = f"honest-{uuid.uuid4().hex}", tmp_path / "work"
    with local_executor(work) as executor:
        honest = Call(executor, truthful("b-started", token))
        wait_for_file(work / "b-started")
        forged = Call(executor, forger(in_container=False))
        forged.wait(deadline(TIMEOUT))
        honest.wait(deadline(TIMEOUT))
    check_forgery(forged, honest, token, in_container=False)


@MODES
@HARDENED
def test_container_forged_frames_to_pid1(engine: Engine, mode: str, hardened: bool, tmp_path: Path) -> None:
    """Fake frames written to PID 1's stdout and stderr forge neither the block's result nor a concurrent call's."""
    token, work = f"honest-{uuid.uuid4().hex}", tmp_path / "work"
    with container(engine, tmp_path, mode=mode, hardened=hardened) as executor:
        honest = Call(executor, truthful("b-started", token))
        wait_for_file(work / "b-started")
        forged = Call(executor, forger(in_container=True))
        forged.wait(deadline(TIMEOUT))
        honest.wait(deadline(TIMEOUT))
    check_forgery(forged, honest, token, in_container=True)


def stolen(call: Call) -> int:
    """How many bytes the reading block got from its targets' stdin."""
    output = call.truth().output
    found = re.search(r"^stolen (\d+)$", output, re.MULTILINE)
    assert found is not None, output[-2000:]
    return int(found.group(1))


def check_reader(executor: Executor, work: Path, *, in_container: bool) -> None:
    """Calls made while a block reads its ancestors' stdin all get their own result; it reads nothing."""
    reader = Call(executor, fill(READER, host_pidns=HOST_PIDNS, forbidden=forbidden_pids(), seconds=1.5))
    wait_for_file(work / "reader-started")
    others = []
    for number in range(4):
        others.append(Call(executor, f"print('other-{number}')"))
        time.sleep(0.2)
    for number, other in enumerate(others):
        assert_exact(other.wait(deadline(TIMEOUT)), 0, f"other-{number}\n")
    reader.wait(deadline(TIMEOUT))
    assert reader.truth().exit_code == 0, reader.truth().output
    assert f"container={in_container}" in reader.truth().output
    assert stolen(reader) == 0, reader.truth().output


def test_local_reading_ancestors_stdin_gets_nothing(tmp_path: Path) -> None:
    """A block reading its ancestors' stdin sees no other call's request, and those calls still run."""
    with local_executor(tmp_path / "work") as executor:
        check_reader(executor, tmp_path / "work", in_container=False)


@MODES
@HARDENED
def test_container_reading_pid1_stdin_gets_nothing(engine: Engine, mode: str, hardened: bool, tmp_path: Path) -> None:
    """A block reading /proc/1/fd/0 sees no other call's request, and those calls still run."""
    with container(engine, tmp_path, mode=mode, hardened=hardened) as executor:
        check_reader(executor, tmp_path / "work", in_container=True)


# == 2. host memory ===============================================================================

FLOOD_TIMEOUT = 3.0


def check_flood(report: dict[str, Any]) -> None:
    """Each flood came back truncated, within its deadline; the host process stayed small."""
    for call in report["calls"]:
        reported(call, deadline(FLOOD_TIMEOUT))
        assert "error" not in call, call["error"]
        assert call["truncated"], call
        assert call["output_length"] < 2 * MIB, call["output_length"]
        assert (call["exit_code"], call["timed_out"]) in ((0, False), (124, True)), call["output"][-500:]
    assert report["vmhwm_kib"] < PEAK_LIMIT_KIB, f"the host process peaked at {report['vmhwm_kib'] // 1024} MiB"


def flood_calls() -> list[dict[str, Any]]:
    """1 GiB without a newline to stdout, then the same to stderr."""
    return [
        {"code": fill(FLOOD, stream="stdout"), "language": "python"},
        {"code": fill(FLOOD, stream="stderr"), "language": "python", "after_calls": [0]},
    ]


def test_local_flood_keeps_host_memory_bounded(tmp_path: Path) -> None:
    """1 GiB without a newline, to stdout then stderr: truncated results, host peak memory bounded."""
    options = {"timeout": FLOOD_TIMEOUT, "work_dir": str(tmp_path / "work"), "fork_server": FORK_SERVER}
    spec = {"executor": "local", "options": options, "calls": flood_calls()}
    with driver(spec, tmp_path) as running:
        check_flood(running.report(within=2 * deadline(FLOOD_TIMEOUT) + 30))


@MODES
def test_container_flood_keeps_host_memory_bounded(engine: Engine, mode: str, tmp_path: Path) -> None:
    """1 GiB without a newline, to stdout then stderr, in a container: truncated results, host memory bounded."""
    options: dict[str, Any] = {
        "image": engine.image,
        "container_name": f"{TEST_PREFIX}atk-{uuid.uuid4().hex[:12]}",
        "docker": engine.client,
        "mode": mode,
        "timeout": FLOOD_TIMEOUT,
        "work_dir": str(tmp_path / "work"),
        "fork_server": FORK_SERVER and mode == "runner",
    }
    spec = {"executor": "docker", "options": options, "calls": flood_calls()}
    try:
        with driver(spec, tmp_path) as running:
            check_flood(running.report(within=2 * deadline(FLOOD_TIMEOUT) + 30))
    finally:
        subprocess.run([engine.client, "rm", "-f", options["container_name"]], capture_output=True, check=False)


# == 3. nothing outlives a block ==================================================================

LOCAL_VARIANTS = pytest.mark.parametrize(
    "variant",
    [
        pytest.param("a", id="a-setsid-execve-empty-env"),
        pytest.param("b", id="b-nondumpable"),
        pytest.param("c", id="c-reforking"),
        pytest.param(
            "d",
            id="d-ns_last_pid-rewound",
            marks=pytest.mark.skipif(os.geteuid() != 0, reason="rewinding the pid counter needs root"),
        ),
        pytest.param("e", id="e-double-fork-ignores-term-hup"),
    ],
)


def left_by(marker: str, variants: str, work: Path) -> list[str]:
    """What each variant's survivor left running, once REAP seconds passed."""
    left: list[str] = []
    for variant in variants:
        beat = work / f"{marker}-{variant}.beat" if variant == "c" else None
        left += survivors(f"{marker}-{variant}", beat)
    return left


@LOCAL_VARIANTS
def test_local_nothing_outlives_a_block(variant: str, tmp_path: Path, marker: str) -> None:
    """What a block started in the background is gone once the call returns."""
    work = tmp_path / "work"
    with local_executor(work) as executor:
        call = run(executor, survivor_code(marker, variant, nuisance=False))
        assert_exact(call, 0, "spawned\n")
        left = left_by(marker, variant, work)
        assert left == [], listing("still running", left)


@MODES
@HARDENED
def test_container_nothing_outlives_a_block(
    engine: Engine, mode: str, hardened: bool, tmp_path: Path, marker: str
) -> None:
    """Survivors (a, b, c, e) of a container block are gone once the call returns, and a later call gets the truth."""
    work, token = tmp_path / "work", f"later-{uuid.uuid4().hex}"
    with container(engine, tmp_path, mode=mode, hardened=hardened) as executor:
        call = run(executor, survivor_code(marker, "abce", nuisance=True))
        left = left_by(marker, "abce", work)
        inside = [command for command in container_commands(engine, executor.container_name) if marker in command]
        later = run(executor, f"import time; time.sleep(0.5); print({token!r})")
        assert left == [], listing("still running", left)
        assert inside == [], listing("still in the container", inside)
    assert_exact(call, 0, "spawned\n")
    assert_exact(later, 0, f"{token}\n")


# == 4. the owner is killed =======================================================================


@MODES
@HARDENED
def test_container_ends_when_its_owner_is_killed(
    engine: Engine, mode: str, hardened: bool, tmp_path: Path, marker: str
) -> None:
    """SIGKILL of the executor's process while a daemon holds PID 1's stdin open: the container is gone within 10 s."""
    name = f"{TEST_PREFIX}atk-owner-{uuid.uuid4().hex[:12]}"
    options = {
        "image": engine.image,
        "container_name": name,
        "docker": engine.client,
        "mode": mode,
        "hardened": hardened,
        "timeout": TIMEOUT,
        "work_dir": str(tmp_path / "work"),
        "fork_server": FORK_SERVER and mode == "runner",
    }
    code = fill(HOLDER, host_pidns=HOST_PIDNS, mark=marker)
    spec = {"executor": "docker", "options": options, "calls": [{"code": code, "language": "python"}], "hold": True}
    state = "unknown"
    try:
        with driver(spec, tmp_path) as running:
            (call,) = running.report(within=deadline(TIMEOUT) + 30)["calls"]
            reported_truth(call, deadline(TIMEOUT), 0, "spawned\n")
            assert engine.state(name) == "running"
            running.proc.kill()
            running.proc.wait()
            state = engine.wait_state(name, "gone", 10)
            left = survivors(marker)
    finally:
        subprocess.run([engine.client, "rm", "-f", name], capture_output=True, timeout=60, check=False)
        kill_marked(name)  # the driver's docker clients, if the container outlived it
    assert state == "gone", f"the container is still {state} 10 s after its owner was killed"
    assert left == [], listing("still running", left)


# == 5. exec mode: writes outside the work dir, pid files =========================================


@HARDENED
def test_exec_mode_write_never_follows_a_swapped_symlink(engine: Engine, hardened: bool, tmp_path: Path) -> None:
    """While sub/ keeps swapping with a symlink to another host dir, `# filename: sub/...` never lands there."""
    # The victim is mounted read-only at its own host path: the symlink resolves to it on both
    # sides, and the container cannot write there, so a file in it was written by the host.
    # The swapper runs beside the blocks (`exec -d`, as the container's user, like a block):
    # from a block it could not race the next call, since calls may be serialized.
    victim, work = tmp_path / "victim", tmp_path / "work"
    victim.mkdir()
    volumes = {str(victim): {"bind": str(victim), "mode": "ro"}}
    swapper = fill(SWAPPER, victim=str(victim))
    with container(engine, tmp_path, mode="exec", hardened=hardened, extra_volumes=volumes) as executor:
        for number in range(30):
            start = [engine.client, "exec", "-d", "-w", "/workspace", executor.container_name, "python3", "-c"]
            subprocess.run([*start, swapper, str(number)], check=True, capture_output=True, timeout=60)
            end = time.monotonic() + 15
            while not (work / f"started-{number}").exists() and time.monotonic() < end:
                assert not (work / f"failed-{number}").exists(), (work / f"failed-{number}").read_text("ascii")
                time.sleep(0.01)
            assert (work / f"started-{number}").exists(), "the swapper did not start"
            run(executor, f"# filename: sub/authorized_keys\necho key-{number}", "sh")
            (work / f"stop-{number}").touch()
    planted = sorted(path.name for path in victim.iterdir())
    assert planted == [], listing("written by the host into the victim directory", planted)


@HARDENED
def test_exec_mode_forged_pid_file_still_times_out(engine: Engine, hardened: bool, tmp_path: Path, marker: str) -> None:
    """Exec mode: a block that points its pid file at another pid is still killed at its timeout."""
    code = f'echo 99999 > "/tmp/ccexec-$CCEXEC_BLOCK_ID.pid"; echo forged; exec -a {marker} sleep 1000'
    with container(engine, tmp_path, mode="exec", hardened=hardened) as executor:
        call = run(executor, code, "bash")
        left = survivors(marker)
    assert_timed_out(call, "forged")
    assert left == [], listing("still running", left)


@HARDENED
def test_exec_mode_pid_file_of_one_spares_other_blocks(
    engine: Engine, hardened: bool, tmp_path: Path, marker: str
) -> None:
    """Exec mode: a block that writes 1 into its pid file does not get a concurrent block killed at its timeout."""
    work, token, timeout = tmp_path / "work", f"honest-{uuid.uuid4().hex}", 6.0
    code = f'touch a-started; echo 1 > "/tmp/ccexec-$CCEXEC_BLOCK_ID.pid"; exec -a {marker} sleep 1000'
    # The honest block starts 2 s into the forger's 6 s and lives until the forger's call has
    # returned (its timeout handling done), then ends on its own well before its own timeout.
    honest_code = f"touch b-started; while [ ! -e a-returned ]; do sleep 0.05; done; echo {token}; exit 7"
    with container(engine, tmp_path, mode="exec", hardened=hardened, timeout=timeout) as executor:
        forged = Call(executor, code, "bash")
        wait_for_file(work / "a-started")
        time.sleep(2.0)
        honest = Call(executor, honest_code, "sh")
        wait_for_file(work / "b-started")
        forged.wait(deadline(timeout))
        (work / "a-returned").touch()
        honest.wait(deadline(timeout))
        left = survivors(marker)
    assert_timed_out(forged)
    assert_exact(honest, 7, f"{token}\n")
    assert left == [], listing("still running", left)


# == 6. secrets ===================================================================================


@MODES
def test_secrets_stay_off_command_lines(engine: Engine, mode: str, tmp_path: Path) -> None:
    """env= values never show on a host command line; blocks see env= but not init_command's text."""
    token = uuid.uuid4().hex
    secret, init_secret = f"s3cr3t-{token}", f"s3cr3t-init-{token}"
    options: dict[str, Any] = {"mode": mode, "env": {"CCEXEC_SECRET": secret}, "init_command": f"true # {init_secret}"}
    code = "import os, time\nprint(dict(os.environ))\nprint('secret=' + os.environ['CCEXEC_SECRET'])\ntime.sleep(1)"
    with CommandLineWatch(secret) as watch, container(engine, tmp_path, **options) as executor:
        result = run(executor, code).truth()
    problems = [f"on the command line of {pid}: {command}" for pid, command in watch.seen.items()]
    if result.exit_code != 0 or f"secret={secret}\n" not in result.output:
        problems.append(f"the block did not see CCEXEC_SECRET: {excerpt(result.output)}")
    if "s3cr3t-init" in result.output:
        problems.append("the block's environment shows init_command's text")
    assert problems == [], listing("secrets leaked", problems)


# == 7. signals ===================================================================================


def terminator(*, in_container: bool) -> str:
    """The block that sends SIGTERM to PID 1 (in a container) and to its ancestors."""
    return fill(TERMINATOR, host_pidns=HOST_PIDNS, forbidden=[] if in_container else forbidden_pids())


def check_sigterm(executor: Executor, work: Path, *, in_container: bool) -> None:
    """SIGTERM to the block's supervisors disturbs neither a concurrent call nor a later one."""
    token = f"honest-{uuid.uuid4().hex}"
    honest = Call(executor, truthful("b-started", token), use_async=True)
    wait_for_file(work / "b-started")
    attack = Call(executor, terminator(in_container=in_container)).wait(deadline(TIMEOUT))
    honest.wait(deadline(TIMEOUT))
    if attack.error is None:
        # The attacker may itself die of SIGTERM as collateral of its own attack on its ancestors.
        result = attack.truth()
        assert result.exit_code in (0, 143, -signal.SIGTERM), result.output
        if result.exit_code == 0:
            assert f"container={in_container} done\n" in result.output, result.output
        else:  # exec mode: SIGTERM to its own wrapper shell ends the exec, and with it the block
            assert "killed by a signal" in result.output, result.output
    assert_exact(honest, 7, f"{token}\n")
    later = f"later-{uuid.uuid4().hex}"
    assert_exact(run(executor, f"print({later!r})"), 0, f"{later}\n")


def test_local_sigterm_to_ancestors(tmp_path: Path) -> None:
    """SIGTERM to the block's ancestors (below the test) disturbs neither a concurrent call nor a later one."""
    with local_executor(tmp_path / "work") as executor:
        check_sigterm(executor, tmp_path / "work", in_container=False)


STOPPER = """
import os, signal, time
shepherd = os.getppid()
os.kill(shepherd, signal.SIGSTOP)  # the process that waits for this block and reports its end
print("stopped my shepherd", flush=True)
"""
KILLER = """
import os, signal, subprocess, sys
daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
with open("daemon.pid", "w") as handle:
    handle.write(str(daemon.pid))
os.kill(os.getppid(), signal.SIGKILL)  # the block's shepherd
print("killed my shepherd", flush=True)
"""


RELINKER = """
import os, sys
own = os.path.abspath(sys.argv[0])
os.remove(own)
os.symlink({target!r}, own)  # the generated file, deleted after the block, now points outside
print("relinked", flush=True)
"""


def test_local_cleanup_never_follows_a_planted_symlink(tmp_path: Path) -> None:
    """A block that swaps its generated file for a symlink out: cleanup removes the link, never the target."""
    victim = tmp_path / "victim" / "keep.txt"
    victim.parent.mkdir()
    victim.write_text("precious", encoding="utf-8")
    with local_executor(tmp_path / "work") as executor:
        assert_exact(run(executor, RELINKER.format(target=str(victim))), 0, "relinked\n")
    assert victim.read_text(encoding="utf-8") == "precious"
    assert [p.name for p in (tmp_path / "work").iterdir()] == []  # the link itself was deleted


@MODES
def test_container_cleanup_never_follows_a_planted_symlink(engine: Engine, mode: str, tmp_path: Path) -> None:
    """In the container too (supervisor or exec wrapper): deleting a generated file never follows a symlink."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious", encoding="utf-8")
    volumes = {str(victim): {"bind": "/victim", "mode": "rw"}}
    with container(engine, tmp_path, mode=mode, delete_tmp_files=True, extra_volumes=volumes) as executor:
        assert_exact(run(executor, RELINKER.format(target="/victim/keep.txt")), 0, "relinked\n")
    assert (victim / "keep.txt").read_text(encoding="utf-8") == "precious"


def test_local_block_stopping_its_shepherd_gets_its_true_result(tmp_path: Path) -> None:
    """A block that SIGSTOPs its shepherd: the supervisor continues it; the true result comes back, in time."""
    with local_executor(tmp_path / "work") as executor:
        start = time.monotonic()
        result = run(executor, STOPPER).truth()
        assert (result.exit_code, result.output) == (0, "stopped my shepherd\n")
        assert time.monotonic() - start < TIMEOUT
        assert_exact(run(executor, "print('next')"), 0, "next\n")


def test_local_block_killing_its_shepherd_leaves_nothing(tmp_path: Path) -> None:
    """A block that SIGKILLs its shepherd: the call says so, its daemon is killed, the next call works."""
    work = tmp_path / "work"
    with local_executor(work) as executor:
        result = run(executor, KILLER).truth()
        if FORK_SERVER:  # forked, its parent is the fork server: its death costs only a restart of the server
            assert "killed my shepherd\n" in result.output
        else:
            assert "killed its supervising process" in result.output
        daemon = int((work / "daemon.pid").read_text(encoding="utf-8"))
        assert wait_gone([daemon]) == []
        assert_exact(run(executor, "print('next')"), 0, "next\n")


@MODES
@HARDENED
def test_container_sigterm_to_pid1(engine: Engine, mode: str, hardened: bool, tmp_path: Path) -> None:
    """SIGTERM to PID 1 and the block's ancestors disturbs neither a concurrent call nor a later one."""
    with container(engine, tmp_path, mode=mode, hardened=hardened) as executor:
        check_sigterm(executor, tmp_path / "work", in_container=True)


@MODES
@HARDENED
def test_container_kill_all_reports_the_truth(engine: Engine, mode: str, hardened: bool, tmp_path: Path) -> None:
    """`kill -9 -1` from one block: the concurrent call tells the truth (killed, not out of memory; or spared).

    Later calls work (one may raise a CcexecError if the next one works).
    """
    work, timeout = tmp_path / "work", 5.0
    with container(engine, tmp_path, mode=mode, hardened=hardened, timeout=timeout) as executor:
        victim = Call(executor, truthful("b-started", "victim-finished", seconds=2.5))
        wait_for_file(work / "b-started")
        killer = Call(executor, fill(KILL_ALL, host_pidns=HOST_PIDNS), "bash").wait(deadline(timeout))
        victim.wait(deadline(timeout))
        later = run(executor, "print('later')", timeout=timeout)
        if later.error is not None:  # allowed once, if the next call works
            later = run(executor, "print('later')", timeout=timeout)
    if killer.result is not None:
        assert "on the host" not in killer.result.output
    result = victim.truth()
    if (result.exit_code, result.output) != (7, "victim-finished\n"):  # else it was spared: the truth too
        assert result.exit_code != 0, result.output
        assert "victim-finished" not in result.output, result.output
        if not hardened:  # no memory limit: an out-of-memory kill is impossible, so claiming one is a lie
            assert "out of memory" not in result.output.lower(), result.output
    assert_exact(later, 0, "later\n")


# == 8. setuid files ==============================================================================


@MODES
def test_no_setuid_file_reaches_the_host(engine: Engine, mode: str, tmp_path: Path) -> None:
    """Setuid and setgid copies of /bin/sh made by a root block do not keep those bits in the host work dir."""
    code = (
        "cp /bin/sh x && chmod u+s x && cp /bin/sh y && chmod g+s y"
        " && mkdir -p d && cp /bin/sh d/z && chmod 6755 d/z && echo made"
    )
    work = tmp_path / "work"
    with container(engine, tmp_path, mode=mode) as executor:
        run(executor, code, "sh")
        flagged = [
            f"{path.relative_to(work)} {stat.filemode(path.lstat().st_mode)}"
            for path in work.rglob("*")
            if path.is_file() and not path.is_symlink() and path.lstat().st_mode & (stat.S_ISUID | stat.S_ISGID)
        ]
    assert flagged == [], listing("setuid/setgid files in the host work dir", flagged)


def flagged_entries(work: Path) -> list[str]:
    """Setuid/setgid files and device nodes in the host work dir."""
    found = []
    for path in work.rglob("*"):
        mode = path.lstat().st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or (stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID)):
            found.append(f"{path.relative_to(work)} {stat.filemode(mode)}")
    return found


# Ways to get a setuid file or a device node past a scrub that looks only at what changed
# (inotify): (first call, second call), sh; the first prepares, the second attacks.
GONE_NAME = "python3 -c \"import os\nfd = os.open('f', os.O_RDONLY)\nos.unlink('f')\nos.fchmod(fd, 0o4755)\""
SCRUB_DODGES = {
    "chmod-a-file-of-an-earlier-call": ("cp /bin/sh old", "chmod u+s old"),
    "deep-new-directories": ("true", "mkdir -p a/b/c/d && cp /bin/sh a/b/c/d/x && chmod 4755 a/b/c/d/x"),
    "directory-renamed-then-chmod": ("mkdir -p r1/s && cp /bin/sh r1/s/x", "mv r1 r2 && chmod u+s r2/s/x"),
    "chmod-through-a-removed-name": ("cp /bin/sh f && ln f g", GONE_NAME),
    "moved-in-from-the-container": ("true", "cp /bin/sh /tmp/m && chmod 4755 /tmp/m && mv /tmp/m here"),
    "event-queue-overflow": (
        "cp /bin/sh old && mkdir many",
        "cd many && seq 1 20000 | xargs touch && cd .. && chmod u+s old",
    ),
    "device-in-a-new-directory": ("true", "mkdir n && { mknod n/null c 1 3 || true; }"),
    "setuid-at-creation": ("true", "python3 -c \"import os; os.open('c', os.O_CREAT | os.O_WRONLY, 0o6755)\""),
}


@MODES
@pytest.mark.parametrize("dodge", sorted(SCRUB_DODGES))
def test_no_scrub_dodge_reaches_the_host(engine: Engine, mode: str, dodge: str, tmp_path: Path) -> None:
    """No way around the end-of-call scrub leaves a setuid file or a device node in the host work dir."""
    work = tmp_path / "work"
    with container(engine, tmp_path, mode=mode, timeout=30) as executor:  # 20,000 files take a while when loaded
        for code in SCRUB_DODGES[dodge]:
            call = run(executor, code + " && echo done", "sh", timeout=30)
            assert call.error is None
            assert call.truth().output.endswith("done\n"), excerpt(call.truth().output)
            assert flagged_entries(work) == [], listing(f"after {code!r}", flagged_entries(work))
        assert run(executor, "echo later", "sh").truth().output == "later\n"
        assert flagged_entries(work) == []


# == 9. the local executor as an unprivileged user ================================================


def unprivileged_options(tester: Tester) -> dict[str, Any]:
    return {"timeout": TIMEOUT, "work_dir": str(tester.work / "work"), "fork_server": FORK_SERVER}


def test_unprivileged_forged_frames_to_ancestors(tester: Tester) -> None:
    """As an unprivileged user: forged frames to the ancestors' fds forge no result; a concurrent call gets its own."""
    work, token = tester.work / "work", f"honest-{uuid.uuid4().hex}"
    calls = [
        {"code": truthful("b-started", token), "language": "python"},
        {"code": forger(in_container=False), "language": "python", "after": str(work / "b-started")},
    ]
    spec = {"executor": "local", "options": unprivileged_options(tester), "calls": calls}
    with driver(spec, tester.work, tester) as running:
        honest, forged = running.report(within=2 * deadline(TIMEOUT))["calls"]
    reported_timeout(forged, deadline(TIMEOUT))
    if "error" not in forged:
        assert "SELF-FORGED" in forged["output"], excerpt(forged["output"])
        assert not forged_pass(forged["output"]), excerpt(forged["output"])
    reported_truth(honest, deadline(TIMEOUT), 7, f"{token}\n")


def test_unprivileged_reading_ancestors_stdin_gets_nothing(tester: Tester) -> None:
    """As an unprivileged user: reading the ancestors' stdin yields nothing, and other calls still run."""
    work = tester.work / "work"
    started = str(work / "reader-started")
    calls: list[dict[str, Any]] = [
        {"code": fill(READER, host_pidns=HOST_PIDNS, forbidden=forbidden_pids(), seconds=1.5), "language": "python"}
    ]
    calls += [
        {"code": f"print('other-{n}')", "language": "python", "after": started, "delay": 0.2 * n} for n in range(4)
    ]
    spec = {"executor": "local", "options": unprivileged_options(tester), "calls": calls}
    with driver(spec, tester.work, tester) as running:
        reader, *others = running.report(within=2 * deadline(TIMEOUT))["calls"]
    for number, other in enumerate(others):
        reported_truth(other, deadline(TIMEOUT), 0, f"other-{number}\n")
    reported(reader, deadline(TIMEOUT))
    assert "error" not in reader, reader["error"]
    assert re.search(r"^stolen 0$", reader["output"], re.MULTILINE), reader["output"]


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param("a", id="a-setsid-execve-empty-env"),
        pytest.param("b", id="b-nondumpable"),
        pytest.param("c", id="c-reforking"),
        pytest.param("e", id="e-double-fork-ignores-term-hup"),
    ],
)
def test_unprivileged_nothing_outlives_a_block(variant: str, tester: Tester, marker: str) -> None:
    """As an unprivileged user: what a block started in the background is gone once the call returns."""
    work = tester.work / "work"
    calls = [{"code": survivor_code(marker, variant, nuisance=False), "language": "python"}]
    spec = {"executor": "local", "options": unprivileged_options(tester), "calls": calls, "hold": True}
    with driver(spec, tester.work, tester) as running:
        (call,) = running.report(within=deadline(TIMEOUT) + 30)["calls"]
        left = left_by(marker, variant, work)  # while the executor still lives
    reported_truth(call, deadline(TIMEOUT), 0, "spawned\n")
    assert left == [], listing("still running", left)


def test_unprivileged_sigterm_to_ancestors(tester: Tester) -> None:
    """As an unprivileged user: SIGTERM to the block's ancestors disturbs neither a concurrent call nor a later one."""
    work, token, later = tester.work / "work", f"honest-{uuid.uuid4().hex}", f"later-{uuid.uuid4().hex}"
    calls = [
        {"code": truthful("b-started", token), "language": "python"},
        {"code": terminator(in_container=False), "language": "python", "after": str(work / "b-started")},
        {"code": f"print({later!r})", "language": "python", "after_calls": [0, 1]},
    ]
    spec = {"executor": "local", "options": unprivileged_options(tester), "calls": calls}
    with driver(spec, tester.work, tester) as running:
        honest, attack, last = running.report(within=3 * deadline(TIMEOUT))["calls"]
    reported(attack, deadline(TIMEOUT))
    if "error" not in attack:
        assert attack["exit_code"] in (0, 143, -signal.SIGTERM), attack["output"]
        assert "container=False done\n" in attack["output"], attack["output"]
    reported_truth(honest, deadline(TIMEOUT), 7, f"{token}\n")
    reported_truth(last, deadline(TIMEOUT), 0, f"{later}\n")


# == 10. what this session's features opened ======================================================

MARKER_FORGER = r"""
import sys
# The exec wrapper's own start line, then the docker client's words for a stopped container,
# on both streams, then an exit code the client uses for its own failures.
sys.stdout.write("ccexec: exec started\n")
sys.stderr.write("Error response from daemon: Container abc is not running\n")
sys.stdout.flush(); sys.stderr.flush()
raise SystemExit(125)
"""


def test_exec_start_line_cannot_be_forged(engine: Engine, tmp_path: Path) -> None:
    """Exec mode: a block that prints the wrapper's start line and the client's error text, and exits
    as the client does when it cannot exec, gets exactly its own result; the container lives on."""
    with container(engine, tmp_path, mode="exec") as executor:
        forged = run(executor, MARKER_FORGER)
        later = run(executor, "print('later')")
    assert_exact(forged, 125, "ccexec: exec started\nError response from daemon: Container abc is not running\n")
    assert_exact(later, 0, "later\n")


FD_PROBE = r"""
import os
# Every descriptor this block holds: a fork server's, or the supervisor's, would be a way to
# read other calls' requests or forge frames.
mine = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))
for fd in mine:
    try:
        print(fd, os.readlink("/proc/self/fd/%d" % fd).split(":")[0])
    except OSError:
        pass  # the listing's own descriptor, closed already
"""


def test_forked_block_holds_no_descriptor_of_the_server(tmp_path: Path) -> None:
    """A block forked by the fork server holds the same descriptors as a block started anew:
    stdin, the output pipe twice, nothing of the zygote's or the supervisor's."""
    outputs = []
    for fork in (False, True):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            executor = ccexec.LocalCommandLineCodeExecutor(
                timeout=TIMEOUT, work_dir=tmp_path / str(fork), fork_server=fork
            )
        with executor:
            outputs.append(run(executor, FD_PROBE).truth().output)
    assert outputs[0] == outputs[1]
    assert [line.split()[0] for line in outputs[1].splitlines()] == ["0", "1", "2"], outputs[1]


# == this session's changes: the socket channel, the pre-forked block process ======================

CHANNEL_PROBE = """
import os, socket
tried = []
for path in ["/run/ccexec-channel/s"] + [line.split()[-1] for line in open("/proc/net/unix").read().splitlines()[1:]
                                         if line.split()[-1].startswith("/")]:
    try:
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(path)
        probe.sendall(b"R 99 2\\n{}")
        tried.append("connected " + path)
    except OSError:
        pass
for fd in (0, 1):
    try:
        os.open("/proc/1/fd/%d" % fd, os.O_WRONLY)
        tried.append("opened /proc/1/fd/%d" % fd)
    except OSError:
        pass
print(tried)
"""


@HARDENED
def test_channel_socket_out_of_a_blocks_reach(engine: Engine, hardened: bool, tmp_path: Path) -> None:
    """A block connects to no socket of the channel (mounted path, any listed Unix socket) and opens no
    descriptor of the supervisor's; a concurrent honest call gets exactly its own result."""
    token, work = f"honest-{uuid.uuid4().hex}", tmp_path / "work"
    with container(engine, tmp_path, hardened=hardened) as executor:
        assert executor.channel == "socket"
        honest = Call(executor, truthful("b-started", token))
        wait_for_file(work / "b-started")
        assert_exact(run(executor, CHANNEL_PROBE), 0, "[]\n")
        honest.wait(deadline(TIMEOUT))
        assert token in honest.truth().output
        assert_exact(run(executor, "print('after')"), 0, "after\n")


LIFER = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(0.3)  # its block has ended by then: from here on, fork server processes are the next block's
        end = time.monotonic() + 4
        while time.monotonic() < end:  # kill every fork server process but itself
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    args = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\\0")
                    if args[1:2] == [b"-c"] and args[2].startswith(b"_fresh") and int(pid) != os.getpid():
                        os.kill(int(pid), 9)
                        open("killed", "a", encoding="utf-8").write(pid + "\\n")
                except (OSError, IndexError, ValueError):
                    pass
            time.sleep(0.001)
    os._exit(0)
print("left a killer behind")
"""


def test_leftover_cannot_meet_the_next_forked_block(tmp_path: Path) -> None:
    """A daemon a forked block leaves to kill fork-server processes is dead before the next block's
    process is forked: the next blocks get exactly their own results, and it killed nothing."""
    work = tmp_path / "work"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        executor = ccexec.LocalCommandLineCodeExecutor(timeout=TIMEOUT, work_dir=work, fork_server=True)
    with executor:
        assert_exact(run(executor, LIFER), 0, "left a killer behind\n")
        for number in range(5):
            assert_exact(run(executor, f"print('next-{number}')"), 0, f"next-{number}\n")
    assert not (work / "killed").exists(), (work / "killed").read_text()
