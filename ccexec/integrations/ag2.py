"""ccexec's executors as AG2 code executors (the ``autogen.coding.CodeExecutor`` protocol).

``ConversableAgent("runner", llm_config=False, code_execution_config={"executor": LocalCommandLineCodeExecutor()})``.
Needs ``pip install ag2``; ccexec itself still needs nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import ccexec
from ccexec.executor import BaseCommandLineExecutor


def _import_ag2() -> tuple[Any, Any, Any]:
    """AG2's content_str, CodeBlock and CommandLineCodeResult, or an ImportError saying what to install."""
    try:
        from autogen.code_utils import content_str
        from autogen.coding.base import CodeBlock, CommandLineCodeResult
    except ImportError as exc:
        raise ImportError(f"ccexec.integrations.ag2 needs AG2 ({exc}): pip install ag2") from exc
    return content_str, CodeBlock, CommandLineCodeResult


# The framework is imported in a function: ccexec's packaging test allows no module-level import of it.
if TYPE_CHECKING:
    from types import TracebackType

    from autogen.code_utils import content_str
    from autogen.coding.base import CodeBlock, CommandLineCodeResult
    from typing_extensions import Self
else:
    content_str, CodeBlock, CommandLineCodeResult = _import_ag2()

__all__ = ["CodeExtractor", "DockerCommandLineCodeExecutor", "LocalCommandLineCodeExecutor"]


class CodeExtractor:
    """Extract code blocks from a message with ``ccexec.extract_code_blocks``."""

    def extract_code_blocks(self, message: str | list[Any] | None) -> list[CodeBlock]:
        """Return the message's fenced code blocks as AG2 CodeBlocks."""
        text = content_str(message)
        return [CodeBlock(code=block.code, language=block.language) for block in ccexec.extract_code_blocks(text)]


class _CcexecCodeExecutor:
    """An AG2 code executor that runs blocks with a ccexec executor (``.executor``)."""

    def __init__(self, executor: BaseCommandLineExecutor) -> None:
        self.executor = executor
        self._extractor = CodeExtractor()

    @property
    def code_extractor(self) -> CodeExtractor:
        """What finds the code blocks in a message."""
        return self._extractor

    @property
    def work_dir(self) -> Path:
        """The work dir."""
        return self.executor.work_dir

    @property
    def timeout(self) -> float:
        """Seconds each block may run."""
        return self.executor.timeout

    def code_writer_system_message(self) -> str:
        """A system message telling a code-writing agent how its code is run."""
        return self.executor.code_writer_system_message()

    def execute_code_blocks(self, code_blocks: list[CodeBlock]) -> CommandLineCodeResult:
        """Run the blocks in order, stopping at the first that fails."""
        result = self.executor.execute_code_blocks([ccexec.CodeBlock(b.code, b.language) for b in code_blocks])
        return CommandLineCodeResult(exit_code=result.exit_code, output=result.output, code_file=result.code_file)

    def restart(self) -> None:
        """Kill running code and start afresh, keeping the work dir."""
        self.executor.restart()

    def stop(self) -> None:
        """Kill running code, stop the container, remove a temporary work dir."""
        self.executor.stop()

    def __enter__(self) -> Self:
        self.executor.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.executor.stop()


class LocalCommandLineCodeExecutor(_CcexecCodeExecutor):
    """``ccexec.LocalCommandLineCodeExecutor`` (same arguments) as an AG2 code executor."""

    executor: ccexec.LocalCommandLineCodeExecutor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(ccexec.LocalCommandLineCodeExecutor(*args, **kwargs))


class DockerCommandLineCodeExecutor(_CcexecCodeExecutor):
    """``ccexec.DockerCommandLineCodeExecutor`` (same arguments) as an AG2 code executor."""

    executor: ccexec.DockerCommandLineCodeExecutor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(ccexec.DockerCommandLineCodeExecutor(*args, **kwargs))
