"""Every exception ccexec raises on purpose.

What the user's code does (a non-zero exit, a timeout, a crash) comes back as data in the
result; these exceptions are for failures of ccexec's own machinery and for bad arguments.
Each class subclasses the builtin that matches, so ``except ValueError`` keeps working, and
each keeps its data as attributes and survives pickling.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import time matters)
if TYPE_CHECKING:
    from typing import Any


class CcexecError(Exception):
    """Root of every exception ccexec raises on purpose."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details
        for key, value in details.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Keyword details do not survive the default Exception pickling.
        return (_rebuild, (type(self), self.message, self.details))


def _rebuild(cls: type[CcexecError], message: str, details: dict[str, Any]) -> CcexecError:
    return cls(message, **details)


class InvalidArgumentError(CcexecError, ValueError):
    """An argument given to ccexec is invalid; nothing was started."""


class ExecutionTimeoutError(CcexecError, TimeoutError):
    """A step of ccexec's own machinery (not a code block) ran past its deadline."""


class InterpreterNotFoundError(CcexecError, FileNotFoundError):
    """A program ccexec needs (an interpreter, the docker client) cannot be found."""


class VirtualEnvError(CcexecError, RuntimeError):
    """A virtual environment could not be created or does not work."""


class FunctionSetupError(CcexecError, ValueError):
    """The user-defined functions could not be written, installed or imported."""


class DockerError(CcexecError, RuntimeError):
    """The docker client or engine failed; ``command`` and ``stderr`` say how."""


class DockerNotFoundError(DockerError, FileNotFoundError):
    """The docker client binary is not on the PATH."""


class EngineUnavailableError(DockerError, ConnectionError):
    """The docker client runs but cannot reach an engine."""


class EnginePermissionError(DockerError, PermissionError):
    """The engine's socket exists but this user may not use it."""


class ImageNotFoundError(DockerError, LookupError):
    """The image is neither present nor pullable."""


class ContainerGoneError(DockerError):
    """The executor's container stopped or vanished while it was in use."""


class DockerTimeoutError(DockerError, TimeoutError):
    """A docker CLI call ran past its deadline (a hung engine); the call was killed."""
