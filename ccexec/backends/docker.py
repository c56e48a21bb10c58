"""The supervisor in a container: started by ``docker run -i`` and reached over that client's stdio
(or, when the engine shares this host's files, over a mounted socket: see ``channel.py``).

The container's main process is the supervisor (``sh`` finds ``python3`` or ``python`` and
execs it with the shipped source), attached to us: when we close its stdin, or die, it kills
its blocks and exits, and with it the container. A kept container (``stop_container=False``)
sleeps instead, and the supervisor is attached with ``docker exec -i``.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
from typing import TYPE_CHECKING

from .._capture import OutputCapture
from .._client import Cancel
from .._protocol import END_GRACE, LISTING, RunRequest
from ..errors import ContainerGoneError, DockerError, DockerTimeoutError
from . import WORKSPACE, docker_cli
from .channel import SocketChannel
from .docker_cli import ContainerSpec, DockerCLI
from .docker_files import LISTING_CAP, checked_output, files_of
from .host import Attached, SupervisedBackend, supervisor_source

if TYPE_CHECKING:
    from . import Files

#: Seconds stop() waits for the attached client to end before removing the container by force.
STOP_DEADLINE = 10.0


class DockerBackend(SupervisedBackend):
    """Blocks run under the supervisor inside one container."""

    negative_signals = False

    def __init__(self, cli: DockerCLI, spec: ContainerSpec) -> None:
        super().__init__()
        self._cli = cli
        self._spec = spec

    def start(self) -> None:
        """Start the container and its supervisor, run init_command; raise a DockerError saying why not."""
        with self._lock:
            if self.alive:
                return
            self._release()
            spec = self._spec
            spec.prepare_mount()
            channel = None
            if spec.keep:
                self._cli.run(*self._cli.run_args(spec, attached=False), env=self._cli.env(spec))
                argv = self._cli.exec_supervisor_args(spec.name, supervisor_source())
            else:
                channel = SocketChannel() if spec.channel else None
                argv = self._cli.run_args(spec, attached=True, supervisor=supervisor_source(), channel=channel)
            attached = self._attached = Attached(
                argv, f"container {spec.name}", env=self._cli.env(spec), keep_stderr=True, gone=self._gone,
                channel=channel, deadline=docker_cli.RUN_DEADLINE,
            )  # fmt: skip
            if attached.client.wait_ready(docker_cli.RUN_DEADLINE) is None:
                error = self._start_error(attached)
                self._release(grace=0.0)
                raise error
        if spec.init_command:
            self._run_init(spec.init_command)

    @property
    def channel(self) -> str | None:
        """``"socket"`` or ``"client"`` (see ``channel.py``); None when no supervisor is attached."""
        attached = self._attached
        if attached is None:
            return None
        return "socket" if attached.over_socket else "client"

    def _gone(self, reason: str) -> ContainerGoneError:
        attached = self._attached
        code = None if attached is None else attached.proc.poll()
        if code is not None:
            reason = f"{reason}; the container's client exited with status {code}"
            stderr = attached.stderr_text() if attached is not None else ""
            if stderr:
                reason = f"{reason}: {stderr[-500:]}"
        return ContainerGoneError(container=self._spec.name, reason=reason, exit_status=code)

    def _start_error(self, attached: Attached) -> Exception:
        """Why the supervisor did not say hello: the engine's stderr, a hang, or a broken channel."""
        if attached.proc.poll() is None and attached.client.error is None:
            return DockerTimeoutError(
                f"the container did not start within {docker_cli.RUN_DEADLINE:g} s and the client was killed; "
                f"the engine ({self._cli.target()}) may be hung or pulling a large image: "
                f"check `{self._cli.name} info`",
                command=attached.argv[:3],
            )
        with contextlib.suppress(subprocess.TimeoutExpired):
            attached.proc.wait(END_GRACE)
        time.sleep(0.05)  # the stderr thread may still be reading the client's last words
        stderr = attached.stderr_text()
        if stderr:
            return self._cli.error(attached.argv, stderr, image=self._spec.image)
        return attached.client.error or self._gone("it ended before the supervisor started")

    def _run_init(self, command: str) -> None:
        """Run init_command once, through the supervisor (so it never shows on a command line)."""
        capture = OutputCapture(1 << 16)
        request = RunRequest(0, ["/bin/sh", "-c", command], docker_cli.RUN_DEADLINE, {})
        ends = self.run([request], [capture], Cancel())
        end = next(ends)
        ends.close()
        if end.exit_code != 0:
            self.stop()
            output = capture.text()
            code = end.exit_code if end.exit_code is not None else f"signal {end.signal}"
            raise DockerError(f"init_command {command!r} failed with exit code {code}: {output}", output=output)

    def _stopped(self) -> ContainerGoneError:
        return ContainerGoneError(container=self._spec.name, reason="it was stopped")

    @property
    def files(self) -> Files:
        """On the host's disk when mounted, else through ``docker cp`` and the supervisor."""
        return files_of(self._cli, self._spec, self._run_listing, self._host_changes)

    def _run_listing(self, args: list[str]) -> bytes:
        """List the work dir's changes through the supervisor (``_listing.report``); return its output."""
        capture = OutputCapture(LISTING_CAP)
        ends = self.run([RunRequest(0, [LISTING, *args], docker_cli.CLI_DEADLINE, {})], [capture], Cancel())
        end = next(ends)
        ends.close()
        return checked_output(end.exit_code, capture, self._spec.name)

    def code_file(self, relative: str) -> str:
        return self._spec.code_file(relative)

    def code_dir(self) -> str:
        return WORKSPACE

    def _release(self, grace: float = STOP_DEADLINE) -> None:
        """Close the supervisor's stdin (the container ends); remove it by force if anything went wrong."""
        attached, self._attached = self._attached, None
        if attached is None:
            return
        ended = attached.close(grace)
        broken = attached.client.error is not None and not attached.client.stopped
        if not self._spec.keep and (not ended or broken or attached.proc.returncode):
            self._cli.remove_quietly(self._spec.name)
