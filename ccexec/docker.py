"""DockerCommandLineCodeExecutor: each block is a file run by a new process in a container.

The container's main process is ccexec's runner (``_runner_main.py``, shipped as text),
attached to this process over one ``docker run -i``: each block is a framed request on its
stdin, and the runner starts a new process per block, enforces the deadline, kills the
block's whole tree and streams the output back. No CLI call per block; when this process
ends (even by SIGKILL) the runner sees its stdin close and the container ends.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import socket
import subprocess
import threading
import time
import weakref
from collections import deque
from pathlib import Path
from typing import Any, Mapping, Sequence

from ._capture import OutputCallback, OutputCapture
from ._docker_cli import RUN_DEADLINE, ClientCommand, DockerCLI
from ._executor import DEFAULT_MAX_OUTPUT_BYTES, BaseCommandLineExecutor
from ._process import Cancel
from .blocks import CodeBlock, FilenameOutsideWorkspace, Language, container_relative_path, generated_filename
from .errors import ContainerGoneError, DockerError, InvalidArgumentError
from .results import TIMEOUT_EXIT_CODE, BlockResult

#: Where the work dir is inside the container.
WORKSPACE = "/workspace"
#: Label every ccexec container carries; ``python -m ccexec gc`` looks for it.
LABEL = "org.ccexec"
#: Seconds a block may overrun its deadline before the runner counts as hung.
_RUNNER_GRACE = 10.0
#: Seconds stop() waits for the container to end by itself before removing it by force.
_STOP_DEADLINE = 10.0
_RUNNER_SOURCE_FILE = Path(__file__).with_name("_runner_main.py")
# Prefer python3 (some images have no `python`); fall back to python.
_BOOT = 'command -v python3 >/dev/null && exec python3 -c "$0" || exec python -c "$0"'
_BLOCK_ENV = {"PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"}
_live: weakref.WeakSet[DockerCommandLineCodeExecutor] = weakref.WeakSet()


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
        mount_work_dir: None picks by itself (no mount when the engine is remote); False
            sends code over the CLI only, True forces the bind mount.
        gpus, network, memory, cpus, pids_limit, read_only, user, cap_drop, security_opt:
            passed as the ``docker run`` flags of the same names; run_args: extra flags.
        env: variables set in the container. languages, max_output_bytes, on_output: as
            for the local executor.
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
        gpus: str | None = None,
        network: str | None = None,
        memory: str | None = None,
        cpus: float | None = None,
        pids_limit: int | None = None,
        read_only: bool = False,
        user: str | None = None,
        cap_drop: Sequence[str] = (),
        security_opt: Sequence[str] = (),
        run_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        languages: Mapping[str, Language] | None = None,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        on_output: OutputCallback = None,
    ) -> None:
        super().__init__(
            timeout=timeout,
            work_dir=work_dir,
            functions=functions,
            functions_module=functions_module,
            languages=languages,
            max_output_bytes=max_output_bytes,
            on_output=on_output,
        )
        if not image or not isinstance(image, str):
            raise InvalidArgumentError(f"image must be a non-empty string, got {image!r}", image=image)
        self._image = image
        self._container_name = container_name or f"ccexec-{os.urandom(5).hex()}"
        self._bind_dir = None if bind_dir is None else str(bind_dir)
        self._auto_remove = auto_remove
        self._stop_container = stop_container
        self._init_command = init_command
        self._delete_tmp_files = delete_tmp_files
        self._cli = DockerCLI(docker)
        self._mount_work_dir = mount_work_dir
        self._options = _run_options(
            extra_volumes=extra_volumes,
            extra_hosts=extra_hosts,
            gpus=gpus,
            network=network,
            memory=memory,
            cpus=cpus,
            pids_limit=pids_limit,
            read_only=read_only,
            user=user,
            cap_drop=cap_drop,
            security_opt=security_opt,
            env=env,
        ) + [str(arg) for arg in run_args]
        self._session: _RunnerSession | None = None
        _live.add(self)

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
        return Path(self._bind_dir) if self._bind_dir is not None else self.work_dir

    @property
    def mounts_work_dir(self) -> bool:
        """Whether the work dir is bind-mounted (False when the engine is remote, unless forced)."""
        if self._mount_work_dir is None:
            self._mount_work_dir = not _engine_is_remote(self._cli)
        return self._mount_work_dir

    @property
    def _delete_generated(self) -> bool:  # type: ignore[override]
        return self._delete_tmp_files

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the container (if not running) and wait until its runner is ready.

        Raises ImageNotFoundError, EngineUnavailableError, DockerNotFoundError... (see errors).
        """
        super().start()
        with self._lock:
            if self._session is not None and self._session.alive:
                return
            self._session = _RunnerSession(self._cli, self._run_argv(), self._container_name, self._image)
        info = self._session.info
        if info.get("init_exit_code"):
            output = info.get("init_output", "")
            self._close_engine()
            raise DockerError(
                f"init_command {self._init_command!r} failed with exit code {info['init_exit_code']}: {output}",
                output=output,
            )

    def _ensure_started(self) -> None:
        session = self._session
        if session is None or not session.alive:
            self.start()

    def _close_engine(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close(stop_container=self._stop_container)

    def _run_argv(self) -> list[str]:
        labels = {
            LABEL: "1",
            f"{LABEL}.owner-pid": str(os.getpid()),
            f"{LABEL}.owner-start": _process_start_time(os.getpid()),
            f"{LABEL}.host": socket.gethostname(),
            f"{LABEL}.created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        argv = ["run", "-i", "--name", self._container_name, "--workdir", WORKSPACE]
        if not self._cli.is_podman:
            argv.append("--sig-proxy=false")  # Ctrl-C reaches us, not the runner
        for key, value in labels.items():
            argv += ["--label", f"{key}={value}"]
        if self._auto_remove:
            argv.append("--rm")
        if self.mounts_work_dir:
            argv += ["--volume", f"{self.bind_dir}:{WORKSPACE}"]
        if self._init_command:
            argv += ["--env", f"CCEXEC_INIT_COMMAND={self._init_command}"]
        argv += [*self._options, "--entrypoint", "/bin/sh", self._image, "-c", _BOOT, _runner_source()]
        return argv

    # -- blocks --------------------------------------------------------------------------------

    def _run_file(self, block: CodeBlock, language: Language, name: str | None, cancel: Cancel) -> BlockResult:
        try:
            relative = (
                generated_filename(block.code, language.extension)
                if name is None
                else container_relative_path(name, WORKSPACE)
            )
        except FilenameOutsideWorkspace:
            return self._outside_workspace(block.language, name or "")
        session = self._session
        if session is None or not session.alive:
            self.start()
            session = self._session
            assert session is not None
        capture = OutputCapture(self._max_output_bytes, self._on_output)
        request = {
            "op": "run",
            "path": relative,
            "code": block.code,
            "argv": language.argv("{file}", "{python}"),
            "timeout": self._timeout,
            "env": _BLOCK_ENV,
        }
        outcome = session.run(request, capture, cancel, self._timeout + _RUNNER_GRACE)
        code_file = self._reported_path(relative)
        if outcome.get("not_started"):
            return BlockResult(block.language, 1, capture.text(), None)
        exit_code = int(outcome["exit_code"])
        if outcome.get("timed_out"):
            exit_code = TIMEOUT_EXIT_CODE
            capture.add_note(f"Timeout: the block ran longer than {self._timeout:g} s and was stopped\n")
        elif outcome.get("cancelled"):
            capture.add_note("Cancelled: the block was stopped before it finished\n")
        return BlockResult(
            language=block.language,
            exit_code=exit_code,
            output=capture.text(),
            code_file=code_file,
            duration=float(outcome.get("duration", 0.0)),
            timed_out=bool(outcome.get("timed_out")),
            truncated=capture.truncated,
        )

    def _reported_path(self, relative: str) -> str:
        """The code file as the user can open it: on the host when mounted, else in the container."""
        if self.mounts_work_dir:
            return str(self.work_dir / relative)
        return f"{WORKSPACE}/{relative}"

    def _delete_files(self, paths: list[str]) -> None:
        session = self._session
        if session is not None and session.alive:
            prefix = str(self.work_dir) + os.sep if self.mounts_work_dir else WORKSPACE + "/"
            session.send({"op": "delete", "paths": [p[len(prefix) :] for p in paths]})


class _Pending:
    """A block the runner is working on: where its output goes, and its end."""

    __slots__ = ("capture", "done", "result")

    def __init__(self, capture: OutputCapture) -> None:
        self.capture = capture
        self.done = threading.Event()
        self.result: dict[str, Any] | None = None


class _RunnerSession:
    """One attached ``docker run -i`` process whose container runs the runner."""

    def __init__(self, cli: DockerCLI, run_args: list[str], name: str, image: str) -> None:
        self._cli = cli
        self.name = name
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._write_lock = threading.Lock()
        self._stderr: deque[bytes] = deque(maxlen=64)
        self._ready = threading.Event()
        self.info: dict[str, Any] = {}
        self.alive = False
        argv = [*cli.argv, *run_args]
        # A new session: a Ctrl-C in the terminal must not kill the client before we stop.
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        threading.Thread(target=self._read_frames, name=f"ccexec-{name}-out", daemon=True).start()
        threading.Thread(target=self._read_stderr, name=f"ccexec-{name}-err", daemon=True).start()
        if not self._ready.wait(RUN_DEADLINE) or not self.alive:
            self._proc.kill()
            self._proc.wait()
            if self._ready.is_set():
                raise cli.error(argv, self.stderr_text(), image=image)
            self._remove()
            raise cli.error(argv, f"the container did not start within {RUN_DEADLINE:g} s", image=image)

    def stderr_text(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace")

    def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        for line in iter(self._proc.stderr.readline, b""):
            self._stderr.append(line)

    def _read_frames(self) -> None:
        stream = self._proc.stdout
        assert stream is not None
        try:
            while True:
                header = stream.readline()
                if not header:
                    break
                kind, _, rest = header.rstrip(b"\n").partition(b" ")
                if kind == b"o":
                    ident, length = rest.split(b" ")
                    data = stream.read(int(length))
                    pending = self._pending.get(int(ident))
                    if pending is not None:
                        pending.capture.feed(data)
                elif kind == b"x":
                    ident, payload = rest.split(b" ", 1)
                    pending = self._pending.get(int(ident))
                    if pending is not None:
                        pending.result = json.loads(payload)
                        pending.done.set()
                elif kind == b"r":
                    self.info = json.loads(rest)
                    self.alive = True
                    self._ready.set()
        finally:
            self.alive = False
            self._ready.set()
            for pending in list(self._pending.values()):
                pending.done.set()

    def send(self, request: dict[str, Any]) -> None:
        line = json.dumps(request).encode() + b"\n"
        assert self._proc.stdin is not None
        try:
            with self._write_lock:
                self._proc.stdin.write(line)
                self._proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.alive = False

    def run(self, request: dict[str, Any], capture: OutputCapture, cancel: Cancel, deadline: float) -> dict[str, Any]:
        """Send one block and wait for its end; raise ContainerGoneError when the container dies."""
        ident = next(self._ids)
        pending = _Pending(capture)
        self._pending[ident] = pending
        try:
            self.send({**request, "id": ident})
            end = time.monotonic() + deadline
            cancel_sent = False
            while not pending.done.wait(0.05):
                if cancel.is_set() and not cancel_sent:
                    self.send({"op": "cancel", "id": ident})
                    cancel_sent = True
                    end = min(end, time.monotonic() + _RUNNER_GRACE)
                if time.monotonic() > end:
                    self.close(stop_container=True)
                    raise ContainerGoneError(
                        f"container {self.name} did not report the end of a block {deadline:g} s after "
                        "it started; it was removed. The next call starts a new container.",
                        container=self.name,
                    )
        finally:
            del self._pending[ident]
        if pending.result is None:
            raise self._gone_error()
        return pending.result

    def _gone_error(self) -> ContainerGoneError:
        code = self._proc.wait()
        reason = "killed (SIGKILL or out of memory)" if code == 137 else f"exit status {code}"
        return ContainerGoneError(
            f"container {self.name} ended while a block was running ({reason}); the block's result "
            f"is lost. The next call starts a new container. {self.stderr_text().strip()}".strip(),
            container=self.name,
            exit_status=code,
        )

    def close(self, stop_container: bool = True) -> None:
        """End the session: the runner sees its stdin close, kills its blocks and exits."""
        if not stop_container:
            return
        try:
            assert self._proc.stdin is not None
            self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(_STOP_DEADLINE)
        except subprocess.TimeoutExpired:
            self._remove()
            self._proc.kill()
            self._proc.wait()
        self.alive = False

    def _remove(self) -> None:
        with contextlib.suppress(DockerError):
            self._cli.run("rm", "-f", self.name, check=False)


def collect_garbage(docker: ClientCommand = "docker", *, dry_run: bool = False) -> list[str]:
    """Remove ccexec containers of this host whose owner process is gone; return their names.

    Only containers carrying ccexec's label, created on this host, whose owner pid no longer
    runs (or now belongs to a newer process) are touched; nothing else ever is.
    """
    cli = DockerCLI(docker)
    labels = ("owner-pid", "owner-start", "host")
    template = "{{.Names}}" + "".join(f'\t{{{{.Label "{LABEL}.{label}"}}}}' for label in labels)
    listing = cli.run("ps", "--all", "--filter", f"label={LABEL}", "--format", template)
    orphans = []
    for line in listing.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split("\t")
        if len(fields) != 4 or fields[3] != socket.gethostname() or not fields[1].isdigit():
            continue
        name, pid, start = fields[0], int(fields[1]), fields[2]
        if _process_start_time(pid) == start and start:
            continue  # its owner still runs
        orphans.append(name)
    if orphans and not dry_run:
        cli.run("rm", "--force", *orphans, check=False)
    return orphans


def _runner_source() -> str:
    return _RUNNER_SOURCE_FILE.read_text(encoding="utf-8")


def _run_options(
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
    for volume in _volumes(extra_volumes):
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


def _volumes(extra_volumes: Mapping[str, Mapping[str, str]] | Sequence[str] | None) -> list[str]:
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


def _engine_is_remote(cli: DockerCLI) -> bool:
    """Whether the engine cannot see this host's paths (DOCKER_HOST or context over tcp/ssh)."""
    host = os.environ.get("DOCKER_HOST", "") or os.environ.get("CONTAINER_HOST", "")
    if host:
        return not host.startswith(("unix://", "npipe://"))
    if "--context" in cli.argv or "-c" in cli.argv or os.environ.get("DOCKER_CONTEXT"):
        done = cli.run("context", "inspect", "--format", "{{.Endpoints.docker.Host}}", check=False)
        endpoint = done.stdout.decode().strip()
        return bool(endpoint) and not endpoint.startswith(("unix://", "npipe://"))
    return False


def _process_start_time(pid: int) -> str:
    """The process's start time in clock ticks (Linux), so gc is not fooled by a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


@atexit.register
def _stop_all() -> None:
    for executor in list(_live):
        with contextlib.suppress(Exception):  # best effort at interpreter exit
            executor.stop()
