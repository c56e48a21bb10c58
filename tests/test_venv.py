"""create_virtual_env and running blocks inside a virtual environment."""

from __future__ import annotations

import os
import sys
import venv
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest

import ccexec
from ccexec import CodeBlock, LocalCommandLineCodeExecutor


def make(
    work_dir: Path, context: SimpleNamespace, env: dict[str, str | None] | None = None
) -> LocalCommandLineCodeExecutor:
    """Return a local executor using ``context`` as its virtual environment."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return LocalCommandLineCodeExecutor(timeout=20, work_dir=work_dir, virtual_env_context=context, env=env)


def run(executor: LocalCommandLineCodeExecutor, code: str, language: str = "python") -> str:
    """Run one block, assert it succeeded, return its output."""
    result = executor.execute_code_blocks([CodeBlock(code, language)])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="module")
def shared_venv(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """One venv without pip, made once for the read-only tests of this module."""
    return ccexec.create_virtual_env(tmp_path_factory.mktemp("venv") / "env", with_pip=False)


PROBE = (
    "import os, sys\n"
    "print(sys.prefix != sys.base_prefix)\n"
    "print(os.path.realpath(sys.prefix))\n"
    "print(os.environ.get('VIRTUAL_ENV'))\n"
)


def test_create_returns_a_context(tmp_path: Path) -> None:
    """create_virtual_env returns the venv context: env_dir, bin_path, and an existing env_exe."""
    context = ccexec.create_virtual_env(tmp_path / "env", with_pip=False)
    assert Path(context.env_dir) == tmp_path / "env"
    assert Path(context.bin_path).parent == tmp_path / "env"
    assert Path(context.env_exe).parent == Path(context.bin_path)
    assert os.access(context.env_exe, os.X_OK)
    assert (tmp_path / "env" / "pyvenv.cfg").is_file()


def test_create_reuses_an_existing_venv(shared_venv: SimpleNamespace) -> None:
    """Creating again at the same path keeps the venv working (and does not raise)."""
    again = ccexec.create_virtual_env(shared_venv.env_dir, with_pip=False)
    assert again.env_exe == shared_venv.env_exe


def test_python_block_runs_in_the_venv(shared_venv: SimpleNamespace, tmp_path: Path) -> None:
    """A python block runs with the venv's interpreter: its prefix, and VIRTUAL_ENV set."""
    is_venv, prefix, virtual_env = run(make(tmp_path, shared_venv), PROBE).splitlines()
    assert is_venv == "True"
    assert prefix == os.path.realpath(shared_venv.env_dir)
    assert virtual_env == shared_venv.env_dir


def test_shell_block_finds_the_venv_python_first(shared_venv: SimpleNamespace, tmp_path: Path) -> None:
    """A sh block's PATH starts with the venv's bin, so `python` is the venv's."""
    output = run(make(tmp_path, shared_venv), 'command -v python; echo "$VIRTUAL_ENV"', "sh")
    found, virtual_env = output.splitlines()
    assert Path(found) == Path(shared_venv.bin_path) / "python"
    assert virtual_env == shared_venv.env_dir
    probe = run(make(tmp_path, shared_venv), "python -c 'import sys; print(sys.prefix != sys.base_prefix)'", "sh")
    assert probe == "True\n"


def test_pythonhome_is_dropped(shared_venv: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PYTHONHOME from the host does not reach a venv block (it would break the venv)."""
    monkeypatch.setenv("PYTHONHOME", str(tmp_path / "nowhere"))
    assert run(make(tmp_path, shared_venv), "import os; print(os.environ.get('PYTHONHOME'))") == "None\n"


def test_hand_made_envbuilder_context(tmp_path: Path) -> None:
    """A context from venv.EnvBuilder.ensure_directories (then create) works as virtual_env_context."""
    builder = venv.EnvBuilder(with_pip=False)
    env_dir = str(tmp_path / "hand")
    context = builder.ensure_directories(env_dir)
    builder.create(env_dir)
    is_venv, prefix, virtual_env = run(make(tmp_path / "work", context), PROBE).splitlines()
    assert is_venv == "True"
    assert prefix == os.path.realpath(env_dir)
    assert virtual_env == context.env_dir


def test_context_with_missing_interpreter_is_rejected(tmp_path: Path) -> None:
    """A context whose env_exe does not exist raises InvalidArgumentError (a ValueError) at once."""
    builder = venv.EnvBuilder(with_pip=False)
    context = builder.ensure_directories(str(tmp_path / "never-created"))
    assert not os.path.lexists(context.env_exe)
    with pytest.raises(ccexec.InvalidArgumentError, match="does not exist"):
        make(tmp_path / "work", context)
    with pytest.raises(ValueError, match="does not exist"):
        make(tmp_path / "work", SimpleNamespace(env_exe=str(tmp_path / "python"), bin_path=str(tmp_path)))
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    "context",
    [SimpleNamespace(), SimpleNamespace(env_exe=sys.executable), SimpleNamespace(bin_path="/usr/bin"), object()],
)
def test_context_without_attributes_is_rejected(tmp_path: Path, context: SimpleNamespace) -> None:
    """A context lacking env_exe or bin_path raises InvalidArgumentError naming what is needed."""
    with pytest.raises(ccexec.InvalidArgumentError, match="env_exe and bin_path"):
        make(tmp_path, context)


def test_parent_path_blocked_by_a_file_raises_virtualenverror(tmp_path: Path) -> None:
    """A venv path under a regular file raises VirtualEnvError (a RuntimeError) with the path."""
    (tmp_path / "blocker").touch()
    target = tmp_path / "blocker" / "env"
    with pytest.raises(ccexec.VirtualEnvError) as caught:
        ccexec.create_virtual_env(target, with_pip=False)
    assert isinstance(caught.value, RuntimeError)
    assert caught.value.path == str(target)


def test_path_that_is_a_file_raises_virtualenverror(tmp_path: Path) -> None:
    """A venv path that is itself a regular file raises VirtualEnvError."""
    (tmp_path / "blocker").touch()
    with pytest.raises(ccexec.VirtualEnvError):
        ccexec.create_virtual_env(tmp_path / "blocker", with_pip=False)


@pytest.mark.slow
def test_with_pip_block_uses_the_venvs_pip(tmp_path: Path) -> None:
    """With pip (bundled by ensurepip, no network), `python -m pip` in a block is the venv's pip."""
    context = ccexec.create_virtual_env(tmp_path / "env", with_pip=True)
    # pip itself opens files without an encoding; keep the test session's EncodingWarnings out.
    executor = make(tmp_path / "work", context, env={"PYTHONWARNDEFAULTENCODING": None})
    output = run(executor, "python -m pip --version --disable-pip-version-check", "sh")
    assert output.startswith("pip ")
    assert os.path.realpath(context.env_dir) in os.path.realpath(output.split(" from ", 1)[1].split(" (")[0])
    output = run(executor, "import pip, sys; print(pip.__file__.startswith(sys.prefix))")
    assert output == "True\n"


def test_relative_venv_context_works_from_the_work_dir(
    shared_venv: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A venv context with relative paths (as EnvBuilder gives for a relative dir) still runs its Python."""
    monkeypatch.chdir(shared_venv.env_dir.rsplit(os.sep, 1)[0])
    name = os.path.basename(shared_venv.env_dir)
    relative = SimpleNamespace(
        env_dir=name,
        env_exe=os.path.relpath(shared_venv.env_exe),
        bin_path=os.path.relpath(shared_venv.bin_path),
    )
    executor = make(tmp_path / "work", relative)
    lines = run(executor, PROBE).splitlines()
    executor.stop()
    assert lines[0] == "True"
    assert lines[1] == os.path.realpath(shared_venv.env_dir)
