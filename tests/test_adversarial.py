"""Hostile blocks, table-driven: each row runs for real, states the expected outcome, and checks
that nothing leaked (no process carrying a block marker, no stray child, no file outside the work
dir, no extra container process). The session prints the table: what happened, how long it
took, what was left behind."""

from __future__ import annotations

import os
import signal
import string
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ccexec
from ccexec import CodeBlock, CommandLineCodeResult
from ccexec.blocks import FilenameOutsideWorkspace, relative_name

from .conftest import (
    PROCESS_COUNT,
    TEST_IMAGE,
    TEST_PREFIX,
    children_of,
    measured_call,
    silent_server,
    wait_for_file,
)

MARKER = b"CCEXEC_BLOCK_ID="


def marked_processes(inside: Path) -> list[int]:
    """Pids of live processes that carry a ccexec block marker and run in ``inside``.

    The directory tells our blocks' processes from those of other ccexec users on the machine.
    """
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as handle:
                if MARKER in handle.read() and os.readlink(f"/proc/{name}/cwd").startswith(str(inside)):
                    found.append(int(name))
        except OSError:
            continue
    return found


@dataclass
class Row:
    """One hostile block and what must happen."""

    name: str
    code: str
    language: str
    check: Callable[[CommandLineCodeResult], object]
    timeout: float = 3
    options: dict[str, Any] | None = None


def exit_is(code: int) -> Callable[[CommandLineCodeResult], object]:
    def check(result: CommandLineCodeResult) -> None:
        assert result.exit_code == code, result.output[-500:]

    return check


def all_of(*checks: Callable[[CommandLineCodeResult], object]) -> Callable[[CommandLineCodeResult], object]:
    def check(result: CommandLineCodeResult) -> None:
        for each in checks:
            each(result)

    return check


def output_has(text: str) -> Callable[[CommandLineCodeResult], object]:
    def check(result: CommandLineCodeResult) -> None:
        assert text in result.output, result.output[-500:]

    return check


def truncated(result: CommandLineCodeResult) -> None:
    assert result.truncated
    assert len(result.output) < 70_000


def killed_by(signum: signal.Signals) -> Callable[[CommandLineCodeResult], object]:
    """The block died of ``signum``: -N from the host's view, 128 + N from a container's, named in the output."""

    def check(result: CommandLineCodeResult) -> None:
        assert result.exit_code in (-signum, 128 + signum), result.output[-500:]
        assert f"killed by a signal (exit code {result.exit_code} ({signum.name}))" in result.output, result.output

    return check


def output_is(text: str, *, truncated: bool = False) -> Callable[[CommandLineCodeResult], object]:
    """The output is exactly ``text``, and marked truncated or not."""

    def check(result: CommandLineCodeResult) -> None:
        shown = f"{len(result.output)} characters: {result.output[:100]!r}...{result.output[-100:]!r}"
        assert result.output == text, shown
        assert result.truncated is truncated

    return check


#: Three lines of a million characters each, as the block prints them.
MILLION_LINES = ("x" * 1_000_000 + "\n") * 3


def cut_to(cap: int, whole: str) -> str:
    """``whole`` as a result shows it once cut to ``cap`` bytes: its head and tail around a marker."""
    marker = f"[ccexec: output truncated: {len(whole) - cap} of {len(whole)} bytes not shown]"
    return f"{whole[: cap // 2]}\n{marker}\n{whole[-cap // 2 :]}"


STUBBORN = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
for _ in range(3):
    subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
subprocess.Popen(["sh", "-c", "sleep 600 & sleep 600"])
print("spawned", flush=True)
time.sleep(600)
"""

COMMON_ROWS = [
    Row(
        "endless print",
        "while True: print('spam ' * 10)",
        "python",
        all_of(exit_is(124), truncated),
        2,
        {"max_output_bytes": 65536},
    ),
    Row("TERM-ignoring tree + setsid daemons", STUBBORN, "python", all_of(exit_is(124), output_has("spawned")), 2),
    Row(
        "binary and invalid UTF-8",
        "import sys; sys.stdout.buffer.write(bytes(range(256)) * 4)",
        "python",
        all_of(exit_is(0), output_has("\ufffd"), output_has("\x00")),
    ),
    Row(
        "1 MB lines",
        "for _ in range(3): print('x' * 1_000_000)",
        "python",
        all_of(exit_is(0), output_is(MILLION_LINES)),
        options={"max_output_bytes": 4_000_000},
    ),
    Row(
        "1 MB lines over the 1 MiB default cap",
        "for _ in range(3): print('x' * 1_000_000)",
        "python",
        all_of(exit_is(0), output_is(cut_to(1 << 20, MILLION_LINES), truncated=True)),
    ),
    Row(
        "reads stdin",
        "import sys; data = sys.stdin.read(); print('eof', len(data))",
        "python",
        all_of(exit_is(0), output_has("eof 0")),
    ),
    Row("input() prompt", "input('name? ')", "python", all_of(exit_is(1), output_has("EOFError"))),
    Row(
        "closes stdout early then lingers",
        "echo bye; exec >&- 2>&-; sleep 30",
        "sh",
        all_of(exit_is(124), output_has("bye")),
        1,
    ),
    Row(
        "closes stdout early then exits",
        "import os; print('x', flush=True); os.close(1); os.close(2)",
        "python",
        all_of(exit_is(0), output_has("x")),
    ),
    Row(
        "shell metacharacters in language",
        "print(1)",
        "python; touch pwned-lang",
        all_of(exit_is(1), output_has("unknown language")),
    ),
    Row(
        "shell metacharacters in filename",
        "# filename: $(touch pwned-name)`touch pwned2`;x.py\nprint('ok')",
        "python",
        all_of(exit_is(0), output_has("ok")),
    ),
    Row(
        "exits by signal",
        "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)",
        "python",
        killed_by(signal.SIGSEGV),
    ),
]

DOCKER_ROWS = [
    Row(
        "fork bomb under pids_limit",
        ":(){ :|:& };:; sleep 2; echo survived",
        "bash",
        # The limit holds (the bomb's forks fail), the block runs to its end; the call's check finds
        # nothing left. 5 s leaves room for one of bash's fork retries (1 s) before `sleep 2`.
        all_of(exit_is(0), output_has("survived\n"), output_has("fork: retry: Resource temporarily unavailable")),
        5,
        {"pids_limit": 64},
    ),
    Row(
        "4 GiB under 256 MiB",
        "x = bytearray(4 * 1024**3)",
        "python",
        all_of(exit_is(137), output_has("out of memory")),
        10,
        {"memory": "256m"},
    ),
    Row(
        "kills its own runner (PID 1)",
        "import os, signal; os.kill(1, signal.SIGKILL); print('still')",
        "python",
        all_of(exit_is(0), output_has("still")),
    ),
    Row(
        "fills a size-limited /tmp",
        "dd if=/dev/zero of=/tmp/big bs=1M count=1024 2>&1 | grep -E 'No space|copied'; exit 0",
        "sh",
        output_has("No space left on device"),
        10,
        {"read_only": True, "run_args": ["--tmpfs", "/tmp:size=32m"]},
    ),
]

REPORT: list[tuple[str, str, str, float, str]] = []


@pytest.fixture(scope="module", autouse=True)
def print_report() -> Iterator[None]:
    yield
    if REPORT:
        print("\n\n| executor | row | outcome | seconds | left behind |\n|---|---|---|---|---|")
        for row in REPORT:
            print(f"| {row[0]} | {row[1]} | {row[2]} | {row[3]:.2f} | {row[4]} |")


def outcome(result: CommandLineCodeResult) -> str:
    tail = result.output.strip().splitlines()[-1][:60] if result.output.strip() else ""
    return f"exit {result.exit_code}" + (", truncated" if result.truncated else "") + (f": {tail!r}" if tail else "")


@pytest.mark.parametrize("row", COMMON_ROWS, ids=lambda row: row.name)
def test_local_hostile_block(row: Row, tmp_path: Path, baseline_peak_kib: int) -> None:
    """The local executor survives each hostile block, leaves nothing behind and keeps its memory bounded."""
    options = {"timeout": row.timeout, **(row.options or {})}
    call = measured_call(tmp_path / "work", [CodeBlock(row.code, row.language)], **options)
    result = call.result
    row.check(result)
    left = marked_processes(tmp_path) + call.children
    outside = sorted(p.name for p in tmp_path.iterdir() if p.name != "work")
    REPORT.append(("local", row.name, outcome(result), call.elapsed, str(left + outside or "nothing")))
    assert left == []
    assert outside == []
    assert list(tmp_path.rglob("pwned*")) == []  # no shell ever saw a language or file name
    assert call.elapsed < row.timeout + 3
    assert call.peak_kib - baseline_peak_kib < 64 * 1024


@pytest.mark.parametrize("row", COMMON_ROWS + DOCKER_ROWS, ids=lambda row: row.name)
def test_docker_hostile_block(row: Row, docker_engine: str, tmp_path: Path) -> None:
    """The Docker executor survives each hostile block: only its supervisor is left in the container."""
    options = dict(row.options or {})
    name = f"{TEST_PREFIX}adv-{os.urandom(3).hex()}"
    with ccexec.DockerCommandLineCodeExecutor(
        docker_engine, name, timeout=row.timeout, work_dir=tmp_path / "work", **options
    ) as executor:
        executor.start()
        start = time.monotonic()
        result = executor.execute_code_blocks([CodeBlock(row.code, row.language)])
        elapsed = time.monotonic() - start
        row.check(result)
        count = executor.execute_code_blocks([CodeBlock(PROCESS_COUNT, "python")])
        left = int(count.output)
    outside = sorted(p.name for p in tmp_path.iterdir() if p.name != "work")
    REPORT.append(("docker", row.name, outcome(result), elapsed, f"{left} process(es)" if left else "nothing"))
    assert left == 0
    assert outside == []
    assert list(tmp_path.rglob("pwned*")) == []  # no shell ever saw a language or file name
    assert elapsed < row.timeout + 5


NAME_ALPHABET = string.ascii_letters + string.digits + "./\\ :_-$`;|&*?~'\"\x00\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(alphabet=NAME_ALPHABET, max_size=40))
def test_fuzzed_filenames_never_escape(name: str, tmp_path: Path) -> None:
    """Any `# filename:` value resolves inside the work dir or is refused; nothing else is raised."""
    work = tmp_path / "w"
    work.mkdir(exist_ok=True)
    try:
        path = os.path.normpath(os.path.join(work, relative_name(name, str(work))))
    except FilenameOutsideWorkspace:
        return
    assert os.path.commonpath([path, str(work)]) == str(work)
    assert path != str(work)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(alphabet=NAME_ALPHABET.replace("\n", ""), min_size=1, max_size=30))
def test_fuzzed_filenames_through_the_executor(name: str, tmp_path: Path) -> None:
    """Through the executor, fuzzed names give a result (never an exception) and write only inside."""
    work = tmp_path / "w"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        executor = ccexec.LocalCommandLineCodeExecutor(timeout=5, work_dir=work)
    before = set(tmp_path.iterdir())
    result = executor.execute_code_blocks([CodeBlock(f"# filename: {name}\necho ok", "sh")])
    refused = ("Filename is not in the workspace: ", "ccexec: cannot write ")
    if result.exit_code == 0:
        assert result.output == "ok\n"
    else:  # a name outside the work dir, or one that cannot be a file (under a file, a directory)
        assert (result.exit_code, result.output.startswith(refused)) == (1, True), result.output
    assert set(tmp_path.iterdir()) <= before | {work}


# -- the engine misbehaves ------------------------------------------------------------------------


@pytest.fixture
def silent_engine(tmp_path: Path) -> Iterator[str]:
    """A DOCKER_HOST socket that accepts connections and never answers: a hung engine."""
    import socket

    server = socket.socket(socket.AF_UNIX)
    server.bind(str(tmp_path / "hung.sock"))
    with silent_server(server):
        yield f"unix://{tmp_path / 'hung.sock'}"


@pytest.mark.usefixtures("docker_engine")
def test_hung_engine_hits_a_deadline(silent_engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real docker client talking to an engine that never answers: every call hits its deadline."""
    from ccexec.backends import docker_cli as _docker_cli

    monkeypatch.setattr(_docker_cli, "CLI_DEADLINE", 2.0)
    monkeypatch.setattr(_docker_cli, "RUN_DEADLINE", 2.0)
    monkeypatch.setenv("DOCKER_HOST", silent_engine)
    executor = ccexec.DockerCommandLineCodeExecutor(TEST_IMAGE, f"{TEST_PREFIX}hung", work_dir=tmp_path / "w")
    start = time.monotonic()
    with pytest.raises(ccexec.DockerTimeoutError, match="may be hung"):
        executor.start()
    with pytest.raises(ccexec.DockerTimeoutError, match="did not finish within 2 s"):
        ccexec.docker.collect_garbage()
    REPORT.append(("docker", "hung engine", "DockerTimeoutError", time.monotonic() - start, "nothing"))
    assert time.monotonic() - start < 10
    assert children_of(os.getpid()) == []


def test_container_removed_from_outside_mid_run(docker_engine: str, tmp_path: Path) -> None:
    """`docker rm -f` of the container mid-block: the call raises ContainerGoneError, the next one works."""
    import subprocess
    import threading

    name = f"{TEST_PREFIX}adv-rm-{os.urandom(3).hex()}"
    work = tmp_path / "w"
    with ccexec.DockerCommandLineCodeExecutor(docker_engine, name, timeout=30, work_dir=work) as executor:
        executor.start()

        def remove_once_started() -> None:
            try:
                wait_for_file(work / "started")
            finally:
                subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)

        remover = threading.Thread(target=remove_once_started)
        remover.start()
        start = time.monotonic()
        code = "import pathlib, time\npathlib.Path('started').write_text('yes', 'ascii')\ntime.sleep(20)"
        with pytest.raises(ccexec.ContainerGoneError):
            executor.execute_code_blocks([CodeBlock(code, "python")])
        remover.join()
        REPORT.append(
            ("docker", "container removed mid-run", "ContainerGoneError", time.monotonic() - start, "nothing")
        )
        assert executor.execute_code_blocks([CodeBlock("print('fresh')", "python")]).output == "fresh\n"


@pytest.mark.engine_exclusive  # no other engine test may run while dockerd restarts
@pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists("/var/run/docker.pid"), reason="needs our own dockerd")
def test_engine_restarted_mid_session(docker_engine: str, tmp_path: Path) -> None:
    """dockerd restarted under a live executor: the next call gets a fresh container; nothing is left."""
    import signal
    import subprocess

    name = f"{TEST_PREFIX}adv-restart-{os.urandom(3).hex()}"
    with ccexec.DockerCommandLineCodeExecutor(docker_engine, name, work_dir=tmp_path / "w") as executor:
        assert executor.execute_code_blocks([CodeBlock("print('before')", "python")]).output == "before\n"
        start = time.monotonic()
        pid = int(Path("/var/run/docker.pid").read_text(encoding="ascii"))
        os.kill(pid, signal.SIGTERM)
        while os.path.exists(f"/proc/{pid}") and time.monotonic() - start < 30:
            time.sleep(0.1)
        script = Path(__file__).resolve().parent.parent / "scripts" / "test-engine.sh"
        subprocess.run(["bash", str(script)], check=True, capture_output=True, timeout=120)
        result = executor.execute_code_blocks([CodeBlock("print('after')", "python")])
        elapsed = time.monotonic() - start
        assert result.output == "after\n"
        REPORT.append(("docker", "engine restarted mid-session", "fresh container", elapsed, "nothing"))
