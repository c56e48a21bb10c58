"""ccexec copied into another package and imported from there, with only the standard library."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_vendored_copy_runs_blocks_and_cli(tmp_path: Path) -> None:
    """`myapp/_vendor/ccexec` imports under `python -I`, runs a local block and its own CLI."""
    vendor = tmp_path / "myapp" / "_vendor"
    vendor.mkdir(parents=True)
    (tmp_path / "myapp" / "__init__.py").write_text("", encoding="utf-8")
    (vendor / "__init__.py").write_text("", encoding="utf-8")
    shutil.copytree(ROOT / "ccexec", vendor / "ccexec", ignore=shutil.ignore_patterns("__pycache__"))
    script = textwrap.dedent(
        f"""
        import sys, warnings
        sys.path.insert(0, {str(tmp_path)!r})
        warnings.simplefilter("ignore")
        from myapp._vendor import ccexec
        from myapp._vendor.ccexec import cli
        assert "ccexec" not in sys.modules, "a module imported ccexec absolutely"
        executor = ccexec.LocalCommandLineCodeExecutor(work_dir={str(tmp_path / "work")!r})
        result = executor.execute_code_blocks([ccexec.CodeBlock("print(6 * 7)", "python")])
        print(result.exit_code, result.output.strip(), ccexec.__version__)
        docker = ccexec.DockerCommandLineCodeExecutor  # importable without an engine
        sys.exit(cli.main(["run", {str(ROOT / "examples" / "hello.md")!r}]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-I", "-c", script], capture_output=True, encoding="utf-8", cwd=tmp_path, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "0 42 0.1.0"
    assert "shell sees: 0 1 4 9 16 25 36 49 64 81" in lines
