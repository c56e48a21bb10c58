"""The only place that starts local processes for blocks: groups, deadlines, kills, capture.

Each block runs in a new session (so a new process group) with a unique marker in its
environment. When it ends, for whatever reason, the group is killed and so is every process
still carrying the marker (which catches daemons that left the group with ``setsid``), so
nothing it started outlives the block.
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import signal
import subprocess
import threading
import time
from typing import Mapping, Sequence

from ._capture import OutputCapture

#: Environment variable holding a block's marker; inherited by everything the block starts.
MARKER_VARIABLE = "CCEXEC_BLOCK_ID"
#: Seconds between SIGTERM to the group and SIGKILL, on timeout or cancellation.
TERM_GRACE = 0.5
#: Seconds to wait for killed processes to be gone before giving up on them.
KILL_WAIT_LIMIT = 2.0
#: Seconds to keep reading output once everything that could write it has been killed.
DRAIN_LIMIT = 2.0
_CHUNK = 1 << 16


class Cancel:
    """A flag another thread sets to stop the running block now; wakes the waiting loop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._pipe: tuple[int, int] | None = None

    def set(self) -> None:
        """Ask the running block to stop."""
        with self._lock:
            self._event.set()
            if self._pipe is not None:
                os.write(self._pipe[1], b"x")

    def is_set(self) -> bool:
        """Return whether a stop was asked."""
        return self._event.is_set()

    def fileno(self) -> int:
        """Return a descriptor that becomes readable once the flag is set."""
        with self._lock:
            if self._pipe is None:
                self._pipe = os.pipe()
                if self._event.is_set():
                    os.write(self._pipe[1], b"x")
            return self._pipe[0]

    def close(self) -> None:
        """Release the wake-up pipe."""
        with self._lock:
            if self._pipe is not None:
                for fd in self._pipe:
                    os.close(fd)
                self._pipe = None


class Outcome:
    """How a block's process ended."""

    __slots__ = ("cancelled", "duration", "exit_code", "timed_out")

    def __init__(self, exit_code: int, timed_out: bool, cancelled: bool, duration: float) -> None:
        self.exit_code = exit_code
        self.timed_out = timed_out
        self.cancelled = cancelled
        self.duration = duration

    def __repr__(self) -> str:
        return (
            f"Outcome(exit_code={self.exit_code}, timed_out={self.timed_out}, "
            f"cancelled={self.cancelled}, duration={self.duration:.3f})"
        )


def block_environment(overrides: Mapping[str, str | None] | None = None) -> dict[bytes, bytes]:
    """Return the environment for a block: ours, then overrides (None deletes a variable).

    As bytes: os.environb needs no decoding here nor encoding in Popen (0.1 ms a block).
    """
    env = dict(os.environb)
    # UTF-8 and unbuffered output keep Python children's stdout/stderr in the written order.
    env[b"PYTHONIOENCODING"] = b"utf-8"
    env[b"PYTHONUNBUFFERED"] = b"1"
    for key, value in (overrides or {}).items():
        if value is None:
            env.pop(os.fsencode(key), None)
        else:
            env[os.fsencode(key)] = os.fsencode(value)
    return env


def run_block(
    argv: Sequence[str],
    *,
    cwd: str,
    env: dict[bytes, bytes],
    timeout: float,
    capture: OutputCapture,
    cancel: Cancel | None = None,
) -> Outcome:
    """Run ``argv`` to completion, the deadline or ``cancel``; kill all it started; return how.

    Raises OSError when the program cannot be started. On any exception (KeyboardInterrupt
    included) the process tree is killed before it propagates.
    """
    marker = os.urandom(12).hex()
    first_pid = _last_pid()  # the block's processes all get later pids (see _kill_marked)
    env = {**env, MARKER_VARIABLE.encode(): marker.encode()}
    start = time.monotonic()
    deadline = start + timeout
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        close_fds=True,
    )
    assert proc.stdout is not None
    pidfd = _open_pidfd(proc.pid)
    try:
        timed_out, cancelled = _wait(proc, pidfd, capture, cancel, deadline)
        if timed_out or cancelled:
            _terminate_group(proc.pid, pidfd)
        _kill_everything(proc.pid, marker, first_pid)
        _drain(proc.stdout.fileno(), capture)
        exit_code = proc.wait()
    except BaseException:
        _kill_everything(proc.pid, marker, first_pid)
        proc.wait()
        raise
    finally:
        if pidfd is not None:
            os.close(pidfd)
        proc.stdout.close()
    return Outcome(exit_code, timed_out, cancelled, time.monotonic() - start)


def _wait(
    proc: subprocess.Popen[bytes],
    pidfd: int | None,
    capture: OutputCapture,
    cancel: Cancel | None,
    deadline: float,
) -> tuple[bool, bool]:
    """Capture output until the process exits, the deadline passes or cancel is set.

    Returns (timed_out, cancelled); both False means the process exited by itself.
    """
    assert proc.stdout is not None
    out_fd = proc.stdout.fileno()
    with selectors.DefaultSelector() as selector:
        selector.register(out_fd, selectors.EVENT_READ, "out")
        if pidfd is not None:
            selector.register(pidfd, selectors.EVENT_READ, "exit")
        if cancel is not None:
            selector.register(cancel.fileno(), selectors.EVENT_READ, "cancel")
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return True, False
            # Without a pidfd, a block that closed its stdout is noticed by polling.
            wait = remaining if pidfd is not None else min(remaining, 0.02)
            for key, _ in selector.select(wait):
                if key.data == "out":
                    chunk = os.read(out_fd, _CHUNK)
                    if chunk:
                        capture.feed(chunk)
                    else:
                        selector.unregister(out_fd)
                elif key.data == "exit":
                    return False, False
                else:
                    return False, True
            if pidfd is None and proc.poll() is not None:
                return False, False


def _open_pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)  # type: ignore[attr-defined,unused-ignore]  # Linux >= 5.3
    except (AttributeError, OSError):
        return None


def _terminate_group(pid: int, pidfd: int | None) -> None:
    """SIGTERM the block's group, give the leader TERM_GRACE to exit; SIGKILL follows anyway.

    The leader is waited for without being reaped, so its pid (the group's id) stays ours
    for the SIGKILL that follows.
    """
    _signal_group(pid, signal.SIGTERM)
    if pidfd is not None:
        select.select([pidfd], [], [], TERM_GRACE)
        return
    if not hasattr(os, "waitid"):  # macOS: no pidfd, no waitid
        time.sleep(TERM_GRACE)
        return
    end = time.monotonic() + TERM_GRACE
    while time.monotonic() < end and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
        time.sleep(0.01)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _kill_everything(pgid: int, marker: str, first_pid: int | None) -> None:
    """SIGKILL the block's group and every process carrying its marker.

    The group leader is not reaped yet (a zombie at worst), so its pid, and with it the group
    id, cannot have been reused by an unrelated process.
    """
    _signal_group(pgid, signal.SIGKILL)
    if first_pid is not None and _last_pid() == pgid:
        return  # no process was created after the block's own: it started nothing to hunt
    _kill_marked(marker, first_pid)


def _last_pid() -> int | None:
    """The pid most recently handed out in this pid namespace (Linux), or None."""
    try:
        with open("/proc/sys/kernel/ns_last_pid", "rb") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return None


def _new_pids(names: list[str], first_pid: int | None, last_pid: int | None) -> list[int]:
    """The pids in ``names`` handed out after ``first_pid`` (all of them when unknown)."""
    pids = [int(name) for name in names if name.isdigit()]
    if first_pid is None or last_pid is None:
        return pids
    if first_pid <= last_pid:
        return [pid for pid in pids if first_pid < pid <= last_pid]
    return [pid for pid in pids if pid > first_pid or pid <= last_pid]  # the counter wrapped


# The in-container runner (_runner_main.py) has its own copy of this hunt: it is shipped as a
# standalone script and cannot import ccexec.
def _kill_marked(marker: str, first_pid: int | None = None) -> None:
    """SIGKILL processes whose environment holds ``marker`` until none is left (Linux /proc).

    A killed process keeps a readable environment until it has really exited (a zombie's is
    empty), so scanning again until nothing is found means they are all dead on return.
    """
    needle = f"{MARKER_VARIABLE}={marker}".encode()
    me = os.getpid()
    end = time.monotonic() + KILL_WAIT_LIMIT
    while True:
        try:
            entries = os.listdir("/proc")
        except OSError:
            return  # no /proc: the process group kill is all we can do
        found = False
        # Reading every process's environment costs ~8 us each; only the block's can match.
        for pid in _new_pids(entries, first_pid, _last_pid()):
            if pid == me:
                continue
            try:
                with open(f"/proc/{pid}/environ", "rb") as handle:
                    if needle not in handle.read():
                        continue
                os.kill(pid, signal.SIGKILL)
                found = True
            except OSError:
                continue
        if not found or time.monotonic() > end:
            return
        time.sleep(0.002)


def _drain(fd: int, capture: OutputCapture) -> None:
    """Read what is left in the pipe until EOF, for at most DRAIN_LIMIT seconds."""
    end = time.monotonic() + DRAIN_LIMIT
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0 or not selector.select(remaining):
                return
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                return
            capture.feed(chunk)
