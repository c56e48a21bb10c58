"""ccexec's executors as AutoGen code executors (``autogen_core.code_executor.CodeExecutor``).

``CodeExecutorAgent("runner", code_executor=LocalCommandLineCodeExecutor(work_dir="coding"))``.
Needs ``pip install autogen-agentchat autogen-ext``; ccexec itself still needs nothing.

What AutoGen's own executors do and these do too: the same constructor arguments (and
ccexec's keyword-only additions), ``functions`` given as AutoGen ``FunctionWithRequirements``
objects, ``functions_module`` and ``format_functions_for_prompt``, a result carrying AutoGen's
cancellation text when the token is cancelled, ``dump_component()``/``load_component()``, the
deprecation warning for ``work_dir="."``. Where ccexec differs on purpose: cancelling really
kills the running code, and ``restart()`` really restarts (AutoGen's local one warns and does
nothing).
"""

from __future__ import annotations

import asyncio
import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import ccexec
from ccexec.executor import BaseCommandLineExecutor

from ._shared import convert_functions, given_arguments, is_current_dir

_log = logging.getLogger(__name__)


def _import_autogen() -> tuple[Any, Any, Any, Any]:
    """AutoGen's CodeExecutor, CommandLineCodeResult, Component and pydantic's BaseModel, or an
    ImportError saying what to install."""
    try:
        from autogen_core import Component
        from autogen_core.code_executor import CodeExecutor
        from autogen_ext.code_executors._common import CommandLineCodeResult
        from pydantic import BaseModel
    except ImportError as exc:
        raise ImportError(
            f"ccexec.integrations.autogen needs AutoGen ({exc}): pip install autogen-agentchat autogen-ext"
        ) from exc
    return CodeExecutor, CommandLineCodeResult, Component, BaseModel


# The framework is imported in a function: ccexec's packaging test allows no module-level import of it.
if TYPE_CHECKING:
    from autogen_core import CancellationToken, Component
    from autogen_core.code_executor import CodeBlock, CodeExecutor
    from autogen_ext.code_executors._common import CommandLineCodeResult
    from pydantic import BaseModel
    from typing_extensions import Self
else:
    CodeExecutor, CommandLineCodeResult, Component, BaseModel = _import_autogen()

__all__ = ["DockerCommandLineCodeExecutor", "LocalCommandLineCodeExecutor"]


# AutoGen needs Python 3.10+, so pydantic can evaluate these annotations wherever this module imports.
class LocalCommandLineCodeExecutorConfig(BaseModel):
    """AutoGen's configuration fields of the local executor, plus ccexec's JSON-able options."""

    timeout: int = 60
    work_dir: str | None = None
    functions_module: str = "functions"
    cleanup_temp_files: bool = True
    ccexec_options: dict[str, Any] = {}  # noqa: RUF012 - pydantic copies field defaults


class DockerCommandLineCodeExecutorConfig(BaseModel):
    """AutoGen's configuration fields of the Docker executor, plus ccexec's JSON-able options."""

    image: str = "python:3-slim"
    container_name: str | None = None
    timeout: int = 60
    work_dir: str | None = None
    bind_dir: str | None = None
    auto_remove: bool = True
    stop_container: bool = True
    functions_module: str = "functions"
    extra_volumes: dict[str, dict[str, str]] = {}  # noqa: RUF012
    extra_hosts: dict[str, str] = {}  # noqa: RUF012
    init_command: str | None = None
    delete_tmp_files: bool = False
    ccexec_options: dict[str, Any] = {}  # noqa: RUF012


class _CcexecCodeExecutor(CodeExecutor):
    """An AutoGen CodeExecutor that runs blocks with a ccexec executor (``.executor``).

    Cancelling the CancellationToken kills the running code; the call then returns a result
    with AutoGen's cancellation text (``CANCELLED``) instead of the code's own end.
    """

    #: (exit code, text appended to the output) of a call whose token was cancelled: AutoGen's.
    CANCELLED: ClassVar[tuple[int, str]] = (1, "Code execution was cancelled.")
    _ccexec_class: ClassVar[type[BaseCommandLineExecutor]]
    _config_class: ClassVar[Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = given_arguments(self._ccexec_class, args, kwargs)
        if "functions" in given:
            given["functions"] = convert_functions(given["functions"])
        if is_current_dir(given.get("work_dir")):
            warnings.warn("Using the current directory as work_dir is deprecated.", DeprecationWarning, stacklevel=3)
        self._given = given
        self.executor = self._ccexec_class(**given)

    @property
    def work_dir(self) -> Path:
        """The work dir."""
        return self.executor.work_dir

    @property
    def timeout(self) -> float:
        """Seconds each block may run."""
        return self.executor.timeout

    @property
    def functions_module(self) -> str:
        """The module blocks import the user functions from."""
        return self.executor.functions_module

    @property
    def functions(self) -> list[str]:
        """Names of the user functions."""
        return self.executor.functions

    def format_functions_for_prompt(self, prompt_template: str | None = None) -> str:
        """A prompt listing the user functions' stubs and how to import them."""
        return self.executor.format_functions_for_prompt(prompt_template)

    def code_writer_system_message(self) -> str:
        """A system message telling a code-writing agent how its code is run."""
        return self.executor.code_writer_system_message()

    async def execute_code_blocks(
        self, code_blocks: list[CodeBlock], cancellation_token: CancellationToken
    ) -> CommandLineCodeResult:
        """Run the blocks in order; cancelling the token kills the running code."""
        if cancellation_token.is_cancelled():
            return self._cancelled("")
        blocks = [ccexec.CodeBlock(block.code, block.language) for block in code_blocks]
        output: list[str] = []
        task = asyncio.ensure_future(self.executor.aexecute_code_blocks(blocks))
        loop = asyncio.get_running_loop()

        def cancel() -> None:
            # Not link_future: the token may be cancelled from another thread, and Task.cancel
            # is not thread-safe (the loop would notice only once the code had finished).
            loop.call_soon_threadsafe(task.cancel)

        cancellation_token.add_callback(cancel)
        try:
            result = await task
        except asyncio.CancelledError:
            if not cancellation_token.is_cancelled():
                raise  # the caller's own task was cancelled: that is not a result
            return self._cancelled("".join(output))
        return CommandLineCodeResult(exit_code=result.exit_code, output=result.output, code_file=result.code_file)

    def _cancelled(self, output: str) -> CommandLineCodeResult:
        exit_code, text = self.CANCELLED
        return CommandLineCodeResult(exit_code=exit_code, output=f"{output}{text}", code_file=None)

    async def start(self) -> None:
        """Start the executor (create the work dir, start the container)."""
        await asyncio.to_thread(self.executor.start)

    async def stop(self) -> None:
        """Kill running code, stop the container, remove a temporary work dir."""
        await asyncio.to_thread(self.executor.stop)

    async def restart(self) -> None:
        """Kill running code and start afresh, keeping the work dir."""
        await asyncio.to_thread(self.executor.restart)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- AutoGen components: dump_component() / load_component() ------------------------------

    def _to_config(self) -> Any:
        """The arguments this executor was made with: AutoGen's fields, then ccexec's JSON-able ones.

        Not included (as with AutoGen): functions and a virtual env context; nor callbacks or
        values JSON cannot hold. Each left-out argument is logged.
        """
        fields = self._config_class.model_fields
        config: dict[str, Any] = {}
        options: dict[str, Any] = {}
        for name, value in self._given.items():
            if name in fields:
                config[name] = str(value) if name in ("work_dir", "bind_dir") and value is not None else value
            elif _json_able(value) and name not in ("functions", "virtual_env_context"):
                options[name] = value
            else:
                _log.info("%s=%r is not included in the serialized configuration", name, value)
        if isinstance(config.get("extra_volumes"), (list, tuple)):
            options["extra_volumes"] = config.pop("extra_volumes")  # ccexec's -v strings; AutoGen's field is a dict
        return self._config_class(**config, ccexec_options=options)

    @classmethod
    def _from_config(cls, config: Any) -> Self:
        arguments = config.model_dump(exclude_unset=True)
        arguments.update(arguments.pop("ccexec_options", {}))
        return cls(**arguments)


def _json_able(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class LocalCommandLineCodeExecutor(_CcexecCodeExecutor, Component[LocalCommandLineCodeExecutorConfig]):
    """``ccexec.LocalCommandLineCodeExecutor`` (same arguments) as an AutoGen CodeExecutor."""

    executor: ccexec.LocalCommandLineCodeExecutor
    CANCELLED = (125, "\nCancelled")  # AutoGen's local executor: its exit code and text
    _ccexec_class = ccexec.LocalCommandLineCodeExecutor
    _config_class = LocalCommandLineCodeExecutorConfig
    component_config_schema = LocalCommandLineCodeExecutorConfig
    component_provider_override = "ccexec.integrations.autogen.LocalCommandLineCodeExecutor"


class DockerCommandLineCodeExecutor(_CcexecCodeExecutor, Component[DockerCommandLineCodeExecutorConfig]):
    """``ccexec.DockerCommandLineCodeExecutor`` (same arguments) as an AutoGen CodeExecutor.

    As with AutoGen's, ``work_dir`` is a RuntimeError before ``start()`` when none was given
    (the temporary one does not exist yet).
    """

    executor: ccexec.DockerCommandLineCodeExecutor
    _ccexec_class = ccexec.DockerCommandLineCodeExecutor
    _config_class = DockerCommandLineCodeExecutorConfig
    component_config_schema = DockerCommandLineCodeExecutorConfig
    component_provider_override = "ccexec.integrations.autogen.DockerCommandLineCodeExecutor"

    @property
    def work_dir(self) -> Path:
        """The work dir; a RuntimeError before ``start()`` when none was given."""
        if self._given.get("work_dir") is None and not self.executor.started:
            raise RuntimeError("Working directory not properly initialized: call start() first (work_dir=None)")
        return self.executor.work_dir

    @property
    def bind_dir(self) -> Path:
        """The host path mounted at /workspace."""
        return self.executor.bind_dir
