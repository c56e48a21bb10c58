"""Shared fixtures: executors in tmp_path work dirs, and checks that processes are gone."""

from __future__ import annotations

import contextlib
import os
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
from typing import Iterator, NoReturn, Sequence

import pytest

import ccexec


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
#: Every container the tests create has a name with this prefix, so the suite can check
#: at the end that none is left, without looking at anybody else's containers.
TEST_PREFIX = "ccexec-test-"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--require-docker",
        action="store_true",
        help="fail Docker tests instead of skipping them when no engine is reachable (the default when CI=true)",
    )


def _docker_problem() -> str | None:
    """Return why Docker tests cannot run here, or None when they can."""
    if shutil.which("docker") is None:
        return "no docker client on PATH (run scripts/test-engine.sh)"
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the engine as `docker`, so `-m 'not docker'` works."""
    for item in items:
        if {"docker_engine", "podman_engine", "engine"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.docker)


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
    """After the whole suite: no container the tests created is left, in Docker or Podman."""
    yield
    clients = [] if shutil.which("docker") is None or _docker_problem() is not None else ["docker"]
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
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Tester:
    """The unprivileged user, a Python it can run, and (per test) a work area it owns."""

    __test__ = False  # a name starting with Test, but not a test class

    uid: int
    gid: int
    home: str
    python: str
    work: Path

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run as the user: its uid, gid and groups, no capabilities."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--", *argv]

    def environment(self) -> dict[str, str]:
        """A clean environment that lets the user import ccexec from this checkout."""
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": self.home,
            "LANG": "C.UTF-8",
            "PYTHONPATH": str(REPO),
            "PYTHONDONTWRITEBYTECODE": "1",  # the checkout is not the user's to write
        }


def _required(request: pytest.FixtureRequest, problem: str) -> NoReturn:
    """Skip, or fail when CI=true or --require-docker asks for every test to run."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes") or request.config.getoption("--require-docker"):
        pytest.fail(f"the unprivileged user {TESTER} is required (CI=true or --require-docker) but {problem}")
    pytest.skip(problem)


@pytest.fixture(scope="session")
def tester_account(request: pytest.FixtureRequest) -> Tester:
    """The user, once it exists and can import ccexec; skip (or fail in CI) otherwise."""
    if os.geteuid() != 0:
        _required(request, "switching to another user needs root")
    if shutil.which("setpriv") is None:
        _required(request, "setpriv (util-linux) is not installed")
    try:
        entry = pwd.getpwnam(TESTER)
    except KeyError:
        _required(request, f"there is no user {TESTER} (run scripts/test-engine.sh)")
    account = Tester(entry.pw_uid, entry.pw_gid, entry.pw_dir, "", Path("/"))
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
            return Tester(entry.pw_uid, entry.pw_gid, entry.pw_dir, python, Path("/"))
    _required(request, f"{TESTER} can run no Python that imports ccexec from {REPO} (is the checkout readable?)")


@pytest.fixture
def tester(tester_account: Tester) -> Iterator[Tester]:
    """The unprivileged user with a fresh work area it owns, removed afterwards."""
    # Not under tmp_path: pytest keeps that below a directory only root may enter.
    work = Path(tempfile.mkdtemp(prefix="ccexec-tester-"))
    os.chown(work, tester_account.uid, tester_account.gid)
    try:
        yield Tester(tester_account.uid, tester_account.gid, tester_account.home, tester_account.python, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def orphan_label_args() -> list[str]:
    """``--label`` arguments that make a container look like one whose owner (on this host) is gone."""
    from ccexec.backends.gc import PID_LABEL, owner_labels

    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its pid names no process now
    labels = {**owner_labels(), PID_LABEL: str(child.pid)}
    return [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
