"""ccexec's executors as AutoGen code executors (``autogen_core.code_executor.CodeExecutor``).

``CodeExecutorAgent("runner", code_executor=LocalCommandLineCodeExecutor(work_dir="coding"))``.
Needs ``pip install autogen-agentchat autogen-ext``; ccexec itself still needs nothing.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ccexec
from ccexec.executor import BaseCommandLineExecutor


def _import_autogen() -> tuple[Any, Any]:
    """AutoGen's CodeExecutor and CommandLineCodeResult, or an ImportError saying what to install."""
    try:
        from autogen_core.code_executor import CodeExecutor
        from autogen_ext.code_executors._common import CommandLineCodeResult
    except ImportError as exc:
        raise ImportError(
            f"ccexec.integrations.autogen needs AutoGen ({exc}): pip install autogen-agentchat autogen-ext"
        ) from exc
    return CodeExecutor, CommandLineCodeResult


# The framework is imported in a function: ccexec's packaging test allows no module-level import of it.
if TYPE_CHECKING:
    from autogen_core import CancellationToken
    from autogen_core.code_executor import CodeBlock, CodeExecutor
    from autogen_ext.code_executors._common import CommandLineCodeResult
else:
    CodeExecutor, CommandLineCodeResult = _import_autogen()

__all__ = ["DockerCommandLineCodeExecutor", "LocalCommandLineCodeExecutor"]


class _CcexecCodeExecutor(CodeExecutor):
    """An AutoGen CodeExecutor that runs blocks with a ccexec executor (``.executor``).

    Cancelling the CancellationToken kills the running code before CancelledError is raised.
    Not serializable with ``dump_component()`` (no component config).
    """

    def __init__(self, executor: BaseCommandLineExecutor) -> None:
        self.executor = executor

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

    async def execute_code_blocks(
        self, code_blocks: list[CodeBlock], cancellation_token: CancellationToken
    ) -> CommandLineCodeResult:
        """Run the blocks in order; cancelling the token kills the running code."""
        if cancellation_token.is_cancelled():
            raise asyncio.CancelledError
        blocks = [ccexec.CodeBlock(block.code, block.language) for block in code_blocks]
        task = asyncio.ensure_future(self.executor.aexecute_code_blocks(blocks))
        loop = asyncio.get_running_loop()

        def cancel() -> None:
            # Not link_future: the token may be cancelled from another thread, and Task.cancel
            # is not thread-safe (the loop would notice only once the code had finished).
            loop.call_soon_threadsafe(task.cancel)

        cancellation_token.add_callback(cancel)
        result = await task
        return CommandLineCodeResult(exit_code=result.exit_code, output=result.output, code_file=result.code_file)

    async def start(self) -> None:
        """Start the executor (create the work dir, start the container)."""
        await asyncio.to_thread(self.executor.start)

    async def stop(self) -> None:
        """Kill running code, stop the container, remove a temporary work dir."""
        await asyncio.to_thread(self.executor.stop)

    async def restart(self) -> None:
        """Kill running code and start afresh, keeping the work dir."""
        await asyncio.to_thread(self.executor.restart)


class LocalCommandLineCodeExecutor(_CcexecCodeExecutor):
    """``ccexec.LocalCommandLineCodeExecutor`` (same arguments) as an AutoGen CodeExecutor."""

    executor: ccexec.LocalCommandLineCodeExecutor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(ccexec.LocalCommandLineCodeExecutor(*args, **kwargs))


class DockerCommandLineCodeExecutor(_CcexecCodeExecutor):
    """``ccexec.DockerCommandLineCodeExecutor`` (same arguments) as an AutoGen CodeExecutor."""

    executor: ccexec.DockerCommandLineCodeExecutor

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(ccexec.DockerCommandLineCodeExecutor(*args, **kwargs))
