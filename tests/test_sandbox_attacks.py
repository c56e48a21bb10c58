"""The attacker table in the bubblewrap sandbox, as root (blocks run as nobody) and as an unprivileged user.

Every attack runs through tests/helpers/attack_driver.py, an executor in a process of its own
(as root, or as ccexec-tester via setpriv), and must be contained (the host is untouched),
reported truthfully (the block's real exit code and output) and leave nothing behind.
"""

from __future__ import annotations

import ast
import contextlib
import os
import signal
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from .conftest import Tester, pid_alive
from .test_attacks import (
    GRACE,
    QUIET_WARNINGS,
    driver,
    kill_marked,
    left_by,
    listing,
    reported,
    survivor_code,
    survivors,
)

#: The executor's timeout in these attacks, in seconds.
TIMEOUT = 5.0
#: What the attacks' processes limit is set to.
PROCESSES = 64

pytestmark = pytest.mark.usefixtures("bwrap_sandbox")


class Who:
    """Who runs the executor: root (its blocks are nobody) or the unprivileged user; where its files go."""

    def __init__(self, name: str, area: Path, user: Tester | None) -> None:
        self.name, self.area, self.user = name, area, user
        self.work = area / "work"

    def home(self) -> Path:
        return Path(self.user.home) if self.user is not None else Path.home()

    def own(self, path: Path) -> None:
        """Give ``path`` to the executor's user."""
        if self.user is not None:
            os.chown(path, self.user.uid, self.user.gid)

    def command(self, argv: list[str]) -> list[str]:
        return self.user.command(argv) if self.user is not None else argv

    def calls(self, calls: list[dict[str, Any]], *, hold: bool = False, **options: Any) -> list[dict[str, Any]]:
        """Run the calls on a sandboxed executor in the driver; return its reports."""
        options = {"timeout": TIMEOUT, "work_dir": str(self.work), "sandbox": True, **options}
        spec = {"executor": "local", "options": options, "calls": calls, "hold": hold}
        with driver(spec, self.area, self.user) as running:
            reports: list[dict[str, Any]] = running.report(within=len(calls) * (TIMEOUT + GRACE) + 30)["calls"]
        for report in reports:
            reported(report, TIMEOUT + GRACE)
            assert "error" not in report, f"expected the block's true result; the call raised {report['error']}"
        return reports


@pytest.fixture(params=["root", "unprivileged"])
def who(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Who]:
    """The executor's user, each in turn."""
    if request.param == "root":
        yield Who("root", tmp_path, None)
    else:
        tester: Tester = request.getfixturevalue("tester")
        yield Who("unprivileged", tester.work, tester)


@pytest.fixture
def marker() -> Iterator[str]:
    value = f"ccexec-sandbox-attack-{uuid.uuid4().hex}"
    yield value
    kill_marked(value)


def python(code: str) -> dict[str, Any]:
    return {"code": QUIET_WARNINGS + code, "language": "python"}


PROBE_FILES = r"""
for path in __PATHS__:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            print(path, "READ", handle.read())
    except OSError as exc:
        print(path, type(exc).__name__)
import os
print("ENV", sorted(os.environ))
"""


def fill(template: str, **values: object) -> str:
    for name, value in values.items():
        template = template.replace(f"__{name.upper()}__", repr(value))
    return template


def test_reads_nothing_of_the_host(who: Who) -> None:
    """$HOME, /root, another user's file, a world-readable file outside the work dir, /etc/shadow: none is there."""
    token = uuid.uuid4().hex
    secrets = list(dict.fromkeys([who.home() / f".ccexec-secret-{token}", Path("/root") / f".ccexec-secret-{token}"]))
    outside = who.area / "outside"
    outside.mkdir()
    secrets.append(outside / "public.txt")  # readable by anyone on the host
    for path in secrets:
        path.write_text(f"SECRET-{token}", encoding="utf-8")
    secrets[-1].chmod(0o644)
    if who.user is not None:
        os.chown(secrets[0], who.user.uid, who.user.gid)  # the user's own file in its home
    secrets[0].chmod(0o600)
    try:
        paths = [str(path) for path in secrets] + ["/etc/shadow", "/home/ccexec-tester/.profile"]
        (report,) = who.calls([python(fill(PROBE_FILES, paths=paths))], env={"GIVEN": "1"})
    finally:
        for path in secrets:
            path.unlink()
    output = report["output"]
    assert report["exit_code"] == 0, output
    assert f"SECRET-{token}" not in output
    for name in paths:
        assert f"{name} FileNotFoundError" in output, output
    # Nothing of the driver's environment (PYTHONPATH, its HOME), only the sandbox's and env=.
    env = ast.literal_eval(output.split("ENV ", 1)[1])
    assert set(env) <= {"PATH", "HOME", "TMPDIR", "LANG", "USER", "PYTHONIOENCODING", "PYTHONUNBUFFERED", "GIVEN"}
    assert "GIVEN" in env


PROBE_WRITES = r"""
for path in __PATHS__:
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("x")
        print(path, "WROTE")
    except OSError as exc:
        print(path, type(exc).__name__)
"""


def test_writes_nothing_outside_the_work_dir(who: Who) -> None:
    """Writes to /usr, /etc, $HOME, /root, the work dir's parent and /tmp never reach the host; the work dir does."""
    name = f"ccexec-write-{uuid.uuid4().hex}"
    outside = [f"/usr/{name}", f"/etc/{name}", str(who.home() / name), f"/root/{name}", str(who.area / name)]
    private = f"/tmp/{name}"
    inside = str(who.work / name)
    (report,) = who.calls([python(fill(PROBE_WRITES, paths=[*outside, private, inside]))])
    output = report["output"]
    assert report["exit_code"] == 0, output
    for path in outside:  # refused, or written to the sandbox's own root (a tmpfs)
        assert not os.path.exists(path), f"{path} reached the host"
    assert f"{private} WROTE" in output  # the sandbox's own /tmp
    assert not os.path.exists(private), "the sandbox's /tmp is the host's"
    assert f"{inside} WROTE" in output
    assert Path(inside).read_text(encoding="utf-8") == "x"


CONNECT = r"""
import socket
try:
    socket.create_connection(("127.0.0.1", __PORT__), timeout=2).close()
    print("CONNECTED")
except OSError as exc:
    print("REFUSED", type(exc).__name__)
"""


@pytest.mark.parametrize("network", [False, True], ids=["no-network", "network"])
def test_reaches_a_host_listener_only_with_network(who: Who, network: bool) -> None:
    """A listener on the host's 127.0.0.1 is out of reach, unless network=True shares the host's network."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(4)
        (report,) = who.calls([python(fill(CONNECT, port=server.getsockname()[1]))], network=network)
    assert report["exit_code"] == 0, report["output"]
    assert ("CONNECTED" in report["output"]) is network, report["output"]


PROCESSES_PROBE = r"""
import os, signal
mine = os.getpid()
seen = []
for name in os.listdir("/proc"):
    if name.isdigit():
        try:
            with open("/proc/%s/cmdline" % name, "rb") as handle:
                seen.append(handle.read())
        except OSError:
            pass
print("visible=%d marker=%s" % (len(seen), any(__MARKER__.encode() in line for line in seen)), flush=True)
for target in (1, -1):
    try:
        os.kill(target, signal.SIGKILL)
    except OSError as exc:
        print("kill", target, type(exc).__name__, flush=True)
print("survived", flush=True)
"""


def test_sees_and_signals_no_host_process(who: Who, marker: str) -> None:
    """A host process of the same user is invisible; SIGKILL to PID 1 and to -1 reach only the sandbox."""
    host = subprocess.Popen(who.command(["/bin/sh", "-c", f"sleep 300; : {marker}"]), stdin=subprocess.DEVNULL)
    try:
        reports = who.calls(
            [python(fill(PROCESSES_PROBE, marker=marker)), {**python("print('later')"), "after_calls": [0]}]
        )
        assert pid_alive(host.pid), "the host process was killed from the sandbox"
    finally:
        host.kill()
        host.wait()
    attack, later = reports
    assert "marker=False" in attack["output"], attack["output"]
    visible = int(attack["output"].split("visible=", 1)[1].split()[0])
    assert visible < 10, attack["output"]  # the supervisor, a shepherd, the block: no host process
    # kill -1 killed the block's shepherd: the supervisor (PID 1, which ignored SIGKILL) says so.
    assert attack["exit_code"] == 0 or "supervising process" in attack["output"], attack["output"]
    assert (later["exit_code"], later["output"]) == (0, "later\n")


FORK_BOMB = r"""
import os, time
forks = 0
try:
    while forks < 10000:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        forks += 1
except OSError as exc:
    print("stopped", type(exc).__name__)
print("forks", forks)
"""


def test_fork_bomb_is_bounded(who: Who, marker: str) -> None:
    """A fork bomb stops at the process limit, the block reports it, and its children are gone after the call."""
    code = {"code": f"# filename: {marker}.py\n{FORK_BOMB}", "language": "python"}
    shell = {
        "code": f"# filename: {marker}.sh\nbomb() {{ bomb | bomb & }}; bomb; sleep 1; echo host still answers",
        "language": "bash",
        "after_calls": [0],
    }
    reports = who.calls([code, shell], limits={"processes": PROCESSES})
    forks = int(reports[0]["output"].split("forks ", 1)[1].split()[0])
    assert "stopped BlockingIOError" in reports[0]["output"], reports[0]["output"]
    assert 0 < forks < PROCESSES, reports[0]["output"]
    assert "host still answers" in reports[1]["output"], reports[1]["output"][-500:]
    assert survivors(marker) == []


def test_memory_hog_is_refused(who: Who) -> None:
    """An allocation over the address-space limit fails in the block, which says so."""
    (report,) = who.calls(
        [python("data = bytearray(1 << 30)\nprint('allocated')")], limits={"address_space": 256 << 20}
    )
    assert report["exit_code"] == 1, report["output"]
    assert "MemoryError" in report["output"]
    assert "allocated" not in report["output"]


def test_huge_file_is_cut_at_the_file_size_limit(who: Who) -> None:
    """A writer past the file-size limit is killed by SIGXFSZ (reported as such); the file stays at the limit."""
    (report,) = who.calls(
        [{"code": "exec head -c 8388608 /dev/zero > big.bin", "language": "sh"}], limits={"file_size": 1 << 20}
    )
    assert report["exit_code"] == -signal.SIGXFSZ, report["output"]
    assert "SIGXFSZ" in report["output"]
    assert (who.work / "big.bin").stat().st_size <= 1 << 20


def test_cpu_hog_is_stopped_at_its_cpu_seconds(who: Who) -> None:
    """A busy loop is killed by SIGXCPU at its CPU-seconds limit, well before the timeout."""
    (report,) = who.calls([python("while True:\n    pass")], limits={"cpu_seconds": 1})
    assert report["exit_code"] == -signal.SIGXCPU, report["output"]
    assert report["elapsed"] < TIMEOUT


@pytest.mark.parametrize("variants", ["abce"], ids=["setsid-empty-env-nondumpable-reforking-daemon"])
def test_nothing_outlives_a_block(who: Who, marker: str, variants: str) -> None:
    """Daemons (setsid, an emptied environment, non-dumpable, re-forking, double fork) die with their block."""
    with contextlib.ExitStack():
        options = {"timeout": TIMEOUT, "work_dir": str(who.work), "sandbox": True}
        spec = {"executor": "local", "options": options, "hold": True,
                "calls": [{"code": survivor_code(marker, variants, nuisance=False), "language": "python"}]}  # fmt: skip
        with driver(spec, who.area, who.user) as running:
            (call,) = running.report(within=TIMEOUT + GRACE + 30)["calls"]
            left = left_by(marker, variants, who.work)  # while the executor still lives
    reported(call, TIMEOUT + GRACE)
    assert (call.get("exit_code"), call.get("output")) == (0, "spawned\n"), call
    assert left == [], listing("still running", left)
