"""LocalCommandLineCodeExecutor(sandbox=True): the local executor's behaviours inside bubblewrap, and its errors."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Iterator

import pytest

import ccexec
from ccexec import CodeBlock, LocalCommandLineCodeExecutor
from ccexec.backends import bwrap

from .conftest import REPO
from .mcp_raw import RawServer
from .test_attacks import kill_marked, survivors

needs_bwrap = pytest.mark.usefixtures("bwrap_sandbox")


def make(work: Path, **options: object) -> LocalCommandLineCodeExecutor:
    return LocalCommandLineCodeExecutor(work_dir=work, sandbox=True, **options)  # type: ignore[arg-type]


@pytest.fixture
def sandboxed(tmp_path: Path, bwrap_sandbox: None) -> Iterator[LocalCommandLineCodeExecutor]:
    """A started sandboxed executor in tmp_path/work."""
    with make(tmp_path / "work", timeout=10) as executor:
        yield executor


@pytest.fixture
def marker() -> Iterator[str]:
    value = f"ccexec-sandbox-{uuid.uuid4().hex}"
    yield value
    kill_marked(value)


def run(executor: LocalCommandLineCodeExecutor, code: str, language: str = "python") -> tuple[int, str]:
    result = executor.execute_code_blocks([CodeBlock(code, language)])
    return result.exit_code, result.output


# -- the same behaviours as on the host ---------------------------------------------------------


def test_python_block_output_and_file(sandboxed: LocalCommandLineCodeExecutor) -> None:
    """A python block runs with the executor's interpreter; its file is in the work dir on the host."""
    result = sandboxed.execute_code_blocks([CodeBlock("import sys; print(sys.executable)", "python")])
    assert (result.exit_code, result.output) == (0, sys.executable + "\n")
    assert result.code_file is not None
    assert result.code_file.startswith(str(sandboxed.work_dir))


@pytest.mark.parametrize("tag", ["sh", "shell", "bash"])
def test_shell_languages(sandboxed: LocalCommandLineCodeExecutor, tag: str) -> None:
    """Shell blocks run, with the work dir as their current directory."""
    assert run(sandboxed, "echo one; pwd", tag) == (0, f"one\n{sandboxed.work_dir}\n")


def test_filename_comment_and_workspace_check(sandboxed: LocalCommandLineCodeExecutor) -> None:
    """``# filename:`` names the file (subfolders made); a name outside the work dir is refused."""
    assert run(sandboxed, "# filename: sub/named.py\nprint('named')") == (0, "named\n")
    assert (sandboxed.work_dir / "sub" / "named.py").is_file()
    code, output = run(sandboxed, "# filename: ../escape.py\nprint('x')")
    assert code == 1
    assert "Filename is not in the workspace" in output


def test_blocks_stop_at_the_first_failure(sandboxed: LocalCommandLineCodeExecutor) -> None:
    """Blocks run in order and the run stops at the first non-zero exit."""
    blocks = [CodeBlock("print(1)", "python"), CodeBlock("exit 3", "sh"), CodeBlock("print(2)", "python")]
    result = sandboxed.execute_code_blocks(blocks)
    assert (result.exit_code, result.output) == (3, "1\n")


def test_output_order_unicode_and_bad_bytes(sandboxed: LocalCommandLineCodeExecutor) -> None:
    """stdout and stderr interleave in order; UTF-8 works; undecodable bytes are replaced."""
    code = "import sys\nprint('out é')\nprint('err', file=sys.stderr)\nsys.stdout.buffer.write(b'\\xff\\n')"
    assert run(sandboxed, code) == (0, "out é\nerr\n\ufffd\n")


def test_timeout_keeps_partial_output_and_kills_the_tree(tmp_path: Path, marker: str, bwrap_sandbox: None) -> None:
    """At the deadline: exit 124, what was printed, and every process of the block gone."""
    with make(tmp_path / "work", timeout=1) as executor:
        start = time.monotonic()
        code = f"# filename: {marker}.sh\necho started; (setsid sleep 60 &); sleep 60 & sleep 60"
        result = executor.execute_code_blocks([CodeBlock(code, "sh")])
        assert time.monotonic() - start < 4
        assert (result.exit_code, result.timed_out) == (124, True)
        assert result.output.startswith("started\n")
        assert survivors(marker) == []


def test_env_overrides_and_nothing_of_ours(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bwrap_sandbox: None
) -> None:
    """env= sets and removes variables; our own environment (an API key) never reaches a block."""
    monkeypatch.setenv("CCEXEC_TEST_API_KEY", "sk-secret")
    with make(tmp_path / "work", env={"GIVEN": "yes", "LANG": None}) as executor:
        code = "import os; print(os.environ.get('GIVEN'), 'LANG' in os.environ, 'CCEXEC_TEST_API_KEY' in os.environ)"
        assert run(executor, code) == (0, "yes False False\n")


def test_venv(tmp_path: Path, bwrap_sandbox: None) -> None:
    """A venv's Python runs python blocks, and comes first on a shell block's PATH."""
    context = ccexec.create_virtual_env(tmp_path / "venv")
    with make(tmp_path / "work", virtual_env_context=context) as executor:
        assert run(executor, "import sys; print(sys.prefix)") == (0, f"{tmp_path / 'venv'}\n")
        code, output = run(executor, "command -v python; echo $VIRTUAL_ENV", "sh")
        assert (code, output) == (0, f"{tmp_path / 'venv' / 'bin' / 'python'}\n{tmp_path / 'venv'}\n")


def add(a: int, b: int) -> int:
    """Add two numbers."""
    return a + b


def test_functions(tmp_path: Path, bwrap_sandbox: None) -> None:
    """User functions are importable from blocks."""
    with make(tmp_path / "work", functions=[add]) as executor:
        assert run(executor, "from functions import add\nprint(add(2, 3))") == (0, "5\n")


def test_async_cancellation_kills_the_block(tmp_path: Path, marker: str, bwrap_sandbox: None) -> None:
    """Cancelling the awaiting task kills the block's processes."""

    async def main(executor: LocalCommandLineCodeExecutor) -> None:
        task = asyncio.ensure_future(
            executor.aexecute_code_blocks([CodeBlock(f"# filename: {marker}.sh\necho go > go; sleep 60", "sh")])
        )
        while not (executor.work_dir / "go").exists():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with make(tmp_path / "work", timeout=30) as executor:
        asyncio.run(main(executor))
        assert survivors(marker) == []


def test_stop_ends_the_sandbox(tmp_path: Path, marker: str, bwrap_sandbox: None) -> None:
    """stop() kills a running block and the sandbox; nothing of it is left on the host."""
    executor = make(tmp_path / "work", timeout=30)
    executor.start()
    assert run(executor, f"# filename: {marker}.sh\n(setsid sleep 60 &); echo ok", "sh") == (0, "ok\n")
    executor.stop()
    assert survivors(marker) == []
    assert survivors(str(tmp_path / "work")) == []  # bwrap's and the supervisor's command lines name the work dir


def test_output_cap(tmp_path: Path, bwrap_sandbox: None) -> None:
    """The output cap keeps head and tail."""
    with make(tmp_path / "work", max_output_bytes=1000) as executor:
        result = executor.execute_code_blocks([CodeBlock("print('a' * 100000)", "python")])
    assert result.truncated
    assert len(result.output) < 2000


def test_work_dir_belongs_to_the_sandbox_user(sandboxed: LocalCommandLineCodeExecutor) -> None:
    """As root the blocks are nobody and the work dir is given to nobody; else the blocks are the caller."""
    code, output = run(sandboxed, "import os; print(os.getuid())")
    expected = bwrap.NOBODY if os.geteuid() == 0 else os.geteuid()
    assert (code, output) == (0, f"{expected}\n")
    assert sandboxed.work_dir.stat().st_uid == expected
    assert stat.S_IMODE(sandboxed.work_dir.stat().st_mode) & 0o002 == 0


# -- errors ---------------------------------------------------------------------------------------


def test_missing_bwrap_raises_at_construction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No bwrap on PATH: the constructor raises SandboxUnavailableError naming the package; nothing runs."""
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ccexec.SandboxUnavailableError) as caught:
        make(tmp_path / "work")
    assert "apt-get install bubblewrap" in caught.value.fix
    assert "not on PATH" in str(caught.value)
    assert not (tmp_path / "work").exists()


def test_disabled_user_namespaces_raise(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """For a non-root caller, a sysctl that forbids user namespaces is named, with the command that allows them."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    fake.chmod(0o755)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(bwrap, "_sysctl", lambda name: "0" if name == "user.max_user_namespaces" else None)
    with pytest.raises(ccexec.SandboxUnavailableError) as caught:
        bwrap.check_available(str(fake))
    assert "user.max_user_namespaces = 0" in caught.value.cause
    assert "sysctl -w user.max_user_namespaces" in caught.value.fix


def test_bwrap_refusing_namespaces_at_start_is_explained(tmp_path: Path) -> None:
    """bwrap's own refusal at start becomes SandboxUnavailableError with the fix, not a bare exit status."""
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\nexit 1\n", encoding="utf-8")
    fake.chmod(0o755)
    (tmp_path / "work").mkdir()
    backend = bwrap.BwrapBackend(str(tmp_path / "work"), sys.executable, bwrap=str(fake))
    with pytest.raises(ccexec.SandboxUnavailableError) as caught:
        backend.start()
    backend.stop()
    assert "No permissions" in caught.value.cause
    assert "user namespaces" in caught.value.fix


@pytest.mark.parametrize(
    "options",
    [{"sandbox": "firejail"}, {"sandbox": True, "limits": {"nope": 1}}, {"sandbox": True, "limits": {"processes": 0}}],
)
def test_bad_sandbox_arguments(tmp_path: Path, options: dict[str, object]) -> None:
    """An unknown sandbox, limit name or a bad value raises InvalidArgumentError."""
    with pytest.raises(ccexec.InvalidArgumentError):
        LocalCommandLineCodeExecutor(work_dir=tmp_path, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize("options", [{"network": True}, {"limits": {"processes": 10}}, {"read_only_paths": ["/opt"]}])
def test_sandbox_options_need_the_sandbox(tmp_path: Path, options: dict[str, object]) -> None:
    """network, limits and read_only_paths without sandbox=True raise instead of being ignored."""
    with pytest.raises(ccexec.InvalidArgumentError, match="sandbox=True"):
        LocalCommandLineCodeExecutor(work_dir=tmp_path, **options)  # type: ignore[arg-type]


@needs_bwrap
def test_read_only_paths(tmp_path: Path) -> None:
    """read_only_paths are visible and cannot be written."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("given", encoding="utf-8")
    data.chmod(0o755)
    (data / "in.txt").chmod(0o644)
    with make(tmp_path / "work", read_only_paths=[data]) as executor:
        script = f"cat {data}/in.txt; echo; echo x > {data}/out.txt || echo refused"
        _, output = run(executor, script, "sh")
    assert output.startswith("given\n")
    assert output.endswith("refused\n")
    assert not (data / "out.txt").exists()


# -- command line, MCP server, doctor --------------------------------------------------------------


def ccexec_main(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ccexec", *args],
        input=stdin,
        capture_output=True,
        encoding="utf-8",
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
        check=False,
    )


@needs_bwrap
def test_cli_run_sandbox(tmp_path: Path) -> None:
    """`ccexec run --sandbox` runs the blocks in the sandbox (no host process visible, no network)."""
    script = tmp_path / "probe.py"
    script.write_text("import os, socket\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]))\n"
                      "print([name for _, name in socket.if_nameindex()])\n", encoding="utf-8")  # fmt: skip
    done = ccexec_main("run", "--sandbox", str(script))
    assert (done.returncode, done.stdout) == (0, "3\n['lo']\n"), done.stderr


@needs_bwrap
def test_doctor_sandbox() -> None:
    """`ccexec doctor --sandbox` checks bwrap, namespaces and a block run inside, and exits 0 here."""
    done = ccexec_main("doctor", "--sandbox")
    assert done.returncode == 0, done.stdout
    assert [line.split("]")[0] for line in done.stdout.splitlines()] == ["[ok  "] * 3


def test_doctor_sandbox_without_bwrap(tmp_path: Path) -> None:
    """Without bwrap, doctor --sandbox says how to install it and exits 1."""
    done = subprocess.run(
        [sys.executable, "-m", "ccexec", "doctor", "--sandbox"], capture_output=True, encoding="utf-8", cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": str(tmp_path)}, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 1
    assert "apt-get install bubblewrap" in done.stdout


@needs_bwrap
def test_mcp_sandbox(tmp_path: Path) -> None:
    """`ccexec mcp --sandbox` runs code in the sandbox and says so in the tool's description."""
    with RawServer(["--sandbox", "--work-dir", str(tmp_path / "work"), "--timeout", "20"]) as raw:
        raw.initialize()
        tools = {tool["name"]: tool for tool in raw.request("tools/list")["result"]["tools"]}
        assert "sandbox" in tools["run_code"]["description"]
        result = raw.tool("run_code", {"code": "import os; print(os.path.exists('/root/.bashrc'), os.getpid())"})
        assert result["structuredContent"]["output"] == "False 3\n"
        assert raw.close() == 0
    assert b"bubblewrap sandbox" in raw.stderr


def test_interpreter_path_with_dots(tmp_path: Path, bwrap_sandbox: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interpreter reached through `..` from a folder the sandbox does not have starts in it too."""
    elsewhere = tmp_path / "elsewhere"  # on the host only: the sandbox binds tmp_path/work, not this
    elsewhere.mkdir()
    climb = [".."] * (len(elsewhere.parts) - 1)
    monkeypatch.setattr(sys, "executable", os.path.join(elsewhere, *climb, sys.executable.lstrip("/")))
    with make(tmp_path / "work") as executor:
        assert run(executor, "print('started')") == (0, "started\n")
