"""The host's side of the protocol: send blocks to a supervisor, read its frames, trust nothing.

A reader thread parses the supervisor's stdout with ``FrameParser`` (bounded header and
payload sizes) and decodes every end frame with full type checks. Any violation, or the
stream ending, breaks the client: every waiting call wakes up and raises, and the owner's
``on_broken`` kills the transport (the supervisor process, or the container). No wait on the
host side is without a timeout.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
import warnings
from typing import Callable, Generator, Iterator, Sequence, TypeVar

from ._capture import OutputCapture
from ._protocol import END_GRACE, TO_HOST, VERSION, BlockEnd, FrameParser, Hello, ProtocolError, RunRequest, frame
from .errors import ProtocolViolationError, SupervisorGoneError

_CHUNK = 1 << 16
T = TypeVar("T")


class Cancel:
    """A flag another thread sets to stop the running call's block now."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def on_set(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the flag is set (now, if it is already)."""
        with self._lock:
            self._callbacks.append(callback)
            now = self._event.is_set()
        if now:
            callback()

    def forget(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback``."""
        with self._lock:
            self._callbacks.remove(callback)

    def set(self) -> None:
        """Ask the running block to stop."""
        with self._lock:
            self._event.set()
            callbacks = list(self._callbacks)
        for callback in callbacks:
            callback()

    def is_set(self) -> bool:
        """Return whether a stop was asked."""
        return self._event.is_set()


class RunningCalls:
    """The calls in flight on one executor, each with its Cancel."""

    def __init__(self) -> None:
        self._idle = threading.Condition()
        self._running: set[Cancel] = set()

    @contextlib.contextmanager
    def track(self, cancel: Cancel) -> Iterator[None]:
        """Count the call as running for the duration of the ``with`` block."""
        with self._idle:
            self._running.add(cancel)
        try:
            yield
        finally:
            with self._idle:
                self._running.discard(cancel)
                self._idle.notify_all()

    def cancel_all(self, timeout: float) -> None:
        """Cancel every running call and wait, ``timeout`` seconds at most, until they have returned."""
        with self._idle:
            running = list(self._running)
        for cancel in running:
            cancel.set()
        with self._idle:
            self._idle.wait_for(lambda: not self._running, timeout)


async def in_thread_cancellable(call: Callable[[Cancel], T]) -> T:
    """Run ``call(cancel)`` in a worker thread; cancelling the awaiting task sets ``cancel`` and waits
    until the call has returned (the code is really dead) before the cancellation goes on."""
    import asyncio

    cancel = Cancel()
    future = asyncio.get_running_loop().run_in_executor(None, call, cancel)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancel.set()
        while not future.done():
            with contextlib.suppress(BaseException):  # the worker's outcome is moot now
                await asyncio.shield(future)
        raise


class _Pending:
    """A block sent to the supervisor: where its output goes, and its end once known."""

    __slots__ = ("abandoned", "capture", "done", "end")

    def __init__(self, capture: OutputCapture) -> None:
        self.capture = capture
        self.done = threading.Event()
        self.end: BlockEnd | None = None
        self.abandoned = False  # the caller stopped waiting (an earlier block failed): drop its frames


#: What a supervisor without each guard leaves open (guards it reports in its hello).
GUARDS = {
    "nondumpable": "a block of the same user could open its pipes (read other calls' code, forge results)",
    "subreaper": "processes a block leaves behind could escape being killed",
}
_warned: set[tuple[str, str]] = set()


def warn_unguarded(hello: Hello, where: str) -> None:
    """A RuntimeWarning, once per place and interpreter, for each guard the supervisor could not set."""
    for guard, risk in GUARDS.items():
        if guard not in hello.guards and (where, guard) not in _warned:
            _warned.add((where, guard))
            warnings.warn(
                f"the ccexec supervisor in {where} ({hello.python}) could not make itself {guard}: {risk}. "
                "Its Python lacks ctypes or prctl; use an interpreter or image whose Python has ctypes",
                RuntimeWarning,
                stacklevel=4,
            )


class SupervisorClient:
    """Speak the protocol over a supervisor's stdin (``write_fd``) and stdout (``read_fd``), or a socket.

    The client owns both descriptors: its reader thread closes ``read_fd`` when the stream
    ends, ``close()`` closes ``write_fd`` (which tells the supervisor to kill its blocks and exit).
    """

    def __init__(
        self,
        name: str,
        read_fd: int,
        write_fd: int,
        on_broken: Callable[[], None],
        gone: Callable[[str], SupervisorGoneError] | None = None,
    ) -> None:
        self.name = name
        self._gone = gone or (lambda reason: SupervisorGoneError(where=name, reason=reason))
        self.hello: Hello | None = None
        self.error: Exception | None = None
        self.stopped = False  # the channel ended because we closed it
        self._read_fd, self._write_fd = read_fd, write_fd
        self._on_broken = on_broken
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._write_lock = threading.Lock()
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"ccexec-{name}-frames", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        """Whether the supervisor said hello and nothing broke since."""
        return self.hello is not None and self.error is None

    def wait_ready(self, timeout: float) -> Hello | None:
        """Wait for the supervisor's hello; return it, or None if it did not come within ``timeout``.

        Warns (once per place) when the supervisor could not set its guards.
        """
        self._ready.wait(timeout)
        hello = self.hello if self.error is None else None
        if hello is not None:
            warn_unguarded(hello, self.name)
        return hello

    def _read(self) -> None:
        try:
            self._read_frames()
        finally:
            os.close(self._read_fd)

    def _read_frames(self) -> None:
        parser = FrameParser(TO_HOST)
        try:
            while True:
                data = os.read(self._read_fd, _CHUNK)
                if not data:
                    self.stopped = self._write_fd < 0  # we closed its stdin: an orderly end
                    raise self._gone("it was stopped" if self.stopped else "its output ended")
                for kind, ident, payload in parser.feed(data):
                    self._dispatch(kind, ident, payload)
        except ProtocolError as exc:
            self._break(ProtocolViolationError(where=self.name, reason=str(exc)))
        except SupervisorGoneError as exc:
            self._break(exc)
        except OSError as exc:
            self._break(self._gone(f"reading its output failed: {exc}"))

    def _dispatch(self, kind: bytes, ident: int, payload: bytes) -> None:
        if kind == b"H":
            if self.hello is not None:
                raise ProtocolError("a second hello")
            hello = Hello.decode(payload)
            if hello.protocol != VERSION:
                raise ProtocolError(f"protocol version {hello.protocol}, expected {VERSION}")
            self.hello = hello
            self._ready.set()
            return
        if self.hello is None:
            raise ProtocolError("a frame before hello")
        pending = self._pending.get(ident)
        if pending is None or pending.end is not None:
            raise ProtocolError(f"a frame for block {ident}, which is not running")
        if kind == b"O":
            if not pending.abandoned:
                pending.capture.feed(payload)
            return
        pending.end = BlockEnd.decode(ident, payload)
        pending.done.set()
        if pending.abandoned:
            del self._pending[ident]

    def _break(self, error: Exception) -> None:
        if self.error is None:
            self.error = error
        self._ready.set()
        for pending in list(self._pending.values()):
            pending.done.set()
        if not self.stopped:  # we closed it: the transport ends by itself (a client may outlive a socket's end)
            self._on_broken()

    def close(self) -> None:
        """Close the supervisor's stdin: it kills its blocks and exits."""
        with self._write_lock:
            fd, self._write_fd = self._write_fd, -1  # first: the end it causes is then read as ours
            if fd >= 0:
                _shut_down_writing(fd)
                os.close(fd)

    def _send(self, data: bytes) -> None:
        try:
            with self._write_lock:
                if self._write_fd < 0:
                    raise OSError(9, "closed")
                view = memoryview(data)
                while view:
                    view = view[os.write(self._write_fd, view) :]
        except OSError as exc:
            self._break(self._gone(f"writing to it failed: {exc.strerror}"))

    def run(
        self, requests: Sequence[RunRequest], captures: Sequence[OutputCapture], cancel: Cancel
    ) -> Generator[BlockEnd, None, None]:
        """Send the blocks at once, each chained after the one before; yield their ends in order.

        Raises SupervisorGoneError or ProtocolViolationError (both CcexecError) if the
        channel breaks, or if an end does not come within the block's timeout plus END_GRACE.
        """
        if self.error is not None:
            raise self.error
        if not requests:
            return
        ids = [next(self._ids) for _ in requests]
        pendings = [_Pending(capture) for capture in captures]
        self._pending.update(zip(ids, pendings))
        for index, (request, ident) in enumerate(zip(requests, ids)):
            request.ident, request.after = ident, ids[index - 1] if index else None
        current = [ids[0]]
        stop = lambda: self._send(frame(b"C", current[0]))  # noqa: E731 - sends to the running block
        try:
            self._send(b"".join(request.encode() for request in requests))
            cancel.on_set(stop)
            for request, ident, pending in zip(requests, ids, pendings):
                current[0] = ident
                yield self._wait(pending, request.timeout, cancel)
        finally:
            cancel.forget(stop)
            for ident, pending in zip(ids, pendings):
                pending.abandoned = True
                if pending.end is not None or self.error is not None:
                    self._pending.pop(ident, None)

    def _wait(self, pending: _Pending, timeout: float, cancel: Cancel) -> BlockEnd:
        deadline = time.monotonic() + timeout + END_GRACE
        while not pending.done.wait(max(0.0, min(1.0, deadline - time.monotonic()))):
            if cancel.is_set():
                deadline = min(deadline, time.monotonic() + END_GRACE)
            if time.monotonic() >= deadline:
                self._break(self._gone(f"it did not report a block's end {END_GRACE:g} s past its deadline"))
        if pending.end is None:
            assert self.error is not None
            raise self.error
        return pending.end


def _shut_down_writing(fd: int) -> None:
    """On a socket, shut down our side: the peer sees the end only once every descriptor of it closes."""
    import socket
    import stat

    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            sock = socket.socket(fileno=fd)
            try:
                sock.shutdown(socket.SHUT_WR)
            finally:
                sock.detach()
