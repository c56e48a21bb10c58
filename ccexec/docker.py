"""DockerCommandLineCodeExecutor: each block is a file run by a new process in a container.

The container's main process is ccexec's runner (``_runner_main.py``, shipped as text),
attached to this process over one ``docker run -i``: each block is a framed request on its
stdin, and the runner starts a new process per block, enforces the deadline, kills the
block's whole tree and streams the output back. No CLI call per block; when this process
ends (even by SIGKILL) the runner sees its stdin close and the container ends.
"""

from __future__ import annotations

import os
import time

from ._capture import OutputCapture
from ._executor import DEFAULT_MAX_OUTPUT_BYTES, BaseCommandLineExecutor
from .blocks import (
    CodeBlock,
    FilenameOutsideWorkspace,
    Language,
    container_relative_path,
    generated_filename,
    normalize_tag,
    requested_filename,
)
from .errors import DockerError, InvalidArgumentError
from .results import TIMEOUT_EXIT_CODE, BlockResult, describe_exit

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import time matters)
if TYPE_CHECKING:
    # The CLI and session modules load when an executor is created, not on `import ccexec`.
    import weakref
    from pathlib import Path
    from typing import Any, Iterator, Mapping, Sequence, Union

    from ._capture import OutputCallback
    from .backends.docker_cli import ClientCommand, DockerCLI
    from ._process import Cancel
    from ._session import ExecSession, RunnerSession

    _Session = Union[RunnerSession, ExecSession]

#: Where the work dir is inside the container.
WORKSPACE = "/workspace"
#: Label every ccexec container carries; ``python -m ccexec gc`` looks for it.
LABEL = "org.ccexec"
#: What ``hardened=True`` sets, unless given explicitly (plus read_only, cap_drop=ALL,
#: no-new-privileges and a non-root user: see the README's security model).
HARDENED: dict[str, Any] = {"network": "none", "memory": "512m", "cpus": 1.0, "pids_limit": 256}
#: The ways blocks reach the container (see the class docstring).
MODES = ("runner", "exec")
_RUNNER_SOURCE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_runner_main.py")
# Prefer python3 (some images have no `python`); fall back to python.
# -I -S: the runner needs only the standard library, and site's imports cost ~5 ms per start.
_BOOT = (
    'for py in python3 python; do command -v $py >/dev/null && exec $py -I -S -c "$0"; done; '
    "echo \"ccexec: the image has neither python3 nor python; use mode='exec' (only sh needed)\" >&2; exit 127"
)
# The main process of a container that outlives us (stop_container=False): sleeps until stopped.
_KEEPALIVE = 'trap "exit 0" TERM; while :; do sleep 3600 & wait $!; done'
_BLOCK_ENV = {"PYTHONIOENCODING": "utf-8", "PYTHONUNBUFFERED": "1"}
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
        if mode not in MODES:
            raise InvalidArgumentError(f"mode must be one of {MODES}, got {mode!r}", mode=mode)
        self._mode = mode
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
        self._hardened_user = user if hardened else None
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
            env=env,
        ) + [str(arg) for arg in run_args]
        self._session: _Session | None = None
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
        """Start the container (if not running) and wait until it is ready for blocks.

        Raises ImageNotFoundError, EngineUnavailableError, DockerError when init_command
        fails... (see ccexec.errors).
        """
        super().start()
        with self._lock:
            if self._session is not None and self._session.alive:
                return
            if self._session is not None:  # its container died: release what is left of it
                self._session.close()
            self._prepare_work_dir_for_user()
            self._session = self._start_session()
            self._functions_ready = not self._functions  # a new container needs the packages again
        info = self._session.info
        if info.get("init_exit_code"):
            output = info.get("init_output", "")
            self._close_engine()
            raise DockerError(
                f"init_command {self._init_command!r} failed with exit code {info['init_exit_code']}: {output}",
                output=output,
            )

    def _prepare_work_dir_for_user(self) -> None:
        """Let the unprivileged container user write the work dir when we run as root."""
        if self._hardened_user == _NOBODY and self.mounts_work_dir and os.geteuid() == 0:
            os.chown(self.work_dir, 65534, 65534)

    def _start_session(self) -> _Session:
        from ._session import WAITER, ExecSession, RunnerSession

        name, image = self._container_name, self._image
        if self._stop_container:
            # The container's main process is attached to us: it ends when we do.
            main = _BOOT if self._mode == "runner" else WAITER
            args = self._run_args(["run", "-i"], main, _runner_source())
            if self._mode == "runner":
                return RunnerSession(self._cli, args, name, image, owns_container=True)
            session = ExecSession.attached(self._cli, args, name, image, self._host_work_dir())
        else:
            # Kept on purpose (AutoGen's stop_container=False): a detached container that sleeps.
            self._cli.run(*self._run_args(["run", "--detach"], _KEEPALIVE))
            if self._mode == "runner":
                exec_args = ["exec", "-i", "--workdir", WORKSPACE, name, "/bin/sh", "-c", _BOOT, _runner_source()]
                if self._init_command:
                    exec_args[2:2] = ["--env", f"CCEXEC_INIT_COMMAND={self._init_command}"]
                return RunnerSession(self._cli, exec_args, name, image, owns_container=False)
            session = ExecSession(self._cli, name, None, self._host_work_dir())
        if self._init_command:
            done = self._cli.run("exec", name, "/bin/sh", "-c", self._init_command, check=False)
            output = (done.stdout + done.stderr).decode("utf-8", "replace")
            session.info = {"init_exit_code": done.returncode, "init_output": output}
        return session

    def _host_work_dir(self) -> str | None:
        return str(self.work_dir) if self.mounts_work_dir else None

    def _ensure_started(self) -> None:
        session = self._session
        if session is None or not session.alive:
            self.start()

    def _close_engine(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session is not None:
            session.close()

    def _run_args(self, command: list[str], *main: str) -> list[str]:
        """``docker run`` arguments: labels, mounts, options, then ``sh -c MAIN...``."""
        labels = {
            LABEL: "1",
            f"{LABEL}.owner-pid": str(os.getpid()),
            f"{LABEL}.owner-start": _process_start_time(os.getpid()),
            f"{LABEL}.host": os.uname().nodename,
            f"{LABEL}.created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        argv = [*command, "--name", self._container_name, "--workdir", WORKSPACE]
        if "-i" in command and not self._cli.is_podman:
            argv.append("--sig-proxy=false")  # Ctrl-C reaches us, not the container
        for key, value in labels.items():
            argv += ["--label", f"{key}={value}"]
        # The runner's stdout is the protocol: the engine must not copy every byte to a log file.
        argv += ["--log-driver", "none"]
        if self._auto_remove:
            argv.append("--rm")
        if self.mounts_work_dir:
            argv += ["--volume", f"{self.bind_dir}:{WORKSPACE}"]
        if self._init_command and self._mode == "runner" and self._stop_container:
            argv += ["--env", f"CCEXEC_INIT_COMMAND={self._init_command}"]
        return [*argv, *self._options, "--entrypoint", "/bin/sh", self._image, "-c", *main]

    # -- blocks --------------------------------------------------------------------------------

    def _run_file(self, block: CodeBlock, language: Language, name: str | None, cancel: Cancel) -> BlockResult:
        try:
            relative = self._relative_path(block, language, name)
        except FilenameOutsideWorkspace:
            return self._outside_workspace(block.language, name or "")
        capture = OutputCapture(self._max_output_bytes, self._on_output)
        outcome = self._live_session().run(self._request(block, language, relative), capture, cancel, self._timeout)
        return self._block_result(block, relative, capture, outcome)

    def _run_sequence(self, blocks: list[CodeBlock], cancel: Cancel) -> Iterator[tuple[BlockResult, bool]]:
        """Send a call's blocks to the runner at once, chained (see RunnerSession.run_chain)."""
        if len(blocks) < 2:
            yield from super()._run_sequence(blocks, cancel)
            return
        # The blocks before the first one that cannot start (bad language or name) are chained;
        # that one's failure is reported after them, if they all succeed.
        plan: list[tuple[CodeBlock, Language, str, bool]] = []
        stopper: CodeBlock | None = None
        for block in blocks:
            language = self._languages.get(normalize_tag(block.language))
            name = requested_filename(block.code)
            try:
                if language is None:
                    raise LookupError(block.language)
                plan.append((block, language, self._relative_path(block, language, name), name is None))
            except (LookupError, FilenameOutsideWorkspace):
                stopper = block
                break
        captures = [OutputCapture(self._max_output_bytes, self._on_output) for _ in plan]
        requests = [self._request(block, language, relative) for block, language, relative, _ in plan]
        outcomes = self._live_session().run_chain(requests, captures, cancel, self._timeout) if plan else iter(())
        for (block, _, relative, generated), capture, outcome in zip(plan, captures, outcomes):
            result = self._block_result(block, relative, capture, outcome)
            yield result, generated
            if result.exit_code != 0:
                return
        if stopper is not None and not cancel.is_set():
            yield self._run_one(stopper, cancel)

    def _relative_path(self, block: CodeBlock, language: Language, name: str | None) -> str:
        """The block's file, relative to /workspace; raises FilenameOutsideWorkspace."""
        if name is None:
            return generated_filename(block.code, language.extension)
        return container_relative_path(name, WORKSPACE)

    def _live_session(self) -> _Session:
        self._ensure_started()
        assert self._session is not None
        return self._session

    def _request(self, block: CodeBlock, language: Language, relative: str) -> dict[str, Any]:
        return {
            "path": relative,
            "code": block.code,
            "argv": language.argv("{file}", "{python}"),
            "timeout": self._timeout,
            "env": _BLOCK_ENV,
        }

    def _block_result(
        self, block: CodeBlock, relative: str, capture: OutputCapture, outcome: dict[str, Any]
    ) -> BlockResult:
        """Turn the runner's report into a BlockResult, with ccexec's notes."""
        if outcome.get("not_started"):
            return BlockResult(block.language, 1, capture.text(), None)
        exit_code = int(outcome["exit_code"])
        if outcome.get("timed_out"):
            exit_code = TIMEOUT_EXIT_CODE
            capture.add_note(f"Timeout: the block ran longer than {self._timeout:g} s and was stopped\n")
        elif outcome.get("cancelled"):
            capture.add_note("Cancelled: the block was stopped before it finished\n")
        elif exit_code == 137:
            capture.add_note(
                "ccexec: the process was killed (SIGKILL); under a memory limit this means it ran out of memory\n"
            )
        elif 128 < exit_code < 160:
            capture.add_note(f"ccexec: the process was killed by a signal ({describe_exit(exit_code)})\n")
        return BlockResult(
            language=block.language,
            exit_code=exit_code,
            output=capture.text(),
            code_file=self._reported_path(relative),
            duration=float(outcome.get("duration", 0.0)),
            timed_out=bool(outcome.get("timed_out")),
            truncated=capture.truncated,
        )

    def _run_setup(self, argv: list[str], write: tuple[str, str] | None, capture: OutputCapture) -> tuple[int, bool]:
        session = self._session
        assert session is not None
        request = {
            "path": None if write is None else write[0],
            "code": "" if write is None else write[1],
            "argv": argv,
            "timeout": self._setup_timeout,
            "env": _BLOCK_ENV,
        }
        from ._process import Cancel

        cancel = Cancel()
        try:
            outcome = session.run(request, capture, cancel, self._setup_timeout)
        finally:
            cancel.close()
        return int(outcome["exit_code"]), bool(outcome.get("timed_out"))

    def _work_dir_for_code(self) -> str:
        return WORKSPACE

    def _can_run(self, language: Language) -> bool:
        return language.command[0] != "pwsh"  # not in the usual images

    def _reported_path(self, relative: str) -> str:
        """The code file as the user can open it: on the host when mounted, else in the container."""
        if self.mounts_work_dir:
            return str(self.work_dir / relative)
        return f"{WORKSPACE}/{relative}"

    def _delete_files(self, paths: list[str]) -> None:
        session = self._session
        if session is not None and session.alive:
            prefix = str(self.work_dir) + os.sep if self.mounts_work_dir else WORKSPACE + "/"
            session.delete([p[len(prefix) :] for p in paths])


def collect_garbage(docker: ClientCommand = "docker", *, dry_run: bool = False) -> list[str]:
    """Remove ccexec containers of this host whose owner process is gone; return their names.

    Only containers carrying ccexec's label, created on this host, whose owner pid no longer
    runs (or now belongs to a newer process) are touched; nothing else ever is.
    """
    from .backends.docker_cli import DockerCLI

    cli = DockerCLI(docker)
    labels = ("owner-pid", "owner-start", "host")
    # docker's `ps` template has a .Label function; podman's has only the .Labels map.
    field = '{{{{index .Labels "{}"}}}}' if cli.is_podman else '{{{{.Label "{}"}}}}'
    template = "{{.Names}}" + "".join("\t" + field.format(f"{LABEL}.{label}") for label in labels)
    listing = cli.run("ps", "--all", "--filter", f"label={LABEL}", "--format", template)
    orphans = []
    for line in listing.stdout.decode("utf-8", "replace").splitlines():
        fields = line.split("\t")
        if len(fields) != 4 or fields[3] != os.uname().nodename or not fields[1].isdigit():
            continue
        name, pid, start = fields[0], int(fields[1]), fields[2]
        if _process_start_time(pid) == start and start:
            continue  # its owner still runs
        orphans.append(name)
    if orphans and not dry_run:
        # Kept containers (stop_container=False) carry the label too, but gc only runs when asked.
        cli.run(*cli.remove_args(*orphans), check=False)
    return orphans


def _runner_source() -> str:
    with open(_RUNNER_SOURCE_FILE, encoding="utf-8") as handle:
        return handle.read()


def _engine_is_remote(cli: DockerCLI) -> bool:
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


_NOBODY = "65534:65534"


def _unprivileged_user() -> str:
    """This user's uid:gid (files in the work dir stay theirs), or nobody when we are root."""
    uid, gid = os.getuid(), os.getgid()
    return _NOBODY if uid == 0 else f"{uid}:{gid}"


def _process_start_time(pid: int) -> str:
    """The process's start time in clock ticks (Linux), so gc is not fooled by a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


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
