"""The one block loop every executor runs: argument checks, lifecycle, async; it holds a Backend.

A call's blocks are checked and named here, sent to the backend at once (each chained after
the one before), and the backend's ends become results with ccexec's notes.
The public executor classes only turn their options into a backend.
"""

from __future__ import annotations

import os

from .blocks import (
    CodeBlock,
    Language,
    coerce_blocks,
    language_table,
)
from .errors import InvalidArgumentError
from .results import TIMEOUT_EXIT_CODE, BlockResult, CommandLineCodeResult

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import time matters)
if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType
    from typing import Any, Mapping, Sequence

    from typing_extensions import Self

    from ._capture import OutputCallback
    from ._client import Cancel
    from .backends import Backend

#: Default cap on the output kept per block, in bytes (head and tail are kept).
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20
#: Default cap on the file bytes one ``copy_from`` writes on the host (a block's huge file must not fill the disk).
DEFAULT_MAX_COPY_BYTES = 1 << 30
#: Blocks a fork server forks before it is replaced, when ``fork_server_max_blocks`` is None.
FORK_SERVER_UNLIMITED = (1 << 31) - 1


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
        import threading  # here, not at import time (see benchmarks/footprint.py)

        from ._client import RunningCalls

        self._setup_timeout = _check_arguments(timeout, functions, functions_module, max_output_bytes, setup_timeout)
        self._timeout, self._max_output_bytes, self._on_output = float(timeout), max_output_bytes, on_output
        self._functions, self._functions_module = list(functions), functions_module
        self._functions_ready, self._setup_lock = not functions, threading.Lock()
        self._languages = language_table(languages)
        self._work_dir = WorkDir(work_dir)
        self._lock, self._calls = threading.RLock(), RunningCalls()
        self._delete_generated = delete_generated
        self._backend: Backend | None = None
        #: Whether each call lists the files it changed (``result.files``); one walk of the work dir per call.
        self.list_files = True
        self._fork_server = 0  # the requests' fork_server field (see fork_server_setting)

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

        tags = sorted(
            tag
            for tag, language in self._languages.items()
            if tag == _primary_tag(self._languages, language) and self._can_run(language)
        )
        from .functions import system_message

        functions = self.format_functions_for_prompt() if self._functions else None
        return system_message(tags, self._work_dir_for_code(), self._timeout, TIMEOUT_EXIT_CODE, functions)

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
        return self._work_dir.path()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether ``start()`` (or a first execution) has run and ``stop()`` has not since."""
        return self._backend is not None

    def start(self) -> None:
        """Create the work dir and start the backend (the supervisor, the container) if not running.

        Optional: the first execution does it too. Raises a CcexecError saying why it cannot.
        """
        self._work_dir.create()
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

    def stop(self) -> None:
        """Stop running blocks (their processes are killed) and remove a temporary work dir."""
        self._cancel_running()
        self._release_backend()
        if self._work_dir.remove_temporary():
            self._functions_ready = not self._functions

    def restart(self) -> None:
        """Kill running blocks and start afresh, keeping the work dir."""
        self._cancel_running()
        self._release_backend()
        self.start()

    def _cancel_running(self) -> None:
        """Cancel the running calls and wait (bounded) until they have returned their results."""
        from ._protocol import END_GRACE

        self._calls.cancel_all(END_GRACE)

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
        from ._client import in_thread_cancellable

        blocks = coerce_blocks(code_blocks)
        return await in_thread_cancellable(lambda cancel: self._execute(blocks, cancel))

    def _execute(
        self,
        blocks: list[CodeBlock],
        cancel: Cancel | None,
        *,
        on_output: OutputCallback = None,
        timeout: float | None = None,
    ) -> CommandLineCodeResult:
        """Run the blocks; ``on_output`` and ``timeout``, when given, replace the executor's for this call."""
        from ._client import Cancel

        backend = self._live_backend()
        cancel = cancel or Cancel()
        with self._calls.track(cancel):
            return self._run_blocks(backend, blocks, cancel, on_output or self._on_output, timeout or self._timeout)

    def _run_blocks(
        self, backend: Backend, blocks: list[CodeBlock], cancel: Cancel, on_output: OutputCallback, timeout: float
    ) -> CommandLineCodeResult:
        """Plan the blocks, run them chained (generated files deleted as each ends), stop at the first failure."""
        import contextlib

        from ._capture import OutputCapture
        from .blocks import plan
        from .results import block_result

        env, clear_env = self._block_env()
        planned, refusal = plan(
            blocks, self._languages, backend.code_dir(), timeout, env, clear_env, self._delete_generated,
            self._fork_server,
        )  # fmt: skip
        captures = [OutputCapture(self._max_output_bytes, on_output) for _ in planned]
        results: list[BlockResult] = []
        listing = backend.files.watch() if self.list_files else None
        with contextlib.closing(backend.run([p.request for p in planned], captures, cancel)) as ends:
            for step, capture, end in zip(planned, captures, ends):
                code_file, signals = backend.code_file(step.relative), backend.negative_signals
                results.append(block_result(step.block, end, capture, code_file, timeout, signals))
                if results[-1].exit_code != 0:
                    break
            else:
                if refusal is not None and not cancel.is_set():
                    language, message = refusal
                    if on_output is not None:
                        on_output(message.encode("utf-8"))  # streamed like any output
                    results.append(BlockResult(language, 1, message, None))
        result = CommandLineCodeResult.from_blocks(results)
        if listing is not None and not cancel.is_set():
            skip = {step.relative for step in planned}
            if self._functions:
                skip.add(f"{self._functions_module}.py")
            files, result.files_truncated = listing(skip)
            result.files = tuple(files)
        return result

    # -- files -----------------------------------------------------------------------------------

    def copy_to(self, host_path: str | os.PathLike[str], dest: str | os.PathLike[str] = ".") -> list[str]:
        """Copy a host file or directory into the work dir; return the work-dir-relative names written.

        ``dest`` is relative to the work dir: the path the copy gets, or with a trailing ``/``
        (or ``.``) the directory it goes into under its own name; missing folders are made and
        existing files replaced. Raises WorkPathError (``dest`` leaves the work dir, or goes
        through a symlink), WorkFileNotFoundError (no ``host_path``).
        """
        return self._live_backend().files.copy_to(host_path, dest)

    def copy_from(
        self,
        path: str | os.PathLike[str],
        host_dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        max_bytes: int = DEFAULT_MAX_COPY_BYTES,
    ) -> list[str]:
        """Copy a file or directory of the work dir to the host; return the work-dir-relative names copied.

        ``host_dest`` is the path the copy gets, or with a trailing ``/`` the directory it goes
        into. Symlinks are copied as links only when they lead to a name inside the copy; any
        other makes the copy fail (UnsafeFileError), as devices and fifos do. Raises
        HostPathExistsError when ``host_dest`` exists and not ``overwrite``, CopyTooLargeError
        past ``max_bytes`` of file data, WorkPathError, WorkFileNotFoundError; a failed copy
        leaves nothing it created behind.
        """
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
            raise InvalidArgumentError(f"max_bytes must be an int >= 0, got {max_bytes!r}")
        return self._live_backend().files.copy_from(path, host_dest, overwrite=overwrite, max_bytes=max_bytes)

    async def acopy_to(self, host_path: str | os.PathLike[str], dest: str | os.PathLike[str] = ".") -> list[str]:
        """``copy_to`` in a worker thread, not blocking the event loop."""
        import asyncio

        return await asyncio.to_thread(self.copy_to, host_path, dest)

    async def acopy_from(
        self,
        path: str | os.PathLike[str],
        host_dest: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        max_bytes: int = DEFAULT_MAX_COPY_BYTES,
    ) -> list[str]:
        """``copy_from`` in a worker thread, not blocking the event loop."""
        import asyncio

        return await asyncio.to_thread(self.copy_from, path, host_dest, overwrite=overwrite, max_bytes=max_bytes)

    def _block_env(self) -> tuple[dict[str, str], bool]:
        """The blocks' environment: (variables, whether they replace the supervisor's)."""
        raise NotImplementedError

    def _ensure_functions(self, backend: Backend) -> None:
        """Write the functions module, pip-install its packages and check it imports, once per backend.

        Raises FunctionSetupError (a ValueError) with pip's or Python's output on failure.
        """
        if not self._functions_ready:
            from .functions import install

            with self._setup_lock:
                if not self._functions_ready:  # another thread may have done it meanwhile
                    env = self._block_env()
                    install(self._functions, self._functions_module, backend, env, self._setup_timeout)
                    self._functions_ready = True


class WorkDir:
    """The executor's work dir: the one given (made absolute), or a temporary one made on first use."""

    def __init__(self, given: str | os.PathLike[str] | None) -> None:
        import threading

        # Absolute now: children run with the work dir as cwd, and docker reads a relative
        # mount source as a named volume.
        self._given = None if given is None else _path(given).absolute()
        self._temp: Any = None  # tempfile.TemporaryDirectory when none was given
        self._lock = threading.Lock()

    def path(self) -> Path:
        """The work dir's path (a temporary directory is made here, when none was given)."""
        with self._lock:
            if self._given is not None:
                return self._given
            if self._temp is None:
                import tempfile

                self._temp = tempfile.TemporaryDirectory(prefix="ccexec-")
            return _path(self._temp.name)

    def create(self) -> None:
        """Create it and its missing parents; raise InvalidArgumentError when that is not possible."""
        work_dir = self.path()
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidArgumentError(
                f"cannot create work_dir {str(work_dir)!r}: {exc.strerror}; pass a writable directory as work_dir"
            ) from exc
        if not work_dir.is_dir():
            raise InvalidArgumentError(f"work_dir {str(work_dir)!r} is not a directory")

    def remove_temporary(self) -> bool:
        """Remove the temporary work dir, if one was made; return whether one was."""
        with self._lock:
            temp, self._temp = self._temp, None
        if temp is not None:
            temp.cleanup()
        return temp is not None


def _primary_tag(table: Mapping[str, Language], language: Language) -> str:
    """The first tag naming ``language`` (``python`` rather than ``py``)."""
    return next(tag for tag, value in table.items() if value is language)


def _path(value: str | os.PathLike[str]) -> Path:
    from pathlib import Path  # here: pathlib is slow to import and most calls never need it

    return Path(value)


async def _in_thread(func: Any) -> None:
    import asyncio

    await asyncio.get_running_loop().run_in_executor(None, func)


def fork_server_setting(fork_server: bool, max_blocks: int | None) -> int:
    """The requests' ``fork_server`` field: 0 (spawn), else blocks per server; raises InvalidArgumentError."""
    if not isinstance(fork_server, bool):
        raise InvalidArgumentError(f"fork_server must be True or False, got {fork_server!r}")
    if max_blocks is not None and (not isinstance(max_blocks, int) or isinstance(max_blocks, bool) or max_blocks < 1):
        raise InvalidArgumentError(
            f"fork_server_max_blocks must be a positive int or None, got {max_blocks!r} "
            "(the blocks one server forks before it is replaced by a new one)"
        )
    if not fork_server:
        return 0
    return FORK_SERVER_UNLIMITED if max_blocks is None else min(max_blocks, FORK_SERVER_UNLIMITED)


def _check_arguments(
    timeout: float, functions: Sequence[Any], functions_module: str, max_output_bytes: int, setup_timeout: float | None
) -> float:
    """Raise InvalidArgumentError for a bad argument; return the setup timeout to use."""
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 1:
        raise InvalidArgumentError(
            f"Timeout must be greater than or equal to 1. Got timeout={timeout!r} (seconds per block)"
        )
    if not isinstance(functions_module, str) or not functions_module.isidentifier():
        raise InvalidArgumentError(
            f"Module name must be a valid Python identifier: functions_module={functions_module!r} "
            "is the module blocks import the user functions from (e.g. 'functions')",
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
    return float(setup_timeout)
