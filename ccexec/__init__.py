"""ccexec: run code blocks as files in fresh processes, on this host or in a Docker container.

Standard library only. The names match AutoGen's command-line code executors, so switching
is an import change.
"""

from __future__ import annotations

from .blocks import CodeBlock, Language
from .docker import DockerCommandLineCodeExecutor
from .errors import (
    CcexecError,
    ContainerGoneError,
    CopyTooLargeError,
    DockerError,
    DockerNotFoundError,
    DockerTimeoutError,
    EnginePermissionError,
    EngineUnavailableError,
    FunctionSetupError,
    HostPathExistsError,
    ImageNotFoundError,
    InvalidArgumentError,
    ProtocolViolationError,
    SandboxUnavailableError,
    SupervisorGoneError,
    UnsafeFileError,
    VirtualEnvError,
    WorkFileNotFoundError,
    WorkPathError,
)
from .local import LocalCommandLineCodeExecutor
from .markdown import extract_code_blocks
from .results import BlockResult, CodeResult, CommandLineCodeResult
from .venv import create_virtual_env

__version__ = "0.1.0"

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import time matters)
if TYPE_CHECKING:
    from .functions import (
        Alias,
        FunctionWithRequirements,
        FunctionWithRequirementsStr,
        ImportFromModule,
        with_requirements,
    )

# Loaded on first use: the functions machinery (ast, inspect, textwrap) is not needed to run code.
_LAZY = {
    "Alias",
    "FunctionWithRequirements",
    "FunctionWithRequirementsStr",
    "ImportFromModule",
    "with_requirements",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        from . import functions

        return getattr(functions, name)
    raise AttributeError(f"module 'ccexec' has no attribute {name!r}")


__all__ = [
    "Alias",
    "FunctionWithRequirements",
    "FunctionWithRequirementsStr",
    "ImportFromModule",
    "with_requirements",
    "BlockResult",
    "CcexecError",
    "CodeBlock",
    "CodeResult",
    "CommandLineCodeResult",
    "ContainerGoneError",
    "CopyTooLargeError",
    "DockerCommandLineCodeExecutor",
    "DockerError",
    "DockerNotFoundError",
    "DockerTimeoutError",
    "EnginePermissionError",
    "EngineUnavailableError",
    "FunctionSetupError",
    "HostPathExistsError",
    "ImageNotFoundError",
    "InvalidArgumentError",
    "ProtocolViolationError",
    "SandboxUnavailableError",
    "SupervisorGoneError",
    "Language",
    "LocalCommandLineCodeExecutor",
    "UnsafeFileError",
    "VirtualEnvError",
    "WorkFileNotFoundError",
    "WorkPathError",
    "create_virtual_env",
    "extract_code_blocks",
]
