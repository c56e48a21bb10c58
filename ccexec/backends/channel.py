"""A Unix socket the container's supervisor connects to: the protocol then skips the engine's relay.

Attached by ``docker run -i``, each frame crosses three processes each way (the ``docker``
client, the daemon and the container's shim), each woken in turn: about 0.15 ms a round trip
when busy, 0.35 ms after a pause, and about 1 ms of CPU a block. When the engine shares this
host's files (a local engine, the work dir mounted as is), ccexec instead bind-mounts a private
folder holding a listening socket (read-only, at ``MOUNTED_AT``); the supervisor reads a one-time
token from its stdin (the attached client's, private to us), connects, presents the token and
speaks the protocol on the socket. The host accepts only the connection with the token, then
closes the listener and removes the folder: nothing else can connect. The container still
ends when the channel closes (the supervisor sees EOF), as when we close its stdin.

When the supervisor cannot connect (a remote daemon, an SELinux label, another user namespace
without access), it speaks on its stdio as before, and the host takes that: the socket is an
optimisation, never a requirement.
"""

from __future__ import annotations

import hmac
import os
import select
import shutil
import socket
import tempfile
import time

#: Where the socket's folder is mounted in the container.
MOUNTED_AT = "/run/ccexec-channel"
#: Seconds a connection may take to present its token.
TOKEN_WAIT = 2.0


class SocketChannel:
    """A listening socket in a private folder, waiting for the supervisor that knows the token."""

    def __init__(self) -> None:
        self.folder = tempfile.mkdtemp(prefix="ccexec-channel-")
        try:
            # Searchable, not listable, so that the container's unprivileged user can connect;
            # whoever else finds the path must still present the token.
            os.chmod(self.folder, 0o711)
            path = os.path.join(self.folder, "s")
            self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._listener.bind(path)
            os.chmod(path, 0o666)
            self._listener.listen(8)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        self.token = os.urandom(16).hex().encode("ascii") + b"\n"

    def run_args(self) -> list[str]:
        """``docker run`` flags that mount the folder."""
        return ["--volume", f"{self.folder}:{MOUNTED_AT}:ro"]

    @staticmethod
    def supervisor_args() -> list[str]:
        """The supervisor's arguments: where to connect."""
        return [f"--channel={MOUNTED_AT}/s"]

    def accept(self, stdio_fd: int, deadline: float) -> socket.socket | None:
        """The supervisor's connection, once it presented the token; None when it spoke on its stdio
        first (``stdio_fd``, the client's stdout, became readable: output, or the end) or by ``deadline``."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready = select.select([self._listener.fileno(), stdio_fd], [], [], left)[0]
            if stdio_fd in ready:
                return None
            if ready:
                connection, _ = self._listener.accept()
                if self._presented_token(connection):
                    return connection
                connection.close()

    def _presented_token(self, connection: socket.socket) -> bool:
        connection.settimeout(TOKEN_WAIT)
        received = b""
        try:
            while len(received) < len(self.token):
                chunk = connection.recv(len(self.token) - len(received))
                if not chunk:
                    return False
                received += chunk
        except OSError:
            return False
        connection.settimeout(None)
        return hmac.compare_digest(received, self.token)

    def close(self) -> None:
        """Stop listening and remove the folder (the container keeps its mount, now of nothing)."""
        self._listener.close()
        shutil.rmtree(self.folder, ignore_errors=True)
