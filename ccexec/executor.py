"""The one block loop every executor runs: argument checks, lifecycle, async; it holds a Backend.

A call's blocks are checked and named here, sent to the backend at once (each chained after
the one before), and the backend's ends become results with ccexec's notes.
The public executor classes only turn their options into a backend.
"""

from __future__ import annotations

import os

from .blocks import (
    CodeBlock,
    FilenameOutsideWorkspace,
    Language,
    coerce_blocks,
    container_relative_path,
    generated_filename,
    language_table,
    normalize_tag,
    requested_filename,
)
from .errors import FunctionSetupError, InvalidArgumentError
from .results import TIMEOUT_EXIT_CODE, BlockResult, CommandLineCodeResult, describe_exit

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import time matters)
if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType
    from typing import Any, Mapping, Sequence

    from typing_extensions import Self

    from ._capture import OutputCallback, OutputCapture
    from ._client import Cancel
    from ._protocol import BlockEnd
    from .backends import Backend

#: Default cap on the output kept per block, in bytes (head and tail are kept).
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20


class BaseCommandLineExecutor:
    """Run code blocks one file per block, one process per file; subclasses say where."""

    def __init__(
        self,
        *,
        timeout: float,
        work_dir: str | os.PathLike[str] | None,
        functions: Sequence[Any],
        functions_module: str,
        languages: Mapping[str, Language] | None,
        max_output_bytes: int,
        on_output: OutputCallback,
        setup_timeout: float | None,
        delete_generated: bool,
    ) -> None:
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 1:
            raise InvalidArgumentError(f"timeout must be a number of seconds >= 1, got {timeout!r}")
        if not isinstance(functions_module, str) or not functions_module.isidentifier():
            raise InvalidArgumentError(
                f"functions_module must be a valid Python identifier, got {functions_module!r}",
            )
        if not isinstance(max_output_bytes, int) or max_output_bytes < 1:
            raise InvalidArgumentError(
                f"max_output_bytes must be a positive int, got {max_output_bytes!r}",
            )
        if isinstance(functions, (str, bytes)) or not all(callable(f) or hasattr(f, "func") for f in functions):
            raise InvalidArgumentError(
                "functions must be a list of functions, FunctionWithRequirements or "
                "FunctionWithRequirements.from_str(...) objects"
            )
        setup_timeout = timeout if setup_timeout is None else setup_timeout  # AutoGen uses the block timeout
        if not isinstance(setup_timeout, (int, float)) or setup_timeout <= 0:
            raise InvalidArgumentError(f"setup_timeout must be a positive number, got {setup_timeout!r}")
        self._setup_timeout = float(setup_timeout)
        self._functions_ready = not functions
        import threading  # here, not at import time (see benchmarks/footprint.py)

        self._setup_lock = threading.Lock()
        self._timeout = float(timeout)
        self._functions = list(functions)
        self._functions_module = functions_module
        self._languages = language_table(languages)
        self._max_output_bytes = max_output_bytes
        self._on_output = on_output
        # Absolute now: children run with the work dir as cwd, and docker reads a relative
        # mount source as a named volume.
        self._requested_work_dir = None if work_dir is None else _path(work_dir).absolute()
        self._temp_dir: Any = None  # tempfile.TemporaryDirectory when work_dir is None
        self._lock = threading.RLock()
        self._idle = threading.Condition(self._lock)  # notified when a call ends
        self._running: set[Cancel] = set()
        self._delete_generated = delete_generated
        self._backend: Backend | None = None

    # -- properties (AutoGen names) --------------------------------------------------------

    @property
    def timeout(self) -> float:
        """Seconds each block may run."""
        return self._timeout

    @property
    def functions_module(self) -> str:
        """The module name code imports user functions from."""
        return self._functions_module

    @property
    def functions(self) -> list[str]:
        """Names of the user functions blocks can import from ``functions_module``."""
        from .functions import function_name

        return [function_name(function) for function in self._functions]

    def format_functions_for_prompt(self, template: str | None = None) -> str:
        """Return a prompt listing the functions' stubs and how to import them.

        ``template`` may use ``$module_name`` and ``$functions`` (AutoGen's placeholders).
        """
        from .functions import FUNCTIONS_PROMPT_TEMPLATE, format_functions_for_prompt

        return format_functions_for_prompt(
            self._functions, self._functions_module, template or FUNCTIONS_PROMPT_TEMPLATE
        )

    def code_writer_system_message(self) -> str:
        """Return a system message telling a code-writing agent how this executor runs its code."""
        from .results import TIMEOUT_EXIT_CODE

        tags = sorted(
            tag
            for tag, language in self._languages.items()
            if tag == _primary_tag(self._languages, language) and self._can_run(language)
        )
        lines = [
            "You solve tasks by writing code that is run for you. Put each program in a fenced code block "
            f"tagged with its language; the languages you can use are: {', '.join(tags)}.",
            "Each block is saved to a file and run in a NEW process, in order, stopping at the first block "
            "that fails. Nothing is shared between blocks except files: to pass data on, write it to a file.",
            f"Every block runs with the working directory {self._work_dir_for_code()}. To choose the file "
            "name of a block, make its first line a comment like `# filename: name.py`; the name must stay "
            "inside the working directory.",
            f"Each block may run for {self._timeout:g} seconds; then it is stopped (exit code "
            f"{TIMEOUT_EXIT_CODE}). Standard input is closed: do not ask for input. Print what you need to see; "
            "you will get the output and the exit code back.",
            "Write complete programs, not fragments to fill in; if a block fails, read the error and send a "
            "corrected block.",
        ]
        if self._functions:
            lines.append(self.format_functions_for_prompt())
        return "\n\n".join(lines)

    def _work_dir_for_code(self) -> str:
        """The work dir as the code sees it."""
        return str(self.work_dir)

    def _can_run(self, language: Language) -> bool:
        """Whether the language's program is there (so the system message may offer it)."""
        return True

    @property
    def languages(self) -> list[str]:
        """Language tags this executor accepts (aliases included)."""
        return sorted(self._languages)

    @property
    def work_dir(self) -> Path:
        """The work dir (a temporary one, created on first use, when none was given)."""
        with self._lock:
            if self._requested_work_dir is not None:
                return self._requested_work_dir
            if self._temp_dir is None:
                import tempfile

                self._temp_dir = tempfile.TemporaryDirectory(prefix="ccexec-")
            return _path(self._temp_dir.name)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Create the work dir and start the backend (the supervisor, the container) if not running.

        Optional: the first execution does it too. Raises a CcexecError saying why it cannot.
        """
        self._prepare_work_dir()
        with self._lock:
            if self._backend is not None and self._backend.alive:
                return
            if self._backend is not None:  # its supervisor or container died: release what is left
                self._backend.stop()
            self._backend = self._new_backend()
            self._functions_ready = not self._functions  # a new supervisor may be a new container
            try:
                self._backend.start()
            except BaseException:
                self._backend.stop()
                self._backend = None
                raise

    def _prepare_work_dir(self) -> None:
        work_dir = self.work_dir
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidArgumentError(
                f"cannot create work_dir {str(work_dir)!r}: {exc.strerror}; pass a writable directory as work_dir",
            ) from exc
        if not work_dir.is_dir():
            raise InvalidArgumentError(f"work_dir {str(work_dir)!r} is not a directory")

    def stop(self) -> None:
        """Stop running blocks (their processes are killed) and remove a temporary work dir."""
        self._cancel_running()
        self._release_backend()
        with self._lock:
            if self._temp_dir is not None:
                self._functions_ready = not self._functions
                self._temp_dir.cleanup()
                self._temp_dir = None

    def restart(self) -> None:
        """Kill running blocks and start afresh, keeping the work dir."""
        self._cancel_running()
        self._release_backend()
        self.start()

    def _cancel_running(self) -> None:
        """Cancel the running calls and wait (bounded) until they have returned their results."""
        from ._protocol import END_GRACE

        with self._lock:
            running = list(self._running)
        for cancel in running:
            cancel.set()
        with self._idle:
            self._idle.wait_for(lambda: not self._running, END_GRACE)

    def _release_backend(self) -> None:
        with self._lock:
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.stop()

    def _live_backend(self) -> Backend:
        """The backend, started (again, if its supervisor or container died); user functions set up."""
        backend = self._backend
        if backend is None or not backend.alive:
            self.start()
            backend = self._backend
            assert backend is not None
        self._ensure_functions(backend)
        return backend

    def _new_backend(self) -> Backend:
        """Make the backend blocks run on (not started yet)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await _in_thread(self.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await _in_thread(self.stop)

    # -- execution ---------------------------------------------------------------------------

    def execute_code_blocks(self, code_blocks: Sequence[CodeBlock]) -> CommandLineCodeResult:
        """Run the blocks in order, stopping at the first that exits non-zero.

        Returns the combined result; raises only for ccexec's own failures (see ccexec.errors).
        """
        return self._execute(coerce_blocks(code_blocks), None)

    async def aexecute_code_blocks(self, code_blocks: Sequence[CodeBlock]) -> CommandLineCodeResult:
        """Run the blocks without blocking the event loop.

        Cancelling the awaiting task kills the running block's processes, then re-raises.
        """
        import asyncio
        import contextlib

        from ._client import Cancel

        blocks = coerce_blocks(code_blocks)
        cancel = Cancel()
        future = asyncio.get_running_loop().run_in_executor(None, self._execute, blocks, cancel)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            cancel.set()
            # Wait until the code is really dead before letting the cancellation go on.
            while not future.done():
                with contextlib.suppress(BaseException):  # the worker's outcome is moot now
                    await asyncio.shield(future)
            raise

    def _execute(self, blocks: list[CodeBlock], cancel: Cancel | None) -> CommandLineCodeResult:
        from ._client import Cancel

        backend = self._live_backend()
        cancel = cancel or Cancel()
        with self._lock:
            self._running.add(cancel)
        try:
            return self._run_blocks(backend, blocks, cancel)
        finally:
            with self._idle:
                self._running.discard(cancel)
                self._idle.notify_all()

    def _run_blocks(self, backend: Backend, blocks: list[CodeBlock], cancel: Cancel) -> CommandLineCodeResult:
        """Plan the blocks, run them chained, stop at the first failure; delete generated files."""
        import contextlib

        from ._capture import OutputCapture
        from ._protocol import RunRequest

        planned: list[tuple[CodeBlock, str, bool]] = []
        requests: list[RunRequest] = []
        refusal: tuple[str, str] | None = None  # (language, why): the first block that cannot start ends the plan
        env, clear_env = self._block_env()
        for block in blocks:
            language = self._languages.get(normalize_tag(block.language))
            name = requested_filename(block.code)
            if language is None:
                refusal = (block.language, f"unknown language {block.language}\n")
                break
            try:
                relative = (
                    generated_filename(block.code, language.extension)
                    if name is None
                    else self._relative(name, backend.code_dir())
                )
            except FilenameOutsideWorkspace:
                refusal = (block.language, f"Filename is not in the workspace: {name!r}\n")
                break
            planned.append((block, relative, name is None))
            argv = language.argv("{file}", "{python}")
            requests.append(RunRequest(0, argv, self._timeout, env, clear_env, relative, block.code))
        captures = [OutputCapture(self._max_output_bytes, self._on_output) for _ in planned]
        results: list[BlockResult] = []
        generated: list[str] = []
        try:
            with contextlib.closing(backend.run(requests, captures, cancel)) as ends:
                for (block, relative, is_generated), capture, end in zip(planned, captures, ends):
                    results.append(self._result(backend, block, relative, capture, end))
                    if is_generated and not end.not_started:
                        generated.append(relative)
                    if results[-1].exit_code != 0:
                        break
                else:
                    if refusal is not None and not cancel.is_set():
                        results.append(self._not_started(*refusal))
        finally:
            if generated and self._delete_generated and backend.alive:
                backend.delete(generated)
        return CommandLineCodeResult.from_blocks(results)

    @staticmethod
    def _relative(name: str, code_dir: str) -> str:
        """A ``# filename:`` as a path relative to the work dir, lexically; raises FilenameOutsideWorkspace.

        Symlinks are not resolved here: the supervisor writes without following any.
        """
        real = os.path.realpath(code_dir)
        if name.startswith("/") and real != code_dir and name.startswith(real.rstrip("/") + "/"):
            return container_relative_path(name, real)
        return container_relative_path(name, code_dir)

    def _result(
        self, backend: Backend, block: CodeBlock, relative: str, capture: OutputCapture, end: BlockEnd
    ) -> BlockResult:
        """Turn the supervisor's report into a BlockResult, with ccexec's notes."""
        if end.not_started:
            return BlockResult(block.language, end.exit_code or 1, capture.text(), None, end.duration)
        exit_code = 1 if end.exit_code is None and end.signal is None else end.exit_code or 0
        if end.signal is not None:
            exit_code = -end.signal if backend.negative_signals else 128 + end.signal
        if end.note:
            capture.add_note(end.note)
        if end.timed_out:
            exit_code = TIMEOUT_EXIT_CODE
            capture.add_note(f"Timeout: the block ran longer than {self._timeout:g} s and was stopped\n")
        elif end.cancelled:
            capture.add_note("Cancelled: the block was stopped before it finished\n")
        elif end.oom:
            capture.add_note("ccexec: the process was killed: out of memory (the container's memory limit)\n")
        elif end.signal is not None:
            capture.add_note(f"ccexec: the process was killed by a signal ({describe_exit(exit_code)})\n")
        return BlockResult(
            language=block.language,
            exit_code=exit_code,
            output=capture.text(),
            code_file=backend.code_file(relative),
            duration=end.duration,
            timed_out=end.timed_out,
            truncated=capture.truncated,
        )

    def _block_env(self) -> tuple[dict[str, str], bool]:
        """The blocks' environment: (variables, whether they replace the supervisor's)."""
        raise NotImplementedError

    def _not_started(self, language: str, message: str) -> BlockResult:
        """Return (and stream) the result of a block that never started."""
        if self._on_output is not None:
            self._on_output(message.encode("utf-8"))
        return BlockResult(language=language, exit_code=1, output=message, code_file=None)

    def _ensure_functions(self, backend: Backend) -> None:
        """Write the functions module, pip-install its packages and check it imports, once.

        Raises FunctionSetupError (a ValueError) with pip's or Python's output on failure.
        """
        if not self._functions_ready:
            with self._setup_lock:
                if not self._functions_ready:  # another thread may have done it meanwhile
                    self._install_functions(backend)

    def _install_functions(self, backend: Backend) -> None:
        from .blocks import PYTHON
        from .functions import module_source, required_packages

        try:
            source = module_source(self._functions)
        except ValueError as exc:
            raise FunctionSetupError(str(exc)) from exc
        packages = required_packages(self._functions)
        if packages:
            pip = [PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *packages]
            self._setup_step(backend, pip, None, f"pip install {' '.join(packages)}")
        module_file = (f"{self._functions_module}.py", source)
        check = [PYTHON, "-c", f"import {self._functions_module}"]
        self._setup_step(backend, check, module_file, f"import {self._functions_module}")
        self._functions_ready = True

    def _setup_step(self, backend: Backend, argv: list[str], write: tuple[str, str] | None, what: str) -> None:
        """Run one setup command on the backend (writing ``write`` = (name, text) first); raise if it fails."""
        from ._capture import OutputCapture
        from ._client import Cancel
        from ._protocol import RunRequest

        capture = OutputCapture(self._max_output_bytes)
        env, clear_env = self._block_env()
        path, code = write if write is not None else (None, "")
        request = RunRequest(0, argv, self._setup_timeout, env, clear_env, path, code)
        ends = backend.run([request], [capture], Cancel())
        end = next(ends)
        ends.close()
        output = capture.text().strip()
        if end.timed_out:
            raise FunctionSetupError(
                f"`{what}` did not finish within setup_timeout={self._setup_timeout:g} s and was killed; "
                f"raise setup_timeout or preinstall the packages. Output:\n{output}",
                output=output,
            )
        if end.exit_code != 0:
            exit_code = end.exit_code if end.exit_code is not None else 128 + (end.signal or 0)
            hint = ""
            if "No module named pip" in output:
                hint = " The interpreter has no pip: use a venv made with_pip=True or an image with pip."
            raise FunctionSetupError(
                f"`{what}` failed with exit code {exit_code} while setting up the user functions.{hint} "
                f"Output:\n{output}",
                output=output,
                exit_code=exit_code,
            )


def _primary_tag(table: Mapping[str, Language], language: Language) -> str:
    """The first tag naming ``language`` (``python`` rather than ``py``)."""
    return next(tag for tag, value in table.items() if value is language)


def _path(value: str | os.PathLike[str]) -> Path:
    from pathlib import Path  # here: pathlib is slow to import and most calls never need it

    return Path(value)


async def _in_thread(func: Any) -> None:
    import asyncio

    await asyncio.get_running_loop().run_in_executor(None, func)
