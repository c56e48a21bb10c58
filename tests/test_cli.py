"""The command line, ``python -m ccexec run FILE``, end to end in real child processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import ccexec.cli

ROOT = Path(__file__).resolve().parent.parent


# PYTHONPATH would hide a missing install; the others are the test session's own strictness
# (conftest, noxfile) and would add warnings to the example's output that a user never sees.
_NOT_A_USERS = frozenset(["PYTHONPATH", "PYTHONWARNDEFAULTENCODING", "PYTHONDEVMODE"])


def clean_env(**extra: str) -> dict[str, str]:
    """Return our environment as a user's shell would have it (no PYTHONPATH), plus ``extra``."""
    env = {key: value for key, value in os.environ.items() if key not in _NOT_A_USERS}
    env.update(extra)
    return env


def ccexec_run(
    *args: str, cwd: Path = ROOT, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ccexec run ARGS`` and return the finished process, output as text."""
    return subprocess.run(
        [sys.executable, "-m", "ccexec", "run", *args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        input=stdin if stdin is not None else "",
        capture_output=True,
        encoding="utf-8",
        timeout=30,
        check=False,
    )


def write_md(path: Path, *blocks: tuple[str, str]) -> Path:
    """Write a Markdown file of (language, code) fenced blocks with prose between them."""
    parts = [f"Step {n}:\n\n```{language}\n{code}\n```\n" for n, (language, code) in enumerate(blocks)]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def test_runs_example_and_streams_output() -> None:
    """examples/hello.md runs from the repo root with no install: every block's line printed, exit 0."""
    proc = ccexec_run("examples/hello.md")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("Hello from Python ")
    assert lines[1:] == ["wrote squares.txt", "shell sees: 0 1 4 9 16 25 36 49 64 81"]
    assert proc.stderr == ""


def test_works_from_elsewhere_with_pythonpath(tmp_path: Path) -> None:
    """From a directory where ccexec is not importable, PYTHONPATH=repo root is enough."""
    proc = ccexec_run(str(ROOT / "examples" / "hello.md"), cwd=tmp_path, env=clean_env(PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert "shell sees: 0 1 4 9" in proc.stdout


def test_exit_code_is_failing_blocks_and_later_blocks_do_not_run(tmp_path: Path) -> None:
    """The process exits with the failing block's code; blocks after it never run."""
    md = write_md(tmp_path / "fail.md", ("sh", "echo before; exit 3"), ("sh", "echo after"))
    proc = ccexec_run(str(md))
    assert proc.returncode == 3
    assert proc.stdout == "before\n"


def test_json_prints_the_full_result(tmp_path: Path) -> None:
    """--json prints only parseable JSON with exit_code, output, code_file and per-block results."""
    md = write_md(tmp_path / "two.md", ("python", "print('one')"), ("sh", "echo two"))
    proc = ccexec_run("--json", str(md))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["exit_code"] == 0
    assert result["output"] == "one\ntwo\n"
    assert result["code_file"].endswith(".py")
    assert [block["language"] for block in result["blocks"]] == ["python", "sh"]
    assert [block["output"] for block in result["blocks"]] == ["one\n", "two\n"]
    assert all(block["duration"] > 0 for block in result["blocks"])


def test_timeout_exits_124_with_a_timeout_line(tmp_path: Path) -> None:
    """--timeout 1 on a sleeping block: exit 124, partial output, then a Timeout line."""
    md = write_md(tmp_path / "sleep.md", ("sh", "echo started; sleep 30"))
    proc = ccexec_run("--timeout", "1", str(md))
    assert proc.returncode == 124
    assert proc.stdout.startswith("started\n")
    assert "Timeout" in proc.stdout.splitlines()[-1]


def test_work_dir_keeps_named_files(tmp_path: Path) -> None:
    """--work-dir DIR runs blocks in DIR and leaves `# filename:` files (and their outputs) there."""
    work = tmp_path / "work"
    code = "# filename: keep.py\nopen('made.txt', 'w', encoding='utf-8').write('x')\nprint('ok')"
    md = write_md(tmp_path / "named.md", ("python", code))
    proc = ccexec_run("--work-dir", str(work), str(md))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (work / "keep.py").read_text(encoding="utf-8") == code
    assert (work / "made.txt").read_text(encoding="utf-8") == "x"


def test_relative_work_dir(tmp_path: Path) -> None:
    """--work-dir with a relative path runs unnamed blocks too."""
    md = write_md(tmp_path / "rel.md", ("python", "print('ran')"), ("sh", "echo also"))
    proc = ccexec_run("--work-dir", "out", str(md), cwd=tmp_path, env=clean_env(PYTHONPATH=str(ROOT)))
    assert (proc.returncode, proc.stdout) == (0, "ran\nalso\n")


@pytest.mark.parametrize(
    ("name", "code", "expected"),
    [
        ("script.py", "import sys\nprint('py', sys.argv[0].endswith('.py'))\n", "py True\n"),
        ("script.sh", "x=4\necho sh $((x * 2))\n", "sh 8\n"),
    ],
)
def test_scripts_run_directly(tmp_path: Path, name: str, code: str, expected: str) -> None:
    """A .py or .sh file runs as one block of its language, not parsed as Markdown."""
    script = tmp_path / name
    script.write_text(code, encoding="utf-8")
    proc = ccexec_run(str(script))
    assert (proc.returncode, proc.stdout) == (0, expected)


def test_script_exit_code(tmp_path: Path) -> None:
    """A script's own exit code becomes the process's."""
    script = tmp_path / "fail.py"
    script.write_text("raise SystemExit(5)\n", encoding="utf-8")
    assert ccexec_run(str(script)).returncode == 5


def test_language_option_for_unknown_suffix(tmp_path: Path) -> None:
    """--language runs a file whose suffix does not tell its language."""
    script = tmp_path / "job.txt"
    script.write_text("print(6 * 7)\n", encoding="utf-8")
    proc = ccexec_run("--language", "python", str(script))
    assert (proc.returncode, proc.stdout) == (0, "42\n")


def test_markdown_from_stdin() -> None:
    """`-` reads Markdown from stdin."""
    text = "Reply:\n\n```python\nprint('from stdin')\n```\n"
    proc = ccexec_run("-", stdin=text)
    assert (proc.returncode, proc.stdout) == (0, "from stdin\n")


def test_no_code_blocks_is_exit_0_with_a_message(tmp_path: Path) -> None:
    """A file without code blocks exits 0, prints nothing on stdout and says why on stderr."""
    md = tmp_path / "prose.md"
    md.write_text("# Notes\n\nJust text, and some `inline` code.\n", encoding="utf-8")
    proc = ccexec_run(str(md))
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert "no code blocks" in proc.stderr


def test_missing_file_fails_clearly(tmp_path: Path) -> None:
    """A missing file exits 2 with one error line naming the file and why, and no traceback."""
    missing = tmp_path / "nope.md"
    proc = ccexec_run(str(missing))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [f"ccexec: error: cannot read {str(missing)!r}: No such file or directory"]


def test_bad_timeout_is_a_usage_error(tmp_path: Path) -> None:
    """--timeout below 1 second is rejected with exit 2 and a message, before anything runs."""
    md = write_md(tmp_path / "x.md", ("sh", "touch ran"))
    proc = ccexec_run("--timeout", "0.1", "--work-dir", str(tmp_path / "w"), str(md))
    assert proc.returncode == 2
    assert "timeout" in proc.stderr
    assert not (tmp_path / "w" / "ran").exists()


def test_main_returns_exit_code_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """ccexec.cli.main (the console script's entry point) returns the exit code instead of exiting."""
    md = write_md(tmp_path / "m.md", ("python", "print('in process')\nraise SystemExit(7)"))
    code = ccexec.cli.main(["run", "--json", "--work-dir", str(tmp_path / "w"), str(md)])
    assert code == 7
    result = json.loads(capsys.readouterr().out)
    assert (result["exit_code"], result["output"]) == (7, "in process\n")


def test_signal_exit_maps_to_128_plus_signal(tmp_path: Path) -> None:
    """A block killed by SIGKILL makes the CLI exit 137 (128 + 9), as a shell reports it."""
    script = tmp_path / "die.py"
    script.write_text(
        textwrap.dedent(
            """
            import os, signal
            os.kill(os.getpid(), signal.SIGKILL)
            """
        ),
        encoding="utf-8",
    )
    proc = ccexec_run(str(script))
    assert proc.returncode == 137
    assert "SIGKILL" in proc.stdout
