"""DockerCommandLineCodeExecutor: each block is a file run by a new process in a container.

The container's main process is ccexec's supervisor (``_supervisor.py``, shipped as text),
attached to this process over one ``docker run -i``: each block is a request on its stdin,
and the supervisor starts a new process per block, enforces the deadline, kills the
block's whole tree and streams the output back. No CLI call per block; when this process
ends (even by SIGKILL) the supervisor sees its stdin close and the container ends.
This module only turns the options into a backend (``backends/docker.py``, or
``backends/docker_exec.py`` for ``mode="exec"``).
"""

from __future__ import annotations

import os

from .backends import WORKSPACE
from .errors import InvalidArgumentError
from .executor import DEFAULT_MAX_OUTPUT_BYTES, BaseCommandLineExecutor, fork_server_setting

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import time matters)
if TYPE_CHECKING:
    # The CLI and backend modules load when an executor is created, not on `import ccexec`.
    import weakref
    from pathlib import Path
    from typing import Any, Mapping, Sequence

    from ._capture import OutputCallback
    from .backends import Backend
    from .backends.docker_cli import ClientCommand
    from .blocks import Language

__all__ = ["HARDENED", "LABEL", "MODES", "WORKSPACE", "DockerCommandLineCodeExecutor", "collect_garbage"]

#: Label every ccexec container carries; ``python -m ccexec gc`` looks for it.
LABEL = "org.ccexec"
#: What ``hardened=True`` sets, unless given explicitly (plus read_only, cap_drop=ALL,
#: no-new-privileges and a non-root user: see the README's security model).
HARDENED: dict[str, Any] = {"network": "none", "memory": "512m", "cpus": 1.0, "pids_limit": 256}
#: The ways blocks reach the container (see the class docstring).
MODES = ("runner", "exec")
_BLOCK_ENV = {"PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"}
_NOBODY = (65534, 65534)
_live: weakref.WeakSet[DockerCommandLineCodeExecutor] | None = None  # made with the first executor


class DockerCommandLineCodeExecutor(BaseCommandLineExecutor):
    """Run each code block as a file in a new process inside a Docker container.

    The container starts on ``start()`` or the first execution and ends on ``stop()``, at
    exit, or when this process dies. ``work_dir`` (a temporary directory when None) is
    bind-mounted at ``/workspace`` so code files and outputs appear on the host;
    ``bind_dir`` is the host path to mount instead, for Docker-out-of-Docker.
    ``init_command`` runs once in the container when it starts, before any block (a shell
    command; its failure makes ``start()`` raise with its output).

    Keyword-only additions to AutoGen's parameters (see the README):
        docker: the client command, ``"docker"``, ``"podman"`` or an argv list.
        hardened: defaults for untrusted code: no network, read-only root with a tmpfs /tmp,
            all capabilities dropped, no-new-privileges, 512 MiB (no swap), 1 CPU, 256
            pids, and a non-root user; each can still be set explicitly.
        mount_work_dir: None picks by itself (no mount when the engine is remote); False
            sends code over the CLI only, True forces the bind mount.
        gpus, network, memory, cpus, pids_limit, read_only, user, cap_drop, security_opt:
            passed as the ``docker run`` flags of the same names; run_args: extra flags.
        env: variables set in the container. languages, max_output_bytes, on_output,
            fork_server, fork_server_max_blocks: as for the local executor (the server is
            the image's python in the container); ``mode="exec"`` has no supervisor in the
            container to keep one, and refuses ``fork_server=True``.
        socket_channel: with a local engine and the work dir mounted as is, the supervisor
            talks over a Unix socket mounted into the container instead of the attached
            ``docker`` client (faster; it falls back to the client by itself); False: never.
    """

    def __init__(
        self,
        image: str = "python:3-slim",
        container_name: str | None = None,
        *,
        timeout: float = 60,
        work_dir: str | os.PathLike[str] | None = None,
        bind_dir: str | os.PathLike[str] | None = None,
        auto_remove: bool = True,
        stop_container: bool = True,
        functions: Sequence[Any] = (),
        functions_module: str = "functions",
        extra_volumes: Mapping[str, Mapping[str, str]] | Sequence[str] | None = None,
        extra_hosts: Mapping[str, str] | None = None,
        init_command: str | None = None,
        delete_tmp_files: bool = False,
        docker: ClientCommand = "docker",
        mount_work_dir: bool | None = None,
        mode: str = "runner",
        hardened: bool = False,
        gpus: str | None = None,
        network: str | None = None,
        memory: str | None = None,
        cpus: float | None = None,
        pids_limit: int | None = None,
        read_only: bool | None = None,
        user: str | None = None,
        cap_drop: Sequence[str] = (),
        security_opt: Sequence[str] = (),
        run_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        languages: Mapping[str, Language] | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        on_output: OutputCallback = None,
        setup_timeout: float | None = None,
        fork_server: bool = False,
        fork_server_max_blocks: int | None = None,
        socket_channel: bool = True,
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
            delete_generated=delete_tmp_files,
        )
        if not image or not isinstance(image, str):
            raise InvalidArgumentError(f"image must be a non-empty string, got {image!r}")
        self._image = image
        self._container_name = container_name or f"ccexec-{os.urandom(5).hex()}"
        self._bind_dir = None if bind_dir is None else str(bind_dir)
        self._socket_channel = socket_channel
        self._auto_remove = auto_remove
        self._stop_container = stop_container
        self._init_command = init_command
        if mode not in MODES:
            raise InvalidArgumentError(f"mode must be one of {MODES}, got {mode!r}")
        self._mode = mode
        self._fork_server = fork_server_setting(fork_server, fork_server_max_blocks)
        if self._fork_server and mode == "exec":
            raise InvalidArgumentError(
                "fork_server=True needs mode='runner': mode='exec' starts each block with `docker exec`, "
                "and has no process in the container to keep a started interpreter"
            )
        from .backends.docker_cli import DockerCLI, run_options

        self._cli = DockerCLI(docker)
        self._mount_work_dir = mount_work_dir
        if hardened:
            network = HARDENED["network"] if network is None else network
            memory = HARDENED["memory"] if memory is None else memory
            cpus = HARDENED["cpus"] if cpus is None else cpus
            pids_limit = HARDENED["pids_limit"] if pids_limit is None else pids_limit
            read_only = True if read_only is None else read_only
            cap_drop = cap_drop or ("ALL",)
            security_opt = security_opt or ("no-new-privileges",)
            user = user or _unprivileged_user()
        self._owner = _NOBODY if hardened and user == "65534:65534" else None
        self._options = run_options(
            extra_volumes=extra_volumes,
            extra_hosts=extra_hosts,
            gpus=gpus,
            network=network,
            memory=memory,
            cpus=cpus,
            pids_limit=pids_limit,
            read_only=bool(read_only),
            user=user,
            cap_drop=cap_drop,
            security_opt=security_opt,
        ) + [str(arg) for arg in run_args]
        self._secrets = dict(env or {})
        _track(self)

    # -- AutoGen's properties ------------------------------------------------------------------

    @property
    def image(self) -> str:
        """The image the container runs."""
        return self._image

    @property
    def container_name(self) -> str:
        """The container's name."""
        return self._container_name

    @property
    def bind_dir(self) -> Path:
        """The host path mounted at /workspace (``work_dir`` unless ``bind_dir`` was given)."""
        if self._bind_dir is None:
            return self.work_dir
        from pathlib import Path

        return Path(self._bind_dir)

    @property
    def channel(self) -> str | None:
        """How this host talks to the container's supervisor: ``"socket"`` (a mounted Unix socket),
        ``"client"`` (the attached ``docker`` client's stdio), None when none runs (or mode="exec")."""
        from .backends.docker import DockerBackend

        backend = self._backend
        return backend.channel if isinstance(backend, DockerBackend) and backend.alive else None

    @property
    def mounts_work_dir(self) -> bool:
        """Whether the work dir is bind-mounted (False when the engine is remote, unless forced)."""
        if self._mount_work_dir is None:
            self._mount_work_dir = not self._cli.is_remote()
        return self._mount_work_dir

    @property
    def delete_tmp_files(self) -> bool:
        """Whether generated code files are deleted after each run."""
        return self._delete_generated

    def _new_backend(self) -> Backend:
        from .backends.docker import DockerBackend
        from .backends.docker_cli import ContainerSpec
        from .backends.docker_exec import ExecBackend
        from .backends.gc import owner_labels

        # The engine sees this host's files at the same paths: the supervisor may talk over a mounted socket.
        shares_files = self._bind_dir is None and self.mounts_work_dir and not self._cli.is_remote()
        spec = ContainerSpec(
            self._image, self._container_name, labels=owner_labels(), options=self._options,
            secrets=self._secrets, mount=str(self.bind_dir) if self.mounts_work_dir else None,
            host_work_dir=str(self.work_dir), auto_remove=self._auto_remove, keep=not self._stop_container,
            init_command=self._init_command, owner=self._owner,
            channel=self._socket_channel and shares_files,
        )  # fmt: skip
        return DockerBackend(self._cli, spec) if self._mode == "runner" else ExecBackend(self._cli, spec)

    def _block_env(self) -> tuple[dict[str, str], bool]:
        return dict(_BLOCK_ENV), False

    def _can_run(self, language: Language) -> bool:
        return language.command[0] != "pwsh"  # not in the usual images

    def _work_dir_for_code(self) -> str:
        return WORKSPACE


def collect_garbage(docker: ClientCommand = "docker", *, dry_run: bool = False) -> list[str]:
    """Remove ccexec containers of this host whose owner process is gone; return their names.

    See ``ccexec.backends.gc``: labels are read as data, and only containers whose owner ran
    in this pid namespace of this boot of this host, and is gone, are removed (by ID).
    """
    from .backends import gc
    from .backends.docker_cli import DockerCLI

    return gc.collect_garbage(DockerCLI(docker), dry_run=dry_run)


def _unprivileged_user() -> str:
    """This user's uid:gid (files in the work dir stay theirs), or nobody when we are root."""
    uid, gid = os.getuid(), os.getgid()
    return "65534:65534" if uid == 0 else f"{uid}:{gid}"


def _track(executor: DockerCommandLineCodeExecutor) -> None:
    """Remember the executor so that interpreter exit stops its container."""
    global _live
    if _live is None:
        import atexit
        import weakref

        _live = weakref.WeakSet()
        atexit.register(_stop_all)
    _live.add(executor)


def _stop_all() -> None:
    for executor in list(_live or ()):
        try:
            executor.stop()
        except Exception:  # noqa: BLE001 - best effort at interpreter exit
            continue
