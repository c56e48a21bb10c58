"""Every exception ccexec raises on purpose.

What the user's code does (a non-zero exit, a timeout, a crash) comes back as data in the
result; these exceptions are for failures of ccexec's own machinery and for bad arguments.
Each class subclasses the builtin that matches, so ``except ValueError`` keeps working; each
keeps its data in typed attributes and survives pickling and copying.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import time matters)
if TYPE_CHECKING:
    from typing import Any, Sequence


class CcexecError(Exception):
    """Root of every exception ccexec raises on purpose."""

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # The typed fields are keyword-only with defaults: rebuild from the message, then restore them.
        return (type(self), (self.message,), dict(self.__dict__))


class InvalidArgumentError(CcexecError, ValueError):
    """An argument given to ccexec is invalid; nothing was started."""


class VirtualEnvError(CcexecError, RuntimeError):
    """A virtual environment could not be created or does not work; ``path`` is where."""

    def __init__(self, message: str = "", *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class FunctionSetupError(CcexecError, ValueError):
    """The user-defined functions could not be written, installed or imported.

    ``output`` is what pip or Python printed; ``exit_code`` theirs (None when killed at the deadline).
    """

    def __init__(self, message: str = "", *, output: str = "", exit_code: int | None = None) -> None:
        super().__init__(message)
        self.output = output
        self.exit_code = exit_code


class SupervisorGoneError(CcexecError, RuntimeError):
    """The supervisor running the blocks died, hung or went silent; the running blocks' results are lost.

    ``where`` names it (``the local executor``, ``container ccexec-...``), ``reason`` says what happened.
    """

    def __init__(self, message: str = "", *, where: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.where = where
        self.reason = reason

    def __str__(self) -> str:
        if self.message:
            return self.message
        return (
            f"the supervisor of {self.where} is gone ({self.reason}); its blocks were killed and their "
            "results are lost. The next call starts a new one."
        )


class ProtocolViolationError(SupervisorGoneError):
    """The supervisor's channel carried something that breaks the protocol; the session was ended."""

    def __str__(self) -> str:
        if self.message:
            return self.message
        return (
            f"the channel to the supervisor of {self.where} carried a malformed frame ({self.reason}); "
            "the session was ended and its blocks killed. The next call starts a new one."
        )


class _AboutPath:
    """Mixed into the copy errors before CcexecError: a ``path`` field, and ``DEFAULT`` as the
    message when none is given."""

    DEFAULT = ""
    message: str

    def __init__(self, message: str = "", *, path: str = "") -> None:
        super().__init__(message)  # type: ignore[call-arg]  # CcexecError's, next in the MRO
        self.path = path

    def __str__(self) -> str:
        return self.message or self.DEFAULT.format(path=self.path)


class WorkPathError(_AboutPath, CcexecError, ValueError):
    """A path given to ``copy_to`` or ``copy_from`` leaves the work dir; nothing was copied."""

    DEFAULT = "{path!r} leaves the work dir; pass a path relative to the work dir, without '..'"


class WorkFileNotFoundError(_AboutPath, CcexecError, FileNotFoundError):
    """What ``copy_to`` or ``copy_from`` should copy does not exist; ``path`` names it."""

    DEFAULT = "{path!r} does not exist; check the name (list the work dir with a block, or see result.files)"


class HostPathExistsError(_AboutPath, CcexecError, FileExistsError):
    """``copy_from`` would overwrite ``path`` on the host; nothing was copied."""

    DEFAULT = "{path!r} exists on the host; pass overwrite=True to replace it, or choose another host_dest"


class UnsafeFileError(_AboutPath, CcexecError, ValueError):
    """A copy met an entry it refuses to create (a symlink or hard link leading out of the copy, a
    device, a fifo, a malformed archive member); what was written before was removed."""

    def __init__(self, message: str = "", *, path: str = "", reason: str = "") -> None:
        super().__init__(message, path=path)
        self.reason = reason

    def __str__(self) -> str:
        if self.message:
            return self.message
        return (
            f"refused to copy {self.path!r}: {self.reason}; nothing of this copy was kept. Replace it "
            "(e.g. a link with the file it points to) in the work dir, or copy the other entries one by one"
        )


class CopyTooLargeError(_AboutPath, CcexecError, OSError):
    """A copy out of the work dir went past ``max_bytes``; what was written was removed."""

    def __init__(self, message: str = "", *, path: str = "", max_bytes: int = 0) -> None:
        super().__init__(message, path=path)
        self.max_bytes = max_bytes

    def __str__(self) -> str:
        if self.message:
            return self.message
        return (
            f"copying {self.path!r} would write more than max_bytes={self.max_bytes} bytes; nothing of this "
            "copy was kept. Pass a larger max_bytes, or copy a smaller part"
        )


class SandboxUnavailableError(CcexecError, RuntimeError):
    """The sandbox cannot be set up here; ``cause`` says why and ``fix`` how to make it work.

    Raised instead of running anything: a sandboxed executor never falls back to running unsandboxed.
    """

    def __init__(self, message: str = "", *, cause: str = "", fix: str = "") -> None:
        super().__init__(message)
        self.cause = cause
        self.fix = fix

    def __str__(self) -> str:
        if self.message:
            return self.message
        return f"the sandbox cannot run here: {self.cause}. Fix: {self.fix}. Nothing was run unsandboxed."


class DockerError(CcexecError, RuntimeError):
    """The docker client or engine failed; ``command`` (the argv) and ``stderr`` say how."""

    def __init__(self, message: str = "", *, command: Sequence[str] = (), stderr: str = "", output: str = "") -> None:
        super().__init__(message)
        self.command = list(command)
        self.stderr = stderr
        self.output = output


class DockerNotFoundError(DockerError, FileNotFoundError):
    """The docker client binary is not on the PATH."""


class EngineUnavailableError(DockerError, ConnectionError):
    """The docker client runs but cannot reach an engine."""


class EnginePermissionError(DockerError, PermissionError):
    """The engine's socket exists but this user may not use it."""


class ImageNotFoundError(DockerError, LookupError):
    """The image is neither present nor pullable."""


class ContainerGoneError(DockerError, SupervisorGoneError):
    """The executor's container stopped or vanished while it was in use; ``container`` names it."""

    def __init__(
        self, message: str = "", *, container: str = "", reason: str = "", exit_status: int | None = None,
        command: Sequence[str] = (), stderr: str = "", output: str = "",
    ) -> None:  # fmt: skip
        DockerError.__init__(self, message, command=command, stderr=stderr, output=output)
        self.where = f"container {container}"
        self.reason = reason
        self.container = container
        self.exit_status = exit_status

    def __str__(self) -> str:
        if self.message:
            return self.message
        return (
            f"container {self.container} ended or stopped answering while in use ({self.reason}); the running "
            "blocks' results are lost. The next call starts a new container."
        )


class DockerTimeoutError(DockerError, TimeoutError):
    """A docker CLI call ran past its deadline (a hung engine); the call was killed."""
