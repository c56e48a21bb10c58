"""LocalCommandLineCodeExecutor, with real child processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import pytest

import ccexec
from ccexec import CodeBlock, LocalCommandLineCodeExecutor
from ccexec._protocol import DRAIN_LIMIT

from .conftest import HELPERS, children_of, measured_call, read_pids, wait_for_file, wait_gone


def make(tmp_path: Path, **kwargs: object) -> LocalCommandLineCodeExecutor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return LocalCommandLineCodeExecutor(work_dir=tmp_path, **kwargs)  # type: ignore[arg-type]


# -- basics ---------------------------------------------------------------------------------


def test_python_block_output_and_file(local: LocalCommandLineCodeExecutor) -> None:
    """A python block's output comes back with exit 0 and the file it ran from."""
    result = local.execute_code_blocks([CodeBlock("print('hello')", "python")])
    assert result.exit_code == 0
    assert result.output == "hello\n"
    assert result.code_file is not None
    assert result.code_file.endswith(".py")
    assert not result.timed_out
    assert not result.truncated
    assert len(result.blocks) == 1
    assert result.blocks[0].duration > 0


@pytest.mark.parametrize("tag", ["python", "Python", "py", "PY", "python3", " python "])
def test_python_aliases(local: LocalCommandLineCodeExecutor, tag: str) -> None:
    """Python runs under any of its aliases, in any case."""
    result = local.execute_code_blocks([CodeBlock("import sys; print(sys.executable)", tag)])
    assert (result.exit_code, result.output) == (0, sys.executable + "\n")


@pytest.mark.parametrize("tag", ["sh", "shell", "bash"])
def test_shell_languages(local: LocalCommandLineCodeExecutor, tag: str) -> None:
    """sh, shell and bash blocks run as shell scripts."""
    result = local.execute_code_blocks([CodeBlock("echo one; echo two", tag)])
    assert (result.exit_code, result.output) == (0, "one\ntwo\n")


def test_cwd_is_work_dir(local: LocalCommandLineCodeExecutor, tmp_path: Path) -> None:
    """Blocks run with the work dir as their current directory."""
    result = local.execute_code_blocks([CodeBlock("import os; print(os.getcwd())", "python")])
    assert result.output.strip() == str(tmp_path)


def test_blocks_run_in_order_and_stop_at_first_failure(local: LocalCommandLineCodeExecutor) -> None:
    """The run stops at the first non-zero exit; exit code is the last block's; output joined."""
    blocks = [
        CodeBlock("print('first')", "python"),
        CodeBlock("echo second; exit 3", "sh"),
        CodeBlock("print('never')", "python"),
    ]
    result = local.execute_code_blocks(blocks)
    assert result.exit_code == 3
    assert result.output == "first\nsecond\n"
    assert [block.exit_code for block in result.blocks] == [0, 3]
    assert result.code_file == result.blocks[0].code_file


def test_python_exception_reports_traceback(local: LocalCommandLineCodeExecutor) -> None:
    """A raising block exits 1 with its traceback in the output."""
    result = local.execute_code_blocks([CodeBlock("raise KeyError('boom')", "python")])
    assert result.exit_code == 1
    assert "KeyError: 'boom'" in result.output


def test_unknown_language_is_a_result(local: LocalCommandLineCodeExecutor) -> None:
    """An unknown language gives exit 1 and says so, after earlier blocks' output."""
    result = local.execute_code_blocks([CodeBlock("print(1)", "python"), CodeBlock("x", "cobol")])
    assert result.exit_code == 1
    assert result.output == "1\nunknown language cobol\n"


def test_empty_list(local: LocalCommandLineCodeExecutor) -> None:
    """No blocks: exit 0, empty output, no file."""
    result = local.execute_code_blocks([])
    assert (result.exit_code, result.output, result.code_file) == (0, "", None)


def test_user_language(tmp_path: Path) -> None:
    """A language added through ``languages`` runs with its command; {python} is the interpreter."""
    executor = make(tmp_path, languages={"pyx": ccexec.Language("py", ("{python}", "-I", "{file}"))})
    result = executor.execute_code_blocks([CodeBlock("import sys; print(sys.flags.isolated)", "PyX")])
    assert (result.exit_code, result.output) == (0, "1\n")


def test_missing_interpreter_is_a_result(tmp_path: Path) -> None:
    """A language whose program is not installed reports exit 127 and names the program."""
    executor = make(tmp_path, languages={"nope": ccexec.Language("x", ("ccexec-no-such-program",))})
    result = executor.execute_code_blocks([CodeBlock("x", "nope")])
    assert result.exit_code == 127
    assert "ccexec-no-such-program" in result.output


@pytest.mark.skipif(not (shutil.which("pwsh") or shutil.which("powershell")), reason="no PowerShell installed")
def test_powershell(local: LocalCommandLineCodeExecutor) -> None:
    """pwsh blocks run when PowerShell is installed."""
    result = local.execute_code_blocks([CodeBlock("Write-Output 'hi'", "pwsh")])
    assert (result.exit_code, result.output.strip()) == (0, "hi")


# -- file names ------------------------------------------------------------------------------


def test_filename_comment_names_the_file(local: LocalCommandLineCodeExecutor, tmp_path: Path) -> None:
    """`# filename:` saves the block under that name (subfolders made) and keeps it."""
    code = "# filename: sub dir/my:script.py\nprint('named')"
    result = local.execute_code_blocks([CodeBlock(code, "python")])
    assert result.exit_code == 0, result.output
    path = tmp_path / "sub dir" / "my:script.py"
    assert result.code_file == str(path)
    assert path.read_text(encoding="utf-8") == code


@pytest.mark.parametrize("name", ["../escape.py", "/tmp/abs.py", "a/../../x.py", "link/x.py", ".", ""])
def test_filename_outside_workspace(local: LocalCommandLineCodeExecutor, tmp_path: Path, name: str) -> None:
    """Names resolving outside the work dir (.., absolute, symlinks) give exit 1; earlier output kept."""
    (tmp_path / "link").symlink_to(tmp_path.parent)
    blocks = [CodeBlock("print('before')", "python"), CodeBlock(f"# filename: {name}\nprint(1)", "python")]
    result = local.execute_code_blocks(blocks)
    if name == "":
        # An empty name is no name: a generated file is used.
        assert (result.exit_code, result.output) == (0, "before\n1\n")
        return
    assert result.exit_code == 1
    assert result.output.startswith("before\n")
    assert "Filename is not in the workspace" in result.output
    assert not (tmp_path.parent / "escape.py").exists()


def test_absolute_name_inside_workspace(local: LocalCommandLineCodeExecutor, tmp_path: Path) -> None:
    """An absolute name that lies inside the work dir is accepted."""
    result = local.execute_code_blocks([CodeBlock(f"# filename: {tmp_path}/inside.py\nprint(2)", "python")])
    assert (result.exit_code, result.output) == (0, "2\n")


def test_cleanup_keeps_named_files(tmp_path: Path) -> None:
    """cleanup_temp_files deletes generated files but never a `# filename:` one."""
    executor = make(tmp_path)
    result = executor.execute_code_blocks(
        [CodeBlock("print(1)", "python"), CodeBlock("# filename: keep.py\nprint(2)", "python")]
    )
    assert result.exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.py"]


def test_block_replacing_its_own_file_still_gets_its_result(tmp_path: Path) -> None:
    """A block that turns its own generated file into a directory: the file cannot be deleted, the
    result comes back all the same (AutoGen logs the error and returns the result too)."""
    code = "import os, sys; os.remove(sys.argv[0]); os.mkdir(sys.argv[0]); print('swapped')"
    with make(tmp_path) as executor:
        result = executor.execute_code_blocks([CodeBlock(code, "python")])
    assert (result.exit_code, result.output) == (0, "swapped\n")
    assert result.code_file is not None
    assert Path(result.code_file).is_dir()


def test_no_cleanup_keeps_files(tmp_path: Path) -> None:
    """With cleanup_temp_files=False the generated file stays and holds the code."""
    executor = make(tmp_path, cleanup_temp_files=False)
    result = executor.execute_code_blocks([CodeBlock("print(1)", "python")])
    assert result.code_file is not None
    assert Path(result.code_file).read_text(encoding="utf-8") == "print(1)"


def test_same_code_concurrently_does_not_collide(tmp_path: Path) -> None:
    """Generated names are unique, so the same code run at once from threads does not clash."""
    executor = make(tmp_path, cleanup_temp_files=False)
    code = "import time; time.sleep(0.1); print(open(__file__).read().count('x'))"
    results: list[ccexec.CommandLineCodeResult] = []
    threads = [
        threading.Thread(target=lambda: results.append(executor.execute_code_blocks([CodeBlock(code, "python")])))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({r.code_file for r in results}) == 4
    assert all(r.exit_code == 0 for r in results)


# -- timeouts and killing ---------------------------------------------------------------------


def test_timeout_keeps_partial_output(tmp_path: Path) -> None:
    """At the deadline: exit 124, what was printed, then a Timeout line."""
    executor = make(tmp_path, timeout=1)
    start = time.monotonic()
    result = executor.execute_code_blocks([CodeBlock("print('started')\nimport time\ntime.sleep(30)", "python")])
    assert time.monotonic() - start < 3
    assert result.exit_code == 124
    assert result.timed_out
    assert result.output.startswith("started\n")
    assert "Timeout" in result.output.splitlines()[-1]


def test_timeout_kills_the_whole_tree(tmp_path: Path) -> None:
    """Children, grandchildren, TERM-ignoring and setsid'd processes are all dead on return."""
    executor = make(tmp_path, timeout=2)
    code = (HELPERS / "stubborn_tree.py").read_text(encoding="utf-8")
    result = executor.execute_code_blocks([CodeBlock(code, "python")])
    assert result.exit_code == 124, result.output
    pids = read_pids(tmp_path / "pids.txt")
    assert len(pids) == 5
    assert wait_gone(pids, within=0.5) == []


def test_background_job_does_not_outlive_block(local: LocalCommandLineCodeExecutor, tmp_path: Path) -> None:
    """A background job left by a finished block is killed, and the call does not wait for it."""
    start = time.monotonic()
    result = local.execute_code_blocks([CodeBlock("sleep 60 & echo $! > bg.txt; echo done", "sh")])
    # The job holds the block's output open: waiting for it would end at the 10 s timeout (exit 124),
    # a drain after the kill would last DRAIN_LIMIT.
    assert time.monotonic() - start < DRAIN_LIMIT
    assert (result.exit_code, result.output, result.timed_out) == (0, "done\n", False)
    assert wait_gone(read_pids(tmp_path / "bg.txt")) == []


def test_block_closing_stdout_still_times_out(tmp_path: Path) -> None:
    """A block that closes its stdout and keeps running is still stopped at the deadline."""
    executor = make(tmp_path, timeout=1)
    result = executor.execute_code_blocks([CodeBlock("echo hi; exec >&- 2>&-; sleep 30", "sh")])
    assert result.exit_code == 124
    assert result.output.startswith("hi\n")


def test_killed_by_signal_is_named(local: LocalCommandLineCodeExecutor) -> None:
    """A block killed by a signal reports the negative code and names the signal."""
    result = local.execute_code_blocks([CodeBlock("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "py")])
    assert result.exit_code == -9
    assert "SIGKILL" in result.output


def test_timeout_validation(tmp_path: Path) -> None:
    """timeout below 1 second raises ValueError before anything runs."""
    with pytest.raises(ValueError, match="timeout"):
        make(tmp_path, timeout=0.5)
    with pytest.raises(ccexec.InvalidArgumentError):
        make(tmp_path, timeout=0)


def test_functions_module_validation(tmp_path: Path) -> None:
    """A functions_module that is not an identifier raises before the work dir is created."""
    target = tmp_path / "not-created"
    with pytest.raises(ValueError, match="functions_module"):
        make(target, functions_module="my-module")
    assert not target.exists()


# -- output -----------------------------------------------------------------------------------


def test_stdout_and_stderr_are_interleaved_in_order(local: LocalCommandLineCodeExecutor) -> None:
    """stdout and stderr are merged in the order written, as a terminal shows them."""
    code = "import sys\nfor i in range(3):\n    print(f'out{i}')\n    print(f'err{i}', file=sys.stderr)"
    result = local.execute_code_blocks([CodeBlock(code, "python")])
    assert result.output == "out0\nerr0\nout1\nerr1\nout2\nerr2\n"


def test_undecodable_output_is_replaced(local: LocalCommandLineCodeExecutor) -> None:
    """Invalid UTF-8 never raises: bad bytes become U+FFFD; NUL bytes and unicode survive."""
    code = "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end\\x00 \\xc3\\xa9\\n')"
    result = local.execute_code_blocks([CodeBlock(code, "python")])
    assert result.exit_code == 0
    assert result.output == "ok \ufffd\ufffd end\x00 \u00e9\n"


def test_unicode_print_works(local: LocalCommandLineCodeExecutor) -> None:
    """Children print non-ASCII text in UTF-8 whatever the host locale."""
    result = local.execute_code_blocks([CodeBlock("print('h\u00e9llo \u2603')", "python")])
    assert result.output == "h\u00e9llo \u2603\n"


def test_output_cap_truncates_and_bounds_memory(tmp_path: Path, baseline_peak_kib: int) -> None:
    """A block printing 200 MB keeps host memory bounded; the result says it was truncated."""
    code = "import sys\nchunk = b'x' * 1_000_000\nfor _ in range(200): sys.stdout.buffer.write(chunk)\nprint('END')"
    call = measured_call(tmp_path, [CodeBlock(code, "python")], max_output_bytes=10_000)
    result = call.result
    assert result.exit_code == 0
    assert result.truncated
    assert result.blocks[0].truncated
    assert len(result.output) < 11_000
    assert result.output.startswith("xxxx")
    assert result.output.endswith("END\n")
    assert "output truncated" in result.output
    assert call.peak_kib - baseline_peak_kib < 32 * 1024


def test_stdin_is_closed(tmp_path: Path) -> None:
    """input() fails with EOFError instead of hanging (a hang would end at the timeout, exit 124)."""
    executor = make(tmp_path, timeout=5)
    result = executor.execute_code_blocks([CodeBlock("input('name? ')", "python")])
    assert (result.exit_code, result.timed_out) == (1, False)
    assert result.output.splitlines()[-1] == "EOFError: EOF when reading a line"


def test_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """env= sets variables and None removes inherited ones."""
    monkeypatch.setenv("CCEXEC_TEST_DROP", "x")
    executor = make(tmp_path, env={"CCEXEC_TEST_SET": "yes", "CCEXEC_TEST_DROP": None})
    code = "import os; print(os.environ.get('CCEXEC_TEST_SET'), os.environ.get('CCEXEC_TEST_DROP'))"
    assert executor.execute_code_blocks([CodeBlock(code, "python")]).output == "yes None\n"


def test_on_output_streams_chunks(tmp_path: Path) -> None:
    """on_output sees the output as it is produced, notes included."""
    chunks: list[bytes] = []
    executor = make(tmp_path, on_output=chunks.append)
    executor.execute_code_blocks([CodeBlock("print('a')", "python"), CodeBlock("", "cobol")])
    assert b"".join(chunks) == b"a\nunknown language cobol\n"


# -- work dir, lifecycle, concurrency ----------------------------------------------------------


def test_default_work_dir_is_temporary_and_removed_on_stop() -> None:
    """Without work_dir a temporary directory is used and removed by stop()."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        executor = LocalCommandLineCodeExecutor()
    result = executor.execute_code_blocks([CodeBlock("import os; print(os.getcwd())", "python")])
    work_dir = Path(result.output.strip())
    assert work_dir.is_dir()
    assert work_dir == executor.work_dir
    executor.stop()
    assert not work_dir.exists()


def test_missing_parents_of_work_dir_are_created(tmp_path: Path) -> None:
    """A work_dir whose parents do not exist is created on first use."""
    executor = make(tmp_path / "a" / "b")
    assert executor.execute_code_blocks([CodeBlock("print(1)", "python")]).exit_code == 0
    assert (tmp_path / "a" / "b").is_dir()


def test_work_dir_that_is_a_file_raises(tmp_path: Path) -> None:
    """A work_dir that is a file gives a clear ValueError."""
    (tmp_path / "file").write_text("", encoding="utf-8")
    executor = make(tmp_path / "file")
    with pytest.raises(ValueError, match="work_dir"):
        executor.execute_code_blocks([CodeBlock("print(1)", "python")])


def test_context_manager_and_restart(tmp_path: Path) -> None:
    """with/start/stop/restart work and execution works without start()."""
    with make(tmp_path) as executor:
        executor.restart()
        assert executor.execute_code_blocks([CodeBlock("print(1)", "python")]).output == "1\n"
    assert make(tmp_path).execute_code_blocks([CodeBlock("print(2)", "python")]).output == "2\n"


def test_threads_get_separate_results(tmp_path: Path) -> None:
    """One executor used from several threads returns each caller its own output."""
    executor = make(tmp_path)
    results: dict[int, str] = {}

    def work(n: int) -> None:
        code = f"import time; time.sleep(0.05); print({n})"
        results[n] = executor.execute_code_blocks([CodeBlock(code, "python")]).output

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: f"{n}\n" for n in range(8)}


def test_warns_not_a_sandbox_once() -> None:
    """The local executor warns once per process that it is not a sandbox."""
    code = textwrap.dedent(
        """
        import warnings, ccexec
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ccexec.LocalCommandLineCodeExecutor()
            ccexec.LocalCommandLineCodeExecutor()
        print(len(caught), caught[0].category.__name__, "not a sandbox" in str(caught[0].message))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, encoding="utf-8", check=True, cwd=ROOT)
    assert out.stdout == "1 UserWarning True\n"


ROOT = Path(__file__).resolve().parent.parent


# -- asyncio --------------------------------------------------------------------------------


def test_async_execution(tmp_path: Path) -> None:
    """aexecute_code_blocks returns the same result as the sync call, and async with works."""

    async def main() -> ccexec.CommandLineCodeResult:
        async with make(tmp_path) as executor:
            return await executor.aexecute_code_blocks([CodeBlock("print('async')", "python")])

    result = asyncio.run(main())
    assert (result.exit_code, result.output) == (0, "async\n")


def test_async_cancellation_kills_the_tree(tmp_path: Path) -> None:
    """Cancelling the awaiting task kills every process of the block before it propagates."""
    executor = make(tmp_path, timeout=60)
    code = (HELPERS / "stubborn_tree.py").read_text(encoding="utf-8")

    async def main() -> list[int]:
        task = asyncio.ensure_future(executor.aexecute_code_blocks([CodeBlock(code, "python")]))
        end = time.monotonic() + 30
        while len(pids := whole_tree(tmp_path / "pids.txt")) < 5 and time.monotonic() < end:
            await asyncio.sleep(0.02)  # the tree is up once its five pids are written
        assert len(pids) == 5, "the block did not start its tree"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return [pid for pid in pids if wait_gone([pid], within=0) != []]

    start = time.monotonic()
    assert asyncio.run(main()) == []
    # A hang guard: a cancellation that waited for the block would last until its 60 s timeout.
    assert time.monotonic() - start < 30


def test_async_does_not_block_the_loop(tmp_path: Path) -> None:
    """While a block runs, the event loop keeps running other tasks: one of them lets the block finish."""
    executor = make(tmp_path, timeout=20)
    # The block waits for a file that only another task of the loop writes, after the block started.
    code = textwrap.dedent(
        """
        import os, pathlib, time
        pathlib.Path("started").touch()
        while not os.path.exists("go"):
            time.sleep(0.01)
        print("released")
        """
    )

    async def release() -> None:
        while not (tmp_path / "started").exists():
            await asyncio.sleep(0.01)
        (tmp_path / "go").touch()

    async def main() -> ccexec.CommandLineCodeResult:
        releaser = asyncio.ensure_future(release())
        result = await executor.aexecute_code_blocks([CodeBlock(code, "python")])
        releaser.cancel()
        return result

    result = asyncio.run(main())
    assert (result.exit_code, result.output, result.timed_out) == (0, "released\n", False)


def test_stop_kills_running_blocks(tmp_path: Path) -> None:
    """stop() from another thread, once the block runs, ends the call with Cancelled and kills the block."""
    executor = make(tmp_path, timeout=60)
    code = textwrap.dedent(
        """
        import os, pathlib, time
        pathlib.Path("pid.txt").write_text(str(os.getpid()), "ascii")
        print("started", flush=True)
        time.sleep(99)
        """
    )
    pids: list[int] = []

    def stop_once_started() -> None:
        try:
            pids.append(int(wait_for_file(tmp_path / "pid.txt")))
        finally:
            executor.stop()

    stopper = threading.Thread(target=stop_once_started)
    stopper.start()
    start = time.monotonic()
    result = executor.execute_code_blocks([CodeBlock(code, "python")])
    stopper.join()
    # A hang guard: a stop() that did not reach the block would leave it to its 60 s timeout.
    assert time.monotonic() - start < 30
    assert result.output.startswith("started\n")
    assert "Cancelled" in result.output.splitlines()[-1]
    assert not result.timed_out
    assert wait_gone(pids) == []


def test_no_stray_processes_after_suite_of_calls(tmp_path: Path) -> None:
    """Between calls only the supervisor and its spare shepherd run; after stop() nothing of the executor is left."""
    before = set(children_of(os.getpid()))
    executor = make(tmp_path)
    for _ in range(3):
        executor.execute_code_blocks([CodeBlock("print(1)", "python"), CodeBlock("true", "sh")])
    (supervisor,) = set(children_of(os.getpid())) - before
    spares = children_of(supervisor)
    assert len(spares) <= 1  # a shepherd forked ahead of the next block, idle
    assert [child for spare in spares for child in children_of(spare)] == []
    executor.stop()
    assert wait_gone([supervisor]) == []


def whole_tree(path: Path) -> list[int]:
    """The pids stubborn_tree.py wrote so far: all five once its tree is up."""
    try:
        return read_pids(path)
    except (FileNotFoundError, ValueError):
        return []


@pytest.mark.parametrize("name", ["taken/x.py", "adir", "n" * 300 + ".py"])
def test_unwritable_filename_is_a_result(local: LocalCommandLineCodeExecutor, tmp_path: Path, name: str) -> None:
    """A name that cannot be written (under a file, a directory, too long) gives exit 1, not an exception."""
    (tmp_path / "taken").write_text("", encoding="utf-8")
    (tmp_path / "adir").mkdir()
    result = local.execute_code_blocks([CodeBlock(f"# filename: {name}\nprint(1)", "python")])
    assert result.exit_code == 1
    assert "cannot write" in result.output
