"""The supervisor as a child process of this one (the local executor's backend), and how any
supervisor process is started with a client on its stdio (``Attached``, also used for containers)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
import weakref
from typing import TYPE_CHECKING, Callable, Generator, Mapping, Sequence

from .._capture import OutputCapture
from .._client import Cancel, SupervisorClient
from .._protocol import END_GRACE, BlockEnd, RunRequest
from ..errors import SupervisorGoneError

if TYPE_CHECKING:
    from .._changes import Changes
    from .._files import HostFiles
    from .channel import SocketChannel

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: Seconds the local supervisor may take to say hello.
START_DEADLINE = 30.0
#: Bytes of a client's stderr kept for error messages (the last ones).
STDERR_KEPT = 1 << 16


#: The supervisor's modules, in the order a script of them all defines their names.
SUPERVISOR_MODULES = (
    "_protocol.py",
    "_workdir.py",
    "_inotify.py",
    "_scrubber.py",
    "_listing.py",
    "_tree.py",
    "_forkserver.py",
    "_supervisor.py",
)


def supervisor_source() -> str:
    """The protocol and supervisor modules as one script, for ``python -c`` (here or in a container)."""
    parts = []
    for name in SUPERVISOR_MODULES:
        with open(os.path.join(_PACKAGE, name), encoding="utf-8") as handle:
            parts.append(handle.read())
    return "\n".join(parts)


class Attached:
    """A process whose stdin and stdout carry the protocol (a supervisor, or a docker client attached to one).

    When the client finds the channel broken, the process is killed. Its stderr is inherited,
    or, with ``keep_stderr``, read by a thread that keeps only the last STDERR_KEPT bytes.
    """

    def __init__(
        self,
        argv: list[str],
        name: str,
        *,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        keep_stderr: bool = False,
        gone: Callable[[str], SupervisorGoneError] | None = None,
        channel: SocketChannel | None = None,
        deadline: float = START_DEADLINE,
    ) -> None:
        self.argv = argv
        self._stderr = bytearray()
        to_child, to_us = os.pipe(), os.pipe()
        try:
            # A new session: a Ctrl-C in the terminal is ours to handle, not the supervisor's.
            self.proc = subprocess.Popen(
                argv, cwd=cwd, env=None if env is None else dict(env), stdin=to_child[0], stdout=to_us[1],
                stderr=subprocess.PIPE if keep_stderr else None, start_new_session=True,
            )  # fmt: skip
        except BaseException:
            for fd in (*to_child, *to_us):
                os.close(fd)
            raise
        os.close(to_child[0])
        os.close(to_us[1])
        proc = self.proc
        if keep_stderr:
            threading.Thread(target=self._read_stderr, name=f"ccexec-{name}-stderr", daemon=True).start()
        read_fd, write_fd = to_us[0], to_child[1]
        # The client's stdio when the protocol goes over the socket: kept open, unused, until
        # close(). One list, shared with the finalizer, emptied as it is closed (never twice).
        self._stdio: list[int] = []
        connection = None if channel is None else _connect(channel, read_fd, write_fd, deadline)
        if connection is not None:
            self._stdio += (read_fd, write_fd)
            read_fd = connection.detach()
            write_fd = os.dup(read_fd)
        self._over_socket = connection is not None
        self.client = SupervisorClient(name, read_fd, write_fd, lambda: _kill(proc), gone)
        # Dropped without close(): the supervisor sees its channel close and exits.
        weakref.finalize(self, _end, self.client, proc, self._stdio)

    def _read_stderr(self) -> None:
        stream = self.proc.stderr
        assert stream is not None
        with stream:
            for chunk in iter(lambda: os.read(stream.fileno(), STDERR_KEPT), b""):
                self._stderr += chunk
                del self._stderr[:-STDERR_KEPT]

    def stderr_text(self) -> str:
        """The end of what the process wrote to stderr."""
        return self._stderr.decode("utf-8", "replace").strip()

    def close(self, deadline: float) -> bool:
        """Close its stdin (the supervisor kills its blocks and exits); kill it past ``deadline``.

        Returns whether it ended by itself.
        """
        self.client.close()
        try:
            self.proc.wait(deadline)
            return True
        except subprocess.TimeoutExpired:
            _kill(self.proc)
            self.proc.wait()
            return False
        finally:
            _close_all(self._stdio)

    @property
    def over_socket(self) -> bool:
        """Whether the protocol goes over a SocketChannel (not the client's stdio)."""
        return self._over_socket


def _connect(channel: SocketChannel, read_fd: int, write_fd: int, deadline: float) -> socket.socket | None:
    """Give the supervisor the channel's token (on its stdin) and take its connection; None: it speaks on stdio."""
    try:
        os.write(write_fd, channel.token)
        return channel.accept(read_fd, time.monotonic() + deadline)
    except OSError:
        return None
    finally:
        channel.close()


def _close_all(fds: list[int]) -> None:
    """Close and forget each descriptor of ``fds`` (a second call closes nothing: the numbers may be reused)."""
    while fds:
        with contextlib.suppress(OSError):
            os.close(fds.pop())


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()


def _end(client: SupervisorClient, proc: subprocess.Popen[bytes], stdio: list[int]) -> None:
    """Close the channel of an Attached nobody closed, and reap its process (killed if it lingers)."""
    client.close()
    _close_all(stdio)
    try:
        proc.wait(1.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class SupervisedBackend:
    """What every backend with a supervisor shares: the attached process, and calls through its client."""

    def __init__(self) -> None:
        self._attached: Attached | None = None
        self._lock = threading.Lock()
        self._changes: Changes | None = None  # of a work dir on this host's disk, once listed

    @property
    def alive(self) -> bool:
        attached = self._attached
        return attached is not None and attached.client.alive

    def run(
        self, requests: Sequence[RunRequest], captures: Sequence[OutputCapture], cancel: Cancel
    ) -> Generator[BlockEnd, None, None]:
        attached = self._attached
        if attached is None:
            raise self._stopped()
        return attached.client.run(requests, captures, cancel)

    def stop(self) -> None:
        with self._lock:
            self._release()
            if self._changes is not None:
                self._changes.close()

    def _host_changes(self, work_dir: str) -> Changes:
        """The change log of the work dir (on this host's disk), kept from call to call."""
        if self._changes is None:
            from .._changes import Changes

            self._changes = Changes(work_dir)
        return self._changes

    def _release(self) -> None:
        raise NotImplementedError

    def _stopped(self) -> SupervisorGoneError:
        """The error for a call after stop()."""
        raise NotImplementedError


class HostBackend(SupervisedBackend):
    """Blocks run under a supervisor process started with ``python`` (the venv's, when given)."""

    negative_signals = True
    _where = "the local executor"

    def __init__(self, work_dir: str, python: str) -> None:
        super().__init__()
        self._work_dir = work_dir
        self._python = python

    def start(self) -> None:
        with self._lock:
            if self.alive:
                return
            self._release()
            # -I -S: the supervisor needs only the standard library; site's imports cost ~5 ms.
            argv = [self._python, "-I", "-S", "-c", supervisor_source()]
            attached = self._attached = Attached(argv, self._where, cwd=self._work_dir)
            if attached.client.wait_ready(START_DEADLINE) is None:
                self._release()
                code = attached.proc.poll()
                reason = f"it did not start within {START_DEADLINE:g} s" if code is None else f"exit status {code}"
                raise attached.client.error or SupervisorGoneError(
                    where=self._where, reason=f"{self._python}: {reason}"
                )

    def _stopped(self) -> SupervisorGoneError:
        return SupervisorGoneError(where=self._where, reason="it was stopped")

    #: Who copied-in files belong to (None: whoever copies them).
    _copy_owner: tuple[int, int] | None = None

    @property
    def files(self) -> HostFiles:
        from .._files import HostFiles

        return HostFiles(self._work_dir, self._work_dir, self._copy_owner, self._host_changes(self._work_dir))

    def code_file(self, relative: str) -> str:
        return os.path.join(self._work_dir, relative)

    def code_dir(self) -> str:
        return self._work_dir

    def _release(self) -> None:
        attached, self._attached = self._attached, None
        if attached is not None:
            attached.close(END_GRACE)
