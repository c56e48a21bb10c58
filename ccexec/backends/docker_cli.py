"""The only module that knows docker CLI flags: every argv, deadlines, stderr -> exceptions."""

from __future__ import annotations

import contextlib
import os
import select
import shlex
import shutil
import subprocess
from typing import TYPE_CHECKING, Mapping, Sequence, Union

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
from . import WORKSPACE

if TYPE_CHECKING:
    from .channel import SocketChannel

ClientCommand = Union[str, Sequence[str]]

#: Seconds a quick docker CLI call (inspect, rm, ps) may take before the engine counts as hung.
CLI_DEADLINE = 30.0
#: Seconds `docker run` may take, a pull included.
RUN_DEADLINE = 300.0

# The container's main process: sh finds python3 (some images have no `python`) or python and
# runs the supervisor source given as $0. -I -S: it needs only the standard library, and
# site's imports cost ~5 ms per start.
BOOT = (
    'for py in python3 python; do command -v $py >/dev/null && exec $py -I -S -c "$0" "$@"; done; '
    "echo \"ccexec: the image has neither python3 nor python; use mode='exec' (only sh needed)\" >&2; exit 127"
)
# The main process of a container that outlives us (stop_container=False): sleeps until stopped.
KEEPALIVE = 'trap "exit 0" TERM; while :; do sleep 3600 & wait $!; done'


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """``proc.wait(timeout)``, woken by the exit itself (a pidfd, Linux 5.3+).

    ``Popen.wait`` with a timeout polls with sleeps that double up to 50 ms, so it returns up
    to half again as late as the exit: milliseconds on every block of exec mode and every copy.
    Raises subprocess.TimeoutExpired as ``wait`` does.
    """
    if proc.returncode is None and hasattr(os, "pidfd_open"):
        try:
            pidfd = os.pidfd_open(proc.pid)
        except OSError:  # an old kernel: poll as Popen does
            return proc.wait(timeout)
        try:
            exited = bool(select.select([pidfd], [], [], timeout)[0])
        finally:
            os.close(pidfd)
        return proc.wait(None if exited else 0)
    return proc.wait(timeout)


class ContainerSpec:
    """What a container is made of: image, name, labels, mounts and flags, secrets kept off argv.

    ``options`` are ``docker run`` flags (see ``run_options``); ``secrets`` are environment
    variables passed as ``--env NAME`` with the value in the client's own environment, so they
    never appear in a process listing. ``mount`` is the host path bind-mounted at WORKSPACE
    (None: nothing mounted); ``host_work_dir`` is where the user finds it. ``keep``: a
    detached container that outlives us (AutoGen's ``stop_container=False``). ``channel``: the
    engine sees this host's files, so the supervisor may talk over a mounted socket (``channel.py``).
    """

    def __init__(
        self, image: str, name: str, *, labels: Mapping[str, str], options: Sequence[str],
        secrets: Mapping[str, str], mount: str | None, host_work_dir: str, auto_remove: bool, keep: bool,
        init_command: str | None, owner: tuple[int, int] | None, channel: bool = False,
    ) -> None:  # fmt: skip
        self.channel = channel
        self.image, self.name, self.labels, self.options = image, name, dict(labels), list(options)
        self.secrets, self.mount, self.host_work_dir = dict(secrets), mount, host_work_dir
        self.auto_remove, self.keep, self.init_command, self.owner = auto_remove, keep, init_command, owner

    def code_file(self, relative: str) -> str:
        """A block's file as the user can open it: on this host when mounted, else in the container."""
        if self.mount is not None:
            return os.path.join(self.host_work_dir, relative)
        return f"{WORKSPACE}/{relative}"

    def prepare_mount(self) -> None:
        """Let the container's unprivileged user write the mounted work dir (when we are root)."""
        if self.owner is not None and self.mount is not None and os.geteuid() == 0:
            os.chown(self.host_work_dir, *self.owner)


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
        # --volumes: a container without a mounted work dir has an anonymous volume there.
        return ["rm", "--force", "--volumes", *(["--time", "0"] if self.is_podman else []), *names]

    # -- queries: gc and doctor run these; no other module spells a docker flag

    @staticmethod
    def labelled_args(label: str) -> list[str]:
        """``ps`` listing the full IDs (only) of all containers carrying ``label``."""
        return ["ps", "--all", "--quiet", "--no-trunc", "--filter", f"label={label}"]

    @staticmethod
    def inspect_args(*ids: str) -> list[str]:
        """``container inspect`` of containers: JSON on stdout."""
        return ["container", "inspect", *ids]

    def server_version_args(self) -> list[str]:
        """``version`` printing the engine's version (and API version, for Docker)."""
        template = "{{.Server.Version}}" if self.is_podman else "{{.Server.Version}} (API {{.Server.APIVersion}})"
        return ["version", "--format", template]

    def rootless_args(self) -> list[str]:
        """``info`` printing whether the engine is rootless (Podman: true/false; Docker: its security options)."""
        template = "{{.Host.Security.Rootless}}" if self.is_podman else "{{json .SecurityOptions}}"
        return ["info", "--format", template]

    @staticmethod
    def running_args(name: str) -> list[str]:
        """``inspect`` printing ``true`` while the container runs."""
        return ["inspect", "--format", "{{.State.Running}}", name]

    @staticmethod
    def image_id_args(image: str) -> list[str]:
        """``image inspect`` printing the image's ID."""
        return ["image", "inspect", "--format", "{{.Id}}", image]

    @staticmethod
    def mount_probe_args(folder: str, image: str) -> list[str]:
        """``run`` reading ``folder``/probe through a read-only bind mount (does the engine see our paths?)."""
        return ["run", "--rm", "--network", "none", "--volume", f"{folder}:/probe:ro", "--entrypoint", "cat",
                image, "/probe/probe"]  # fmt: skip

    def remove_quietly(self, name: str) -> None:
        """Remove a container by force, ignoring failures (it may be gone already)."""
        with contextlib.suppress(DockerError):
            self.run(*self.remove_args(name), check=False)

    def run_args(
        self, spec: ContainerSpec, *, attached: bool, script: str = KEEPALIVE, supervisor: str | None = None,
        channel: SocketChannel | None = None,
    ) -> list[str]:  # fmt: skip
        """The whole argv of ``docker run`` for ``spec``, attached (``-i``) or detached.

        The main process is ``sh -c script``, or with ``supervisor`` (its source) BOOT running it,
        told to connect to ``channel`` (mounted) if one is given.
        """
        argv = [*self.argv, "run", *(["-i"] if attached else ["--detach"]), "--name", spec.name, "--workdir", WORKSPACE]
        if attached and not self.is_podman:
            argv.append("--sig-proxy=false")  # Ctrl-C reaches us, not the container
        for key, value in spec.labels.items():
            argv += ["--label", f"{key}={value}"]
        # The supervisor's stdout is the protocol: the engine must not copy every byte to a log file.
        argv += ["--log-driver", "none"]
        if spec.auto_remove:
            argv.append("--rm")
        # Without a mount the work dir is an anonymous volume: Podman will not start in a missing
        # --workdir (Docker makes one), and a volume stays writable under --read-only.
        argv += ["--volume", WORKSPACE if spec.mount is None else f"{spec.mount}:{WORKSPACE}"]
        for key in spec.secrets:
            argv += ["--env", key]  # the value comes from the client's environment (see env())
        main = [script] if supervisor is None else [BOOT, supervisor]
        if channel is not None and supervisor is not None:
            argv += channel.run_args()
            main += channel.supervisor_args()
        return [*argv, *spec.options, "--entrypoint", "/bin/sh", spec.image, "-c", *main]

    def exec_supervisor_args(self, name: str, source: str) -> list[str]:
        """``docker exec -i`` of the supervisor in a running container (a kept one)."""
        return [*self.argv, "exec", "-i", "--workdir", WORKSPACE, name, "/bin/sh", "-c", BOOT, source]

    def exec_args(
        self, name: str, *command: str, interactive: bool = False, env_names: Sequence[str] = ()
    ) -> list[str]:
        """``docker exec`` of ``command`` in the work dir of a running container.

        ``env_names`` are passed as ``--env NAME``: their values come from the client's environment.
        """
        env = [item for key in env_names for item in ("--env", key)]
        return [*self.argv, "exec", *(["-i"] if interactive else []), *env, "--workdir", WORKSPACE, name, *command]

    @staticmethod
    def copy_in_args(name: str, folder: str) -> list[str]:
        """``cp`` extracting the tar stream on stdin into ``folder`` of the container."""
        return ["cp", "-", f"{name}:{folder}"]

    @staticmethod
    def copy_file_in_args(name: str, source: str, folder: str) -> list[str]:
        """``cp`` of the host file ``source`` (an absolute path) into the existing ``folder/`` of the container."""
        return ["cp", source, f"{name}:{folder.rstrip('/')}/"]

    @staticmethod
    def copy_out_args(name: str, path: str) -> list[str]:
        """``cp`` writing ``path`` of the container (not following a final symlink) as a tar stream to stdout."""
        return ["cp", f"{name}:{path}", "-"]

    def is_remote(self) -> bool:
        """Whether the engine cannot see this host's paths (DOCKER_HOST or a context over tcp/ssh)."""
        return engine_is_remote(self)

    @staticmethod
    def env(spec: ContainerSpec) -> dict[str, str]:
        """The client's environment for ``docker run``: ours plus the secrets' values."""
        return {**os.environ, **spec.secrets}

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
        self, *args: str, deadline: float | None = None, input: bytes | None = None, check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        """Run one CLI call with a deadline (CLI_DEADLINE by default); raise the mapped DockerError on failure.

        ``args`` may start with the client's own argv (as the builders above return it).
        """
        deadline = CLI_DEADLINE if deadline is None else deadline
        argv = list(args) if list(args[: len(self.argv)]) == self.argv else [*self.argv, *args]
        try:
            done = subprocess.run(
                argv, input=input, capture_output=True, timeout=deadline, check=False,
                env=None if env is None else dict(env),
            )  # fmt: skip
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
) -> list[str]:
    """Translate the executor's options into ``docker run`` flags, one argument per item.

    The environment is not here: its values travel in the client's environment (see ContainerSpec).
    """
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


def engine_is_remote(cli: DockerCLI) -> bool:
    """Whether the engine cannot see this host's paths (DOCKER_HOST or context over tcp/ssh)."""
    host = os.environ.get("DOCKER_HOST", "") or os.environ.get("CONTAINER_HOST", "")
    if host:
        return not host.startswith(("unix://", "npipe://"))
    if _context_selected(cli.argv):
        done = cli.run("context", "inspect", "--format", "{{.Endpoints.docker.Host}}", check=False)
        endpoint = done.stdout.decode().strip()
        return bool(endpoint) and not endpoint.startswith(("unix://", "npipe://"))
    return False


def _context_selected(argv: Sequence[str]) -> bool:
    """Whether a docker context may be chosen: --context NAME or =NAME (-c), DOCKER_CONTEXT, `docker context use`."""
    if os.environ.get("DOCKER_CONTEXT"):
        return True
    if any(arg in ("--context", "-c") or arg.startswith(("--context=", "-c=")) for arg in argv[1:]):
        return True
    config_dir = os.environ.get("DOCKER_CONFIG") or os.path.join(os.path.expanduser("~"), ".docker")
    try:
        with open(os.path.join(config_dir, "config.json"), encoding="utf-8") as handle:
            import json

            current = json.load(handle).get("currentContext")
    except (OSError, ValueError, AttributeError):
        return False
    return current not in (None, "", "default")
