"""What both executors share: argument checks, the block loop, lifecycle and the async API."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .blocks import CodeBlock, Language, coerce_blocks, language_table, normalize_tag, requested_filename
from .errors import InvalidArgumentError
from .results import BlockResult, CommandLineCodeResult

if TYPE_CHECKING:
    from typing_extensions import Self

    from ._capture import OutputCallback
    from ._process import Cancel

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
    ) -> None:
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout < 1:
            raise InvalidArgumentError(f"timeout must be a number of seconds >= 1, got {timeout!r}", timeout=timeout)
        if not isinstance(functions_module, str) or not functions_module.isidentifier():
            raise InvalidArgumentError(
                f"functions_module must be a valid Python identifier, got {functions_module!r}",
                functions_module=functions_module,
            )
        if not isinstance(max_output_bytes, int) or max_output_bytes < 1:
            raise InvalidArgumentError(
                f"max_output_bytes must be a positive int, got {max_output_bytes!r}",
                max_output_bytes=max_output_bytes,
            )
        if functions:
            raise InvalidArgumentError(
                "functions= is not supported by this version of ccexec yet; "
                "pass the functions' source as a code block or write the module yourself"
            )
        self._timeout = float(timeout)
        self._functions = list(functions)
        self._functions_module = functions_module
        self._languages = language_table(languages)
        self._max_output_bytes = max_output_bytes
        self._on_output = on_output
        # Absolute now: children run with the work dir as cwd, and docker reads a relative
        # mount source as a named volume.
        self._requested_work_dir = None if work_dir is None else Path(work_dir).absolute()
        self._temp_dir: Any = None  # tempfile.TemporaryDirectory when work_dir is None
        self._lock = threading.RLock()
        self._running: set[Cancel] = set()

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
            return Path(self._temp_dir.name)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Prepare the executor; optional, the first execution does it too."""
        work_dir = self.work_dir
        try:
            work_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidArgumentError(
                f"cannot create work_dir {str(work_dir)!r}: {exc.strerror}; pass a writable directory as work_dir",
                work_dir=str(work_dir),
            ) from exc
        if not work_dir.is_dir():
            raise InvalidArgumentError(f"work_dir {str(work_dir)!r} is not a directory", work_dir=str(work_dir))

    def stop(self) -> None:
        """Stop running blocks (their processes are killed) and remove a temporary work dir."""
        self._cancel_running()
        self._close_engine()
        with self._lock:
            if self._temp_dir is not None:
                self._temp_dir.cleanup()
                self._temp_dir = None

    def restart(self) -> None:
        """Kill running blocks and start afresh, keeping the work dir."""
        self._cancel_running()
        self._close_engine()
        self.start()

    def _cancel_running(self) -> None:
        with self._lock:
            running = list(self._running)
        for cancel in running:
            cancel.set()

    def _close_engine(self) -> None:
        """Release what start() acquired beyond the work dir (a container); none locally."""

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

        from ._process import Cancel

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
        from ._process import Cancel

        self._ensure_started()
        own_cancel = cancel is None
        cancel = cancel or Cancel()
        with self._lock:
            self._running.add(cancel)
        results: list[BlockResult] = []
        generated: list[str] = []
        try:
            for block in blocks:
                if cancel.is_set():
                    break
                result, is_generated = self._run_one(block, cancel)
                results.append(result)
                if is_generated and result.code_file is not None:
                    generated.append(result.code_file)
                if result.exit_code != 0:
                    break
        finally:
            with self._lock:
                self._running.discard(cancel)
            if own_cancel:
                cancel.close()
            if generated and self._delete_generated:
                self._delete_files(generated)
        return CommandLineCodeResult.from_blocks(results)

    def _run_one(self, block: CodeBlock, cancel: Cancel) -> tuple[BlockResult, bool]:
        tag = normalize_tag(block.language)
        language = self._languages.get(tag)
        if language is None:
            return self._not_started(block.language, f"unknown language {block.language}\n"), False
        name = requested_filename(block.code)
        return self._run_file(block, language, name, cancel), name is None

    def _not_started(self, language: str, message: str) -> BlockResult:
        """Return (and stream) the result of a block that never started."""
        if self._on_output is not None:
            self._on_output(message.encode("utf-8"))
        return BlockResult(language=language, exit_code=1, output=message, code_file=None)

    def _outside_workspace(self, language: str, name: str) -> BlockResult:
        """Return the result for a ``# filename:`` that escapes the work dir."""
        return self._not_started(language, f"Filename is not in the workspace: {name!r}\n")

    def _ensure_started(self) -> None:
        """Run start() once before the first block; subclasses track their own state."""
        self.start()

    # -- what subclasses provide -------------------------------------------------------------

    _delete_generated = True

    def _run_file(self, block: CodeBlock, language: Language, name: str | None, cancel: Cancel) -> BlockResult:
        """Write ``block`` to its file (``name`` or a generated one), run it, return the result."""
        raise NotImplementedError

    def _delete_files(self, paths: list[str]) -> None:
        """Remove generated code files after a run."""
        raise NotImplementedError


async def _in_thread(func: Any) -> None:
    import asyncio

    await asyncio.get_running_loop().run_in_executor(None, func)
