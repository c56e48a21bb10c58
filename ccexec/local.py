"""LocalCommandLineCodeExecutor: each block is a file run by a new process on this host."""

from __future__ import annotations

import os
import sys
import time
import warnings

from ._capture import OutputCapture
from ._executor import DEFAULT_MAX_OUTPUT_BYTES, BaseCommandLineExecutor
from .blocks import PYTHON, CodeBlock, FilenameOutsideWorkspace, Language, generated_filename, host_code_path
from .errors import InvalidArgumentError
from .results import TIMEOUT_EXIT_CODE, BlockResult, describe_exit

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import time matters)
if TYPE_CHECKING:
    from types import SimpleNamespace
    from typing import Any, Mapping, Sequence

    from ._capture import OutputCallback
    from ._process import Cancel

_warned = False


def _warn_not_a_sandbox() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(
            "LocalCommandLineCodeExecutor runs code on this machine with your permissions; it is "
            "not a sandbox. Use DockerCommandLineCodeExecutor for code you do not trust.",
            UserWarning,
            stacklevel=3,
        )


class LocalCommandLineCodeExecutor(BaseCommandLineExecutor):
    """Run each code block as a file in a new process on this host (not a sandbox).

    Blocks run in order in ``work_dir`` (a temporary directory removed by ``stop()`` when
    None; a given path and its missing parents are created). Each block gets ``timeout``
    seconds; at the deadline everything it started is killed and it reports exit code 124.
    Python blocks run with ``virtual_env_context.env_exe`` when given, else
    ``sys.executable``.

    Keyword-only additions to AutoGen's parameters:
        languages: extra or replacement languages, tag -> ``ccexec.Language``
            (e.g. ``{"node": Language("js", ("node",))}``).
        env: environment overrides for blocks; a None value removes a variable.
        max_output_bytes: output kept per block (head and tail); the rest is dropped and
            the result's ``truncated`` is set.
        on_output: called with each raw chunk of output as it arrives (from a worker thread).
        setup_timeout: seconds for installing the functions' packages (default: timeout).
    """

    def __init__(  # noqa: PLR0917 - positional order is AutoGen's, so switching is an import change
        self,
        timeout: float = 60,
        work_dir: str | os.PathLike[str] | None = None,
        functions: Sequence[Any] = (),
        functions_module: str = "functions",
        cleanup_temp_files: bool = True,
        virtual_env_context: SimpleNamespace | None = None,
        *,
        languages: Mapping[str, Language] | None = None,
        env: Mapping[str, str | None] | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        on_output: OutputCallback = None,
        setup_timeout: float | None = None,
    ) -> None:
        super().__init__(
            timeout=timeout,
            work_dir=work_dir,
            functions=functions,
            functions_module=functions_module,
            languages=languages,
            max_output_bytes=max_output_bytes,
            on_output=on_output,
            setup_timeout=setup_timeout,
        )
        self._cleanup_temp_files = cleanup_temp_files
        self._python = sys.executable
        overrides: dict[str, str | None] = {}
        if virtual_env_context is not None:
            self._python, overrides = _venv_settings(virtual_env_context)
        overrides.update(env or {})
        self._env_overrides = overrides
        self._virtual_env_context = virtual_env_context
        _warn_not_a_sandbox()

    @property
    def cleanup_temp_files(self) -> bool:
        """Whether generated code files are deleted after each run."""
        return self._cleanup_temp_files

    @property
    def _delete_generated(self) -> bool:  # type: ignore[override]
        return self._cleanup_temp_files

    def _run_file(self, block: CodeBlock, language: Language, name: str | None, cancel: Cancel) -> BlockResult:
        work_dir = str(self.work_dir)
        if name is None:
            path = os.path.join(work_dir, generated_filename(block.code, language.extension))
        else:
            try:
                path = host_code_path(name, work_dir)
            except FilenameOutsideWorkspace:
                return self._outside_workspace(block.language, name)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="") as handle:
                handle.write(block.code)
        except OSError as exc:  # a directory by that name, a name too long, a full disk...
            return self._not_started(block.language, f"ccexec: cannot write {name or path!r}: {exc.strerror}\n")
        argv = language.argv(path, self._python)
        from ._process import block_environment, run_block

        capture = OutputCapture(self._max_output_bytes, self._on_output)
        started = time.monotonic()
        try:
            outcome = run_block(
                argv,
                cwd=work_dir,
                env=block_environment(self._env_overrides),
                timeout=self._timeout,
                capture=capture,
                cancel=cancel,
            )
        except OSError as exc:
            capture.add_note(f"ccexec: cannot start {argv[0]!r}: {exc.strerror or exc}\n")
            return BlockResult(block.language, 127, capture.text(), path, time.monotonic() - started, False, False)
        exit_code = outcome.exit_code
        if outcome.timed_out:
            exit_code = TIMEOUT_EXIT_CODE
            capture.add_note(f"Timeout: the block ran longer than {self._timeout:g} s and was stopped\n")
        elif outcome.cancelled:
            capture.add_note("Cancelled: the block was stopped before it finished\n")
        elif exit_code < 0:
            capture.add_note(f"ccexec: the process was killed by a signal ({describe_exit(exit_code)})\n")
        return BlockResult(
            language=block.language,
            exit_code=exit_code,
            output=capture.text(),
            code_file=path,
            duration=outcome.duration,
            timed_out=outcome.timed_out,
            truncated=capture.truncated,
        )

    def _can_run(self, language: Language) -> bool:
        import shutil

        return language.command[0] == PYTHON or shutil.which(language.command[0]) is not None

    def _run_setup(self, argv: list[str], write: tuple[str, str] | None, capture: OutputCapture) -> tuple[int, bool]:
        work_dir = str(self.work_dir)
        if write is not None:
            with open(os.path.join(work_dir, write[0]), "w", encoding="utf-8") as handle:
                handle.write(write[1])
        argv = [self._python if part == PYTHON else part for part in argv]
        from ._process import block_environment, run_block

        env = block_environment(self._env_overrides)
        outcome = run_block(argv, cwd=work_dir, env=env, timeout=self._setup_timeout, capture=capture)
        return outcome.exit_code, outcome.timed_out

    def _delete_files(self, paths: list[str]) -> None:
        for path in paths:
            try:
                os.remove(path)
            except FileNotFoundError:
                continue  # the block deleted its own file


def _venv_settings(context: Any) -> tuple[str, dict[str, str | None]]:
    """Return the interpreter and environment overrides for a venv context."""
    env_exe = getattr(context, "env_exe", None)
    bin_path = getattr(context, "bin_path", None)
    if not env_exe or not bin_path:
        raise InvalidArgumentError(
            "virtual_env_context must have env_exe and bin_path attributes "
            "(use ccexec.create_virtual_env or venv.EnvBuilder.ensure_directories)"
        )
    if not os.path.exists(env_exe):
        raise InvalidArgumentError(
            f"the virtual environment's interpreter {env_exe!r} does not exist; create the venv first",
            env_exe=env_exe,
        )
    env_dir = getattr(context, "env_dir", None) or os.path.dirname(str(bin_path))
    path = os.pathsep.join([str(bin_path), os.environ.get("PATH", "")])
    # As activating a venv does (its bin first, VIRTUAL_ENV set, PYTHONHOME dropped), and
    # PYTHONPATH dropped too, so the host's packages do not leak into the venv's Python.
    return str(env_exe), {"PATH": path, "VIRTUAL_ENV": str(env_dir), "PYTHONHOME": None, "PYTHONPATH": None}
