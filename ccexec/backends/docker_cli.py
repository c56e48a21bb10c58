"""The only module that knows docker CLI flags: argv building, deadlines, stderr -> exceptions."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from typing import Mapping, Sequence, Union

from ..errors import (
    ContainerGoneError,
    DockerError,
    DockerNotFoundError,
    DockerTimeoutError,
    EnginePermissionError,
    EngineUnavailableError,
    ImageNotFoundError,
    InvalidArgumentError,
)

ClientCommand = Union[str, Sequence[str]]

#: Seconds a quick docker CLI call (inspect, rm, ps) may take before the engine counts as hung.
CLI_DEADLINE = 30.0
#: Seconds `docker run` may take, a pull included.
RUN_DEADLINE = 300.0

# One table maps CLI stderr to exceptions (checked in order, lower-cased).
_STDERR_TO_ERROR: tuple[tuple[str, type[DockerError]], ...] = (
    ("permission denied while trying to connect", EnginePermissionError),
    ("cannot connect to the docker daemon", EngineUnavailableError),
    ("is the docker daemon running", EngineUnavailableError),
    ("error during connect", EngineUnavailableError),
    ("cannot connect to podman", EngineUnavailableError),
    ("unable to connect to podman", EngineUnavailableError),
    ("connection refused", EngineUnavailableError),
    ("unable to find image", ImageNotFoundError),
    ("pull access denied", ImageNotFoundError),
    ("manifest unknown", ImageNotFoundError),
    ("no such image", ImageNotFoundError),
    ("image not known", ImageNotFoundError),
    ("no such container", ContainerGoneError),
    ("no container with name or id", ContainerGoneError),
)


class DockerCLI:
    """The docker client command (``docker``, ``podman``, ``docker --context x``) and its calls."""

    def __init__(self, command: ClientCommand = "docker") -> None:
        argv = shlex.split(command) if isinstance(command, str) else [str(part) for part in command]
        if not argv:
            raise DockerNotFoundError("docker= is empty; pass 'docker', 'podman' or an argv list", command=argv)
        program = shutil.which(argv[0])
        if program is None:
            raise DockerNotFoundError(
                f"the docker client {argv[0]!r} was not found on PATH; install it, or point "
                f"docker= at the client (e.g. docker='/usr/bin/docker' or docker=['podman'])",
                command=argv,
            )
        self.argv = [program, *argv[1:]]
        self.name = os.path.basename(argv[0])

    @property
    def is_podman(self) -> bool:
        """Whether the client is Podman (which differs in a few flags)."""
        return "podman" in self.name

    def remove_args(self, *names: str) -> list[str]:
        """``rm --force`` arguments; Podman would first wait 10 s on a process that ignores SIGTERM."""
        return ["rm", "--force", *(["--time", "0"] if self.is_podman else []), *names]

    def target(self) -> str:
        """Describe which engine the client talks to, for error messages."""
        parts = []
        if "--context" in self.argv or "-c" in self.argv:
            parts.append(f"context from {shlex.join(self.argv[1:])}")
        for variable in ("DOCKER_HOST", "DOCKER_CONTEXT", "CONTAINER_HOST"):
            if os.environ.get(variable):
                parts.append(f"{variable}={os.environ[variable]}")
        return ", ".join(parts) or "the default engine (no DOCKER_HOST or context set)"

    def run(
        self, *args: str, deadline: float | None = None, input: bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[bytes]:
        """Run one CLI call with a deadline (CLI_DEADLINE by default); raise the mapped DockerError on failure."""
        deadline = CLI_DEADLINE if deadline is None else deadline
        argv = [*self.argv, *args]
        try:
            done = subprocess.run(argv, input=input, capture_output=True, timeout=deadline, check=False)
        except subprocess.TimeoutExpired as exc:
            raise DockerTimeoutError(
                f"`{shlex.join(argv)}` did not finish within {deadline:g} s and was killed; "
                f"the engine ({self.target()}) may be hung: check `{self.name} info`",
                command=argv,
            ) from exc
        if check and done.returncode != 0:
            raise self.error(argv, done.stderr)
        return done

    def error(self, argv: Sequence[str], stderr: bytes | str, image: str | None = None) -> DockerError:
        """Return the exception matching a failed call's stderr."""
        text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
        text = text.strip()
        lowered = text.lower()
        kind: type[DockerError] = DockerError
        for needle, error in _STDERR_TO_ERROR:
            if needle in lowered:
                kind = error
                break
        command = shlex.join(argv[:3]) + (" ..." if len(argv) > 3 else "")
        if kind is EngineUnavailableError:
            message = f"cannot reach a container engine through {self.target()}: {text}"
        elif kind is EnginePermissionError:
            message = (
                f"permission denied on the engine's socket ({self.target()}): add this user to the "
                f"'docker' group, use rootless Docker or Podman, or run as a user allowed to: {text}"
            )
        elif kind is ImageNotFoundError:
            message = (
                f"image {image!r} is not present and could not be pulled: {text}. On a host without "
                "a registry, provide it with `docker load -i image.tar` or `docker import`, or pass "
                "image= naming one that `docker images` lists"
            )
        else:
            message = f"`{command}` failed: {text}"
        return kind(message, command=list(argv), stderr=text)


def run_options(
    *,
    extra_volumes: Mapping[str, Mapping[str, str]] | Sequence[str] | None,
    extra_hosts: Mapping[str, str] | None,
    gpus: str | None,
    network: str | None,
    memory: str | None,
    cpus: float | None,
    pids_limit: int | None,
    read_only: bool,
    user: str | None,
    cap_drop: Sequence[str],
    security_opt: Sequence[str],
    env: Mapping[str, str] | None,
) -> list[str]:
    """Translate the executor's options into ``docker run`` flags, one argument per item."""
    argv: list[str] = []
    for volume in volumes(extra_volumes):
        argv += ["--volume", volume]
    for host, address in (extra_hosts or {}).items():
        argv += ["--add-host", f"{host}:{address}"]
    flags: list[tuple[str, object]] = [
        ("--gpus", gpus),
        ("--network", network),
        ("--memory", memory),
        ("--cpus", cpus),
        ("--pids-limit", pids_limit),
        ("--user", user),
    ]
    for flag, value in flags:
        if value is not None:
            argv += [flag, str(value)]
    if memory is not None:
        argv += ["--memory-swap", str(memory)]  # no swap beyond the limit: OOM is an OOM
    if read_only:
        argv += ["--read-only", "--tmpfs", "/tmp"]
    for capability in cap_drop:
        argv += ["--cap-drop", capability]
    for option in security_opt:
        argv += ["--security-opt", option]
    for key, value in (env or {}).items():
        argv += ["--env", f"{key}={value}"]
    return argv


def volumes(extra_volumes: Mapping[str, Mapping[str, str]] | Sequence[str] | None) -> list[str]:
    """Accept AutoGen's dict form ``{host: {"bind": path, "mode": "rw"}}`` and ``src:dst[:mode]``."""
    if extra_volumes is None:
        return []
    if isinstance(extra_volumes, str):
        raise InvalidArgumentError("extra_volumes must be a dict or a list of 'src:dst[:mode]' strings")
    if isinstance(extra_volumes, Mapping):
        volumes = []
        for host, spec in extra_volumes.items():
            if not isinstance(spec, Mapping) or "bind" not in spec:
                raise InvalidArgumentError(
                    f"extra_volumes[{host!r}] must be {{'bind': '/container/path', 'mode': 'rw'|'ro'}}"
                )
            volumes.append(f"{host}:{spec['bind']}:{spec.get('mode', 'rw')}")
        return volumes
    for volume in extra_volumes:
        if not isinstance(volume, str) or volume.count(":") not in (1, 2):
            raise InvalidArgumentError(f"extra_volumes entry {volume!r} must look like 'src:dst' or 'src:dst:mode'")
    return list(extra_volumes)
