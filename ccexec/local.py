"""LocalCommandLineCodeExecutor: each block is a file run by a new process on this host."""

from __future__ import annotations

import os
import sys
import warnings

from .blocks import PYTHON, Language
from .errors import InvalidArgumentError
from .executor import DEFAULT_MAX_OUTPUT_BYTES, BaseCommandLineExecutor, fork_server_setting

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import time matters)
if TYPE_CHECKING:
    from types import SimpleNamespace
    from typing import Any, Mapping, Sequence

    from ._capture import OutputCallback
    from .backends import Backend
    from .backends.bwrap import BwrapBackend

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
    """Run each code block as a file in a new process on this host (not a sandbox, unless ``sandbox=True``).

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
        sandbox: True (or ``"bwrap"``) runs the blocks in a bubblewrap sandbox: the system
            read-only, no network, no host processes, no environment of ours, the work dir the
            only writable host path (see the README's "Sandbox without Docker"). Raises
            SandboxUnavailableError when bwrap or user namespaces are missing; never runs
            unsandboxed instead.
        network: with the sandbox, True shares this host's network (default: none).
        limits: with the sandbox, limits for every block (``cpu_seconds``, ``address_space``,
            ``file_size``, ``open_files``, ``processes``, ``tmp_size``; None removes one).
        read_only_paths: with the sandbox, more host paths visible read-only (data, tools).
        fork_server: run python blocks in processes forked from an interpreter started
            beforehand (about 1 to 2 ms a block instead of an interpreter start; see the
            README's "Fork server" for what a block can tell). Other languages, and python
            languages with another command line, run as usual.
        fork_server_max_blocks: replace the fork server after that many blocks (None: never),
            e.g. for a new hash randomisation seed.
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
        sandbox: bool | str = False,
        network: bool | None = None,
        limits: Mapping[str, int | None] | None = None,
        read_only_paths: Sequence[str | os.PathLike[str]] = (),
        fork_server: bool = False,
        fork_server_max_blocks: int | None = None,
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
            delete_generated=cleanup_temp_files,
        )
        from .backends.bwrap import check_available, check_limits, sandbox_kind

        self._sandbox = sandbox_kind(sandbox)
        if self._sandbox is None and (network is not None or limits is not None or read_only_paths):
            raise InvalidArgumentError("network, limits and read_only_paths apply only with sandbox=True")
        self._limits = None if limits is None else check_limits(limits)
        self._network, self._read_only = bool(network), [os.fspath(path) for path in read_only_paths]
        self._fork_server = fork_server_setting(fork_server, fork_server_max_blocks)
        self._python = sys.executable
        overrides: dict[str, str | None] = {}
        self._venv_dir: str | None = None
        if virtual_env_context is not None:
            self._python, overrides = _venv_settings(virtual_env_context)
            self._venv_dir = overrides.get("VIRTUAL_ENV")
            if self._sandbox is not None:  # the sandbox's PATH starts with the interpreter's bin already
                overrides = {"VIRTUAL_ENV": self._venv_dir}
        overrides.update(env or {})
        self._env_overrides = overrides
        self._virtual_env_context = virtual_env_context
        if self._sandbox is None:
            _warn_not_a_sandbox()
        else:
            check_available()  # now: a missing bwrap is the constructor's error, not the first call's

    @property
    def cleanup_temp_files(self) -> bool:
        """Whether generated code files are deleted after each run."""
        return self._delete_generated

    @property
    def sandbox(self) -> str | None:
        """The sandbox blocks run in (``"bwrap"``), or None when they run on this host as you."""
        return self._sandbox

    @property
    def sandbox_network(self) -> bool:
        """Whether sandboxed blocks share this host's network."""
        return self._network

    def _new_backend(self) -> Backend:
        if self._sandbox is not None:
            return self._sandbox_backend()
        from .backends.host import HostBackend

        return HostBackend(str(self.work_dir), self._python)

    def _sandbox_backend(self) -> BwrapBackend:
        from .backends.bwrap import BwrapBackend

        read_only = [*self._read_only, *([self._venv_dir] if self._venv_dir else [])]
        return BwrapBackend(
            str(self.work_dir), self._python, read_only=read_only, network=self._network, limits=self._limits
        )

    def _block_env(self) -> tuple[dict[str, str], bool]:
        if self._sandbox is not None:
            return self._sandbox_env(), True
        # Ours, read anew for each call, then the overrides (None deletes a variable). UTF-8
        # and unbuffered output keep Python children's stdout and stderr in the written order.
        env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1")
        for key, value in self._env_overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env, True

    def _sandbox_env(self) -> dict[str, str]:
        """Nothing of our environment: the sandbox's base (the interpreter's bin first in PATH), then ``env=``."""
        from .backends.bwrap import sandbox_env

        return sandbox_env(self._python, self._env_overrides)

    def _can_run(self, language: Language) -> bool:
        import shutil

        path = self._sandbox_env()["PATH"] if self._sandbox is not None else None
        return language.command[0] == PYTHON or shutil.which(language.command[0], path=path) is not None


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
        )
    # Absolute now: blocks run with the work dir as their current directory.
    env_exe, bin_path = os.path.abspath(env_exe), os.path.abspath(bin_path)
    env_dir = os.path.abspath(getattr(context, "env_dir", None) or os.path.dirname(bin_path))
    path = os.pathsep.join([bin_path, os.environ.get("PATH", "")])
    # As activating a venv does (its bin first, VIRTUAL_ENV set, PYTHONHOME dropped), and
    # PYTHONPATH dropped too, so the host's packages do not leak into the venv's Python.
    return env_exe, {"PATH": path, "VIRTUAL_ENV": env_dir, "PYTHONHOME": None, "PYTHONPATH": None}
