"""Shared fixtures: executors in tmp_path work dirs, and checks that processes are gone."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import pickle
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator, NoReturn, Sequence

import pytest

import ccexec
from ccexec import CodeBlock, CommandLineCodeResult

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def local(tmp_path: Path) -> Iterator[ccexec.LocalCommandLineCodeExecutor]:
    """A local executor with a short timeout in a fresh work dir."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        executor = ccexec.LocalCommandLineCodeExecutor(timeout=10, work_dir=tmp_path)
    with executor:
        yield executor


def pid_alive(pid: int) -> bool:
    """Return whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], within: float = 2.0) -> list[int]:
    """Return the pids still alive after ``within`` seconds."""
    end = time.monotonic() + within
    alive = [pid for pid in pids if pid_alive(pid)]
    while alive and time.monotonic() < end:
        time.sleep(0.02)
        alive = [pid for pid in alive if pid_alive(pid)]
    return alive


def read_pids(path: Path) -> list[int]:
    """Read the pids a block wrote, one per line."""
    return [int(line) for line in path.read_text(encoding="utf-8").split()]


def wait_for_file(path: Path, within: float = 30.0) -> str:
    """Return the text of ``path`` once it exists and is not empty: a block's sign that it started.

    ``within`` only guards against a hang: the test fails when the file is still missing then.
    """
    end = time.monotonic() + within
    while True:
        with contextlib.suppress(FileNotFoundError):
            text = path.read_text(encoding="utf-8")
            if text:
                return text
        if time.monotonic() > end:
            pytest.fail(f"{path} was not written within {within} s")
        time.sleep(0.01)


def children_of(ppid: int) -> list[int]:
    """Return the live (not zombie) child pids of ``ppid``, read from /proc."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", encoding="ascii") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == ppid and fields[0] != "Z":
                found.append(int(name))
    return found


# -- memory, measured in a fresh interpreter ---------------------------------------------------

#: Runs in a fresh Python: one call on a local executor, then reports the result, the call's
#: duration, the interpreter's live children after stop() and its own peak resident set (VmHWM).
_MEASURED_CALL = """
import os, pickle, sys, time, warnings
import ccexec
work_dir, blocks, options = pickle.load(sys.stdin.buffer)
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)
    executor = ccexec.LocalCommandLineCodeExecutor(work_dir=work_dir, **options)
with executor:
    start = time.monotonic()
    result = executor.execute_code_blocks(blocks)
    elapsed = time.monotonic() - start
children = []
for name in os.listdir("/proc"):
    try:
        with open("/proc/%s/stat" % name, encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        continue
    if int(fields[1]) == os.getpid() and fields[0] != "Z":
        children.append(int(name))
with open("/proc/self/status", encoding="ascii") as status:
    peak = int(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
sys.stdout.buffer.write(pickle.dumps((result, elapsed, children, peak)))
"""


@dataclass(frozen=True)
class MeasuredCall:
    """A call made in a fresh interpreter, and what that interpreter was left with."""

    result: CommandLineCodeResult
    elapsed: float
    #: The interpreter's live children after stop(): the supervisor and everything else must be gone.
    children: list[int]
    #: Its peak resident set in KiB (VmHWM): from its own start, so no earlier test's peak hides growth.
    peak_kib: int


def measured_call(work_dir: Path, blocks: Sequence[CodeBlock], **options: object) -> MeasuredCall:
    """Run ``blocks`` on ``LocalCommandLineCodeExecutor(work_dir=work_dir, **options)`` in a fresh Python.

    Peak memory read from the test process (``ru_maxrss``) only ever grows: a call that needs as
    much as an earlier test already took looks free there. Compare ``peak_kib`` with
    ``baseline_peak_kib``, the same interpreter making a trivial call.
    """
    done = subprocess.run(
        [sys.executable, "-c", _MEASURED_CALL],
        input=pickle.dumps((str(work_dir), list(blocks), options)),
        capture_output=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    result, elapsed, children, peak = pickle.loads(done.stdout)
    return MeasuredCall(result, elapsed, children, peak)


@pytest.fixture(scope="session")
def baseline_peak_kib(tmp_path_factory: pytest.TempPathFactory) -> int:
    """The peak memory (KiB) of ``measured_call``'s interpreter when its block prints one line."""
    call = measured_call(tmp_path_factory.mktemp("baseline"), [CodeBlock("print(1)", "python")])
    assert (call.result.exit_code, call.result.output) == (0, "1\n")
    return call.peak_kib


@contextlib.contextmanager
def silent_server(server: socket.socket) -> Iterator[socket.socket]:
    """Accept connections on a bound socket and never answer (a hung peer), until the block ends."""
    server.listen(16)
    server.settimeout(0.2)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()


HELPERS = Path(__file__).parent / "helpers"
assert HELPERS.is_dir()
os.environ.setdefault("PYTHONWARNDEFAULTENCODING", "1")


#: Prints how many processes in the container are neither the supervisor (PID 1), nor one of its
#: shepherds (forks of it, with the same command line), nor this probe: 0 means nothing was left.
PROCESS_COUNT = """
import os
def cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read()
    except OSError:
        return None
supervisor = cmdline(1)
others = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
print(sum(1 for p in others if cmdline(p) not in (supervisor, None)))
"""


# -- Docker ------------------------------------------------------------------------------------

TEST_IMAGE = os.environ.get("CCEXEC_TEST_IMAGE", "ccexec-test/python:3-slim")
#: Every container the tests create has a name with this prefix: the family ``ccexec-test-`` and
#: a tag of this pytest process (its xdist worker and pid). Each process checks at its end that
#: none of its own is left, without looking at containers of other workers, which may still be
#: running theirs, or of anybody else.
TEST_PREFIX = f"ccexec-test-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-{os.getpid()}-"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-docker",
        action="store_true",
        help="fail Docker tests instead of skipping them when no engine is reachable (the default when CI=true)",
    )


# Tests that share an engine run side by side on xdist workers, and beside other test runs on this
# machine, except where one would spoil another's: file locks of the machine (not of the run) say
# when. Every engine test holds the `engine` lock shared; a test marked `engine_exclusive` (it
# restarts the engine) holds it alone. A test marked `engine_gc` runs the engine-wide gc, which
# removes every orphan, also the one another gc test has just planted and is about to look for:
# those tests hold the `gc` lock, one at a time. (xdist's `--dist loadgroup` would do the latter,
# but with pytest 9.2 it silently stops grouping: pytest-dev/pytest-xdist#1386.)


@contextlib.contextmanager
def machine_lock(name: str, *, exclusive: bool) -> Iterator[None]:
    """Hold the test lock ``name`` of this machine, shared or exclusive, for the duration of the block.

    This waits without a deadline: a test that hangs holding it is reported by faulthandler_timeout.
    """
    handle: IO[bytes]
    with open(Path(tempfile.gettempdir()) / f"ccexec-test-{name}.lock", "ab") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield  # closing the file releases the lock


@pytest.fixture(autouse=True)
def engine_turn(request: pytest.FixtureRequest) -> Iterator[None]:
    """Hold the locks this test's marks ask for (always the gc lock before the engine lock)."""
    with contextlib.ExitStack() as held:
        if request.node.get_closest_marker("engine_gc") is not None:
            held.enter_context(machine_lock("gc", exclusive=True))
        exclusive = request.node.get_closest_marker("engine_exclusive") is not None
        if exclusive or request.node.get_closest_marker("docker") is not None:
            held.enter_context(machine_lock("engine", exclusive=exclusive))
        yield


def _docker_problem() -> str | None:
    """Return why Docker tests cannot run here, or None when they can."""
    if shutil.which("docker") is None:
        return "no docker client on PATH (run scripts/test-engine.sh)"
    with machine_lock("engine", exclusive=False):  # not while another worker restarts the engine
        return _docker_probe()


def _docker_probe() -> str | None:
    """Return why the engine or the test image cannot be used, or None when both answer."""
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    except subprocess.TimeoutExpired:
        return "`docker info` hung for 30 s"
    if info.returncode != 0:
        return f"no Docker engine reachable: {info.stderr.decode(errors='replace').strip()[:300]}"
    image = subprocess.run(["docker", "image", "inspect", TEST_IMAGE], capture_output=True, check=False)
    if image.returncode != 0:
        return f"test image {TEST_IMAGE} is missing (run scripts/test-engine.sh)"
    return None


@pytest.fixture(scope="session")
def docker_engine(request: pytest.FixtureRequest) -> str:
    """The test image name, once a real engine answered; skip (or fail in CI) otherwise."""
    problem = _docker_problem()
    if problem is not None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes") or request.config.getoption("--require-docker"):
            pytest.fail(f"Docker is required (CI=true or --require-docker) but {problem}")
        pytest.skip(problem)
    return TEST_IMAGE


def unavailable(request: pytest.FixtureRequest, problem: str) -> NoReturn:
    """Skip with the reason, or fail when CI=true or --require-docker asks for every engine."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") or request.config.getoption("--require-docker"):
        pytest.fail(f"this engine is required (CI=true or --require-docker) but {problem}")
    pytest.skip(problem)


@pytest.fixture(scope="session")
def podman_engine(request: pytest.FixtureRequest) -> str:
    """The test image's name, once podman has it; skip (or fail in CI) otherwise."""
    if shutil.which("podman") is None:
        unavailable(request, "podman is not installed (run scripts/test-engine.sh --podman)")
    if subprocess.run(["podman", "image", "exists", TEST_IMAGE], capture_output=True, check=False).returncode:
        unavailable(request, f"podman has no image {TEST_IMAGE} (run scripts/test-engine.sh --podman)")
    return TEST_IMAGE


class Engine:
    """A container engine under test: its client command and the test image in its store."""

    def __init__(self, client: str, image: str) -> None:
        self.client, self.image = client, image

    def state(self, name: str) -> str:
        """`running`, `exited`... or `gone`."""
        out = subprocess.run(
            [self.client, "inspect", "--format", "{{.State.Status}}", name],
            capture_output=True,
            encoding="utf-8",
            check=False,
        )
        return out.stdout.strip() if out.returncode == 0 else "gone"

    def wait_state(self, name: str, wanted: str, within: float) -> str:
        """Poll the container's state until it is ``wanted`` or ``within`` seconds passed."""
        end = time.monotonic() + within
        current = self.state(name)
        while current != wanted and time.monotonic() < end:
            time.sleep(0.1)
            current = self.state(name)
        return current


@pytest.fixture(params=["docker", "podman"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each engine in turn, for the scenarios every engine must pass (the docker marker applies)."""
    fixture = "docker_engine" if request.param == "docker" else "podman_engine"
    return Engine(request.param, request.getfixturevalue(fixture))


#: Modules whose every test runs the engine-wide gc: marked `engine_gc` here rather than in the file.
GC_MODULES = frozenset(["test_gc.py"])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the engine as `docker`, so `-m 'not docker'` works, and the gc modules' tests."""
    for item in items:
        if {"docker_engine", "podman_engine", "engine"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)
        if item.path.name in GC_MODULES:
            item.add_marker(pytest.mark.engine_gc)


def leftover_containers(client: str = "docker") -> list[str]:
    """Names of the containers the tests created that still exist in ``client``'s engine."""
    out = subprocess.run(
        [client, "ps", "--all", "--filter", f"name={TEST_PREFIX}", "--format", "{{.Names}}"],
        capture_output=True,
        encoding="utf-8",
        check=False,
    )
    return [name for name in out.stdout.split() if name.startswith(TEST_PREFIX)]


@pytest.fixture(scope="session", autouse=True)
def no_container_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """After this process's tests: no container they created is left, in Docker or Podman.

    Under xdist each worker checks the containers named with its own TEST_PREFIX.
    """
    yield
    clients = [] if _docker_problem() is not None else ["docker"]
    clients += ["podman"] if shutil.which("podman") else []
    for client in clients:
        deadline = time.monotonic() + 15
        left = leftover_containers(client)
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = leftover_containers(client)
        assert left == [], f"{client} containers left behind by the tests: {left}"


# -- an unprivileged user, for the local attacks that root would win or see differently ---------

#: Created by scripts/test-engine.sh; tests run the local executor as this user.
TESTER = "ccexec-tester"


@dataclass(frozen=True)
class Tester:
    """The unprivileged user, a Python it can run, and (per test) a work area it owns."""

    __test__ = False  # a name starting with Test, but not a test class

    uid: int
    gid: int
    home: str
    python: str
    work: Path
    code: Path  # a copy of the package and the attack driver that the user can read

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run as the user: its uid, gid and groups, no capabilities."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *argv]

    def environment(self) -> dict[str, str]:
        """A clean environment that lets the user import ccexec from this checkout."""
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": self.home,
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(self.code),
            "PYTHONDONTWRITEBYTECODE": "1",  # the copy is not the user's to write
        }


def _required(request: pytest.FixtureRequest, problem: str) -> NoReturn:
    """Skip, or fail when CI=true or --require-docker asks for every test to run."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") or request.config.getoption("--require-docker"):
        pytest.fail(f"the unprivileged user {TESTER} is required (CI=true or --require-docker) but {problem}")
    pytest.skip(problem)


def _readable_copy() -> Path:
    """Copy the package and the attack driver where any user can read them (a CI checkout may
    sit below a directory only root can enter, as mktemp -d makes)."""
    code = Path(tempfile.mkdtemp(prefix="ccexec-tester-code-"))
    shutil.copytree(REPO / "ccexec", code / "ccexec", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(HELPERS / "attack_driver.py", code / "attack_driver.py")
    for path in [code, *code.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return code


@pytest.fixture(scope="session")
def tester_account(request: pytest.FixtureRequest) -> Iterator[Tester]:
    """The user, once it exists and can import ccexec; skip (or fail in CI) otherwise."""
    if os.geteuid() != 0:
        _required(request, "switching to another user needs root")
    if shutil.which("setpriv") is None:
        _required(request, "setpriv (util-linux) is not installed")
    try:
        entry = pwd.getpwnam(TESTER)
    except KeyError:
        _required(request, f"there is no user {TESTER} (run scripts/test-engine.sh)")
    code = _readable_copy()
    account = Tester(entry.pw_uid, entry.pw_gid, entry.pw_dir, "", Path("/"), code)
    # sys.executable may live where the user cannot reach (pyenv under /root): take the first
    # interpreter the user can run that imports this checkout's ccexec, the system's first.
    for python in dict.fromkeys(["/usr/bin/python3", "/usr/local/bin/python3", sys.executable]):
        probe = subprocess.run(
            account.command([python, "-c", "import ccexec"]),
            env=account.environment(),
            cwd="/",
            capture_output=True,
            timeout=60,
            check=False,
        )
        if probe.returncode == 0:
            yield Tester(entry.pw_uid, entry.pw_gid, entry.pw_dir, python, Path("/"), code)
            shutil.rmtree(code, ignore_errors=True)
            return
    shutil.rmtree(code, ignore_errors=True)
    _required(request, f"{TESTER} can run no Python that imports ccexec from a readable copy in {code}")


@pytest.fixture
def tester(tester_account: Tester) -> Iterator[Tester]:
    """The unprivileged user with a fresh work area it owns, removed afterwards."""
    # Not under tmp_path: pytest keeps that below a directory only root may enter.
    work = Path(tempfile.mkdtemp(prefix="ccexec-tester-"))
    os.chown(work, tester_account.uid, tester_account.gid)
    try:
        yield dataclasses.replace(tester_account, work=work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def orphan_label_args() -> list[str]:
    """``--label`` arguments that make a container look like one whose owner (on this host) is gone."""
    from ccexec.backends.gc import PID_LABEL, owner_labels

    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its pid names no process now
    labels = {**owner_labels(), PID_LABEL: str(child.pid)}
    return [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]


# -- the bubblewrap sandbox ------------------------------------------------------------------------


@pytest.fixture(scope="session")
def bwrap_sandbox(request: pytest.FixtureRequest) -> None:
    """Nothing, once bubblewrap can make a sandbox here; skip (or fail when CI=true) otherwise."""
    from ccexec.backends.bwrap import check_available

    try:
        check_available()
    except ccexec.SandboxUnavailableError as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes") or request.config.getoption("--require-docker"):
            pytest.fail(f"the bubblewrap sandbox is required (CI=true or --require-docker) but {exc}")
        pytest.skip(str(exc))
