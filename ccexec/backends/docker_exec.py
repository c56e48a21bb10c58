"""Exec mode: one ``docker exec`` per block, for images with ``sh`` but no Python.

No supervisor runs in the container, so exec mode buys its guarantees differently:

- The host never writes in the work dir: the block's code travels on the exec's stdin and a
  shell inside the container writes it (a symlink the block planted can only point inside
  the container's own view).
- Blocks of one executor run one at a time, so at a block's end everything in the container
  but PID 1 belongs to it: the wrapper kills it all (no pid files, no markers a block could
  edit), and at a timeout or cancellation a second exec does the same.
- PID 1 is a shell that reads our stdin and reaps orphans; it has no signal handler, so a
  block cannot signal it (the kernel protects a namespace's init).
"""

from __future__ import annotations

import contextlib
import os
import selectors
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Generator, Sequence

from .._capture import OutputCapture
from .._changes import Changes
from .._client import Cancel
from .._protocol import KILL_WAIT_LIMIT, TERM_GRACE, BlockEnd, RunRequest
from ..errors import ContainerGoneError, DockerError
from . import WORKSPACE
from .docker_cli import CLI_DEADLINE, RUN_DEADLINE, ContainerSpec, DockerCLI, wait_exit
from .docker_files import files_of, listing_source

if TYPE_CHECKING:
    from . import Files

# PID 1 of an attached exec-mode container: a reader of our stdin in the background (its pid
# is told to us); PID 1 waits for it, reaping adopted orphans meanwhile, and exits when our
# stdin closes. After the ready line nothing in the container holds the attached stdout or
# stderr: a block writing to /proc/1/fd/1 must not break (or fill) our client's pipe.
MAIN = 'exec 3<&0; (while read -r _ <&3; do :; done) >/dev/null 2>&1 & echo "ready $!"; exec >/dev/null 2>&1; wait $!'
# Kill every process of the container but PID 1, the reader ($keep) and this shell, until none
# is left (zombies are skipped: PID 1 reaps them). Only builtins: the image may have nothing else.
SWEEP = (
    "n=0; while [ $n -lt 500 ]; do n=$((n+1)); left=0; for d in /proc/[0-9]*; do p=${d#/proc/}; "
    '[ "$p" = 1 ] || [ "$p" = $$ ] || [ "$p" = "$keep" ] && continue; read -r s 2>/dev/null < "$d/stat" || '
    'continue; s=${s##*) }; case $s in Z*) continue;; esac; kill -9 "$p" 2>/dev/null && left=1; done; '
    "[ $left = 0 ] && break; done"
)
# Run one block: $1 is the pid to spare, $2 the file to write from stdin (or - for none), $3
# 1 to delete it afterwards, the rest is the block's argv.
# Strip setuid/setgid bits and remove device nodes in the work dir (a root block could leave
# them for the host's users), when the image has find.
SCRUB = (
    "if command -v find >/dev/null; then find /workspace -xdev \\( -type b -o -type c \\) -exec rm -f {} + "
    "2>/dev/null; find /workspace -xdev -type f -perm /6000 -exec chmod ug-s {} + 2>/dev/null; fi"
)
# The wrapper's first output, before the block runs: seeing it proves the exec started. A docker
# client that could not exec (the container just stopped, say) prints its own error instead,
# with an exit code (1, 125, 126, 255) that a block may also use. The wrapper then sends its
# stderr (so the block's) into its stdout: one stream in the container's own order, whose
# first line is the marker (the client relays stdout and stderr apart, in no fixed order).
STARTED = b"ccexec: exec started\n"
WRAPPER = (
    "printf 'ccexec: exec started\\n'; exec 2>&1; "
    'keep=$1; f=$2; c=$3; shift 3; if [ "$f" != - ]; then d=${f%/*}; { [ "$d" = "$f" ] || mkdir -p "$d"; } && '
    'cat > "$f" || { echo "ccexec: cannot write $f" >&2; exit 1; }; fi; "$@" < /dev/null; rc=$?; '
    + SWEEP
    + "; "
    + SCRUB
    + '; [ "$c" = 1 ] && rm -f "$f"; exit $rc'
)
_CHUNK = 1 << 16
#: What _find_python says when the image has neither python3 nor python (blocks then fail with 127).
NO_PYTHON = "python3"


class ExecBackend:
    """Blocks run one ``docker exec`` each, one at a time; needs only ``sh`` in the image."""

    negative_signals = False

    def __init__(self, cli: DockerCLI, spec: ContainerSpec) -> None:
        self._cli = cli
        self._spec = spec
        self._main: subprocess.Popen[bytes] | None = None
        self._reader = "0"  # the pid of PID 1's stdin reader, which sweeps spare
        self._started = False
        self._gone = False  # the container was found gone: not alive, whatever the main client says yet
        self._python: str | None = None
        self._serial = threading.Lock()  # one block at a time: a block's end kills all but PID 1
        self._changes: Changes | None = None  # of a mounted work dir, once listed

    @property
    def alive(self) -> bool:
        if not self._started or self._gone:
            return False
        return self._main is None or self._main.poll() is None

    def start(self) -> None:
        spec = self._spec
        spec.prepare_mount()
        env = self._cli.env(spec)
        if spec.keep:
            self._cli.run(*self._cli.run_args(spec, attached=False), env=env)
        else:
            argv = self._cli.run_args(spec, attached=True, script=MAIN)
            main = self._main = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                start_new_session=True,
            )  # fmt: skip
            assert main.stdout is not None
            ready = _read_line(main.stdout, RUN_DEADLINE).split()
            if len(ready) != 2 or ready[0] != b"ready" or not ready[1].isdigit():
                main.kill()
                _, stderr = main.communicate()
                self._cli.remove_quietly(spec.name)
                raise self._cli.error(argv, stderr[-4096:], image=spec.image)
            main.stdout.close()
            self._reader = ready[1].decode()
        self._started = True
        if spec.init_command:
            done = self._cli.run(*self._cli.exec_args(spec.name, "/bin/sh", "-s", interactive=True),
                                 input=spec.init_command.encode(), deadline=RUN_DEADLINE, check=False)  # fmt: skip
            if done.returncode != 0:
                output = (done.stdout + done.stderr).decode("utf-8", "replace")
                self.stop()
                raise DockerError(
                    f"init_command {spec.init_command!r} failed with exit code {done.returncode}: {output}",
                    output=output,
                )

    def run(
        self, requests: Sequence[RunRequest], captures: Sequence[OutputCapture], cancel: Cancel
    ) -> Generator[BlockEnd, None, None]:
        for request, capture in zip(requests, captures):
            if cancel.is_set():
                return
            with self._serial:
                end = self._run_one(request, capture, cancel)
            yield end
            if end.exit_code != 0 or end.timed_out or end.cancelled:
                return

    def _run_one(self, request: RunRequest, capture: OutputCapture, cancel: Cancel) -> BlockEnd:
        path = "-" if request.path is None else f"{WORKSPACE}/{request.path}"
        argv = [path if part == "{file}" else part for part in request.argv]
        if "{python}" in argv:
            argv = [self._find_python() if part == "{python}" else part for part in argv]
        exec_argv = self._cli.exec_args(
            self._spec.name,
            "/bin/sh",
            "-c",
            WRAPPER,
            "sh",
            self._reader,
            path,
            "1" if request.cleanup else "0",
            *argv,
            interactive=True,
            env_names=list(request.env),
        )
        code = request.code.encode("utf-8", "surrogateescape") if request.path is not None else b""
        start = time.monotonic()
        gate = _StartGate(capture)
        exit_code, timed_out, cancelled = _run_client(
            exec_argv, code, {**os.environ, **request.env}, request.timeout, gate, cancel
        )
        if not gate.started and not (timed_out or cancelled):
            said = gate.rejected.decode("utf-8", "replace").strip()
            if not self._running():
                self._gone = True
                raise ContainerGoneError(container=self._spec.name, reason=f"it stopped before the block ran: {said}")
            raise DockerError(f"docker exec could not start the block (exit code {exit_code}): {said}", output=said)
        if timed_out or cancelled or exit_code > 128:
            self.sweep()  # the wrapper was cut short, or the block killed it: it may not have swept
        if exit_code in (125, 255) and not self._running():
            self._gone = True
            raise ContainerGoneError(container=self._spec.name, reason="it stopped during the block")
        if self._main is not None and self._main.poll() is not None:
            self._gone = True
            raise ContainerGoneError(
                container=self._spec.name, reason="its main process ended", exit_status=self._main.returncode
            )
        signal = exit_code - 128 if 128 < exit_code < 160 and not (timed_out or cancelled) else None
        return BlockEnd(0, None if signal else exit_code, signal, timed_out, cancelled, time.monotonic() - start)

    def _running(self) -> bool:
        """Whether the container still runs (asked of the engine: docker exec's own failures look like exit 255)."""
        with contextlib.suppress(DockerError):
            done = self._cli.run(*self._cli.running_args(self._spec.name), check=False)
            return done.stdout.strip() == b"true"
        return False

    def sweep(self) -> None:
        """Kill every process of the container but PID 1."""
        with contextlib.suppress(DockerError):
            sweep = self._cli.exec_args(self._spec.name, "/bin/sh", "-c", "keep=$1; " + SWEEP, "sh", self._reader)
            self._cli.run(*sweep, check=False)

    def _find_python(self) -> str:
        """The image's Python: python3, else python (found once, with one more exec)."""
        if self._python is None:
            find = f"command -v python3 || command -v python || echo {NO_PYTHON}"
            done = self._cli.run(*self._cli.exec_args(self._spec.name, "/bin/sh", "-c", find), check=False)
            self._python = done.stdout.decode("utf-8", "replace").strip() or NO_PYTHON
        return self._python

    @property
    def files(self) -> Files:
        """On the host's disk when mounted, else through ``docker cp`` and one ``docker exec``."""
        return files_of(self._cli, self._spec, self._run_listing, self._host_changes)

    def _run_listing(self, args: list[str]) -> bytes:
        """List the work dir's changes with the image's Python (between blocks: a block's end kills
        every process); return its output."""
        with self._serial:
            python = self._find_python()
            if python == NO_PYTHON:
                return b'{"files": [], "cut": false}'  # an image with only sh: nothing to list with
            argv = self._cli.exec_args(self._spec.name, python, "-I", "-S", "-c", listing_source(), *args)
            done = self._cli.run(*argv, check=True)
        return done.stdout

    def code_file(self, relative: str) -> str:
        return self._spec.code_file(relative)

    def code_dir(self) -> str:
        return WORKSPACE

    def _host_changes(self, work_dir: str) -> Changes:
        if self._changes is None:
            self._changes = Changes(work_dir)
        return self._changes

    def stop(self) -> None:
        """End the main process (so the container) when it is ours."""
        if self._changes is not None:
            self._changes.close()
        main, self._main, self._started = self._main, None, False
        if main is None:
            return
        assert main.stdin is not None
        with contextlib.suppress(OSError):
            main.stdin.close()
        try:
            main.wait(CLI_DEADLINE)
        except subprocess.TimeoutExpired:
            self._cli.remove_quietly(self._spec.name)
            main.kill()
            main.wait()
        if main.stderr is not None:
            main.stderr.close()


class _StartGate:
    """Passes an exec's output on to the capture once the wrapper's STARTED line came first (dropped).

    Anything else first is the docker client's own words: kept in ``rejected``, never shown as
    the block's output.
    """

    def __init__(self, capture: OutputCapture) -> None:
        self._capture = capture
        self.started = False
        self.rejected = b""
        self._head = b""

    def feed(self, chunk: bytes) -> None:
        if self.started:
            self._capture.feed(chunk)
        elif self.rejected:
            self.rejected = (self.rejected + chunk)[:4096]
        else:
            head = self._head + chunk
            if head.startswith(STARTED):
                self.started, self._head = True, b""
                if len(head) > len(STARTED):
                    self._capture.feed(head[len(STARTED) :])
            elif STARTED.startswith(head):
                self._head = head  # not all of it yet
            else:
                self.rejected, self._head = head[:4096], b""


def _read_line(stream: object, deadline: float) -> bytes:
    """Read one line from a pipe with a deadline (b'' when none came)."""
    fd = stream.fileno()  # type: ignore[attr-defined]
    data = b""
    end = time.monotonic() + deadline
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while not data.endswith(b"\n") and len(data) < 4096:
            if not selector.select(max(0.0, end - time.monotonic())):
                return data
            chunk = os.read(fd, 1)
            if not chunk:
                return data
            data += chunk
    return data


def _run_client(  # noqa: PLR0917 - one call site, every argument needed
    argv: list[str], stdin: bytes, env: dict[str, str], timeout: float, capture: _StartGate, cancel: Cancel
) -> tuple[int, bool, bool]:
    """Run a docker client with ``stdin`` fed; capture its output until it exits, the deadline or cancel.

    Returns (exit code, timed out, cancelled); at the deadline or on cancel the client is
    killed (the caller ends what it started inside the container).
    """
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
        start_new_session=True,
    )  # fmt: skip
    assert proc.stdin is not None
    assert proc.stdout is not None
    feeder = threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True)
    feeder.start()
    wake_read, wake_write = os.pipe()

    def wake() -> None:
        os.write(wake_write, b"x")

    cancel.on_set(wake)
    deadline = time.monotonic() + timeout
    timed_out = cancelled = False
    try:
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout.fileno(), selectors.EVENT_READ, "out")
            selector.register(wake_read, selectors.EVENT_READ, "cancel")
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                events = selector.select(remaining)
                if any(key.data == "cancel" for key, _ in events):
                    cancelled = True
                    break
                if events:
                    chunk = os.read(proc.stdout.fileno(), _CHUNK)
                    if not chunk:
                        break
                    capture.feed(chunk)
        if timed_out or cancelled:
            proc.kill()
        try:
            code = wait_exit(proc, TERM_GRACE + KILL_WAIT_LIMIT)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    finally:
        cancel.forget(wake)
        os.close(wake_read)
        os.close(wake_write)
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, timed_out, cancelled


def _feed(stream: object, data: bytes) -> None:
    with contextlib.suppress(OSError):
        stream.write(data)  # type: ignore[attr-defined]
        stream.close()  # type: ignore[attr-defined]
