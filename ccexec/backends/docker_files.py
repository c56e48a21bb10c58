"""Files in and out of a container whose work dir is not mounted: ``docker cp`` with tar on stdio.

``docker cp - CONTAINER:/workspace`` reads a tar stream that we write from a walk of the host
path; ``docker cp CONTAINER:/workspace/PATH -`` writes one that we check and extract member by
member with ``_files.Writer`` (names, kinds, links, the byte budget), never with
``tarfile.extractall``. Both stream through the engine's API, so they work over SSH and with
Podman, and cost one CLI call each. The files a call changed are listed by ``_listing.py``
in the container: by the supervisor (in a process forked from a shepherd), or by the image's
Python in one ``docker exec`` in exec mode.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import posixpath
import subprocess
import tarfile
import threading
import time
from typing import IO, Callable, Collection, cast

from .._capture import OutputCapture
from .._changes import Changes
from .._files import (
    MAX_LISTED,
    HostFiles,
    Source,
    Writer,
    copy_tree,
    host_target,
    walk,
    work_path,
)
from .._files import (
    _destination as destination,
)
from ..errors import DockerError, UnsafeFileError, WorkFileNotFoundError
from . import WORKSPACE
from .docker_cli import CLI_DEADLINE, ContainerSpec, DockerCLI, wait_exit

#: Runs ``_listing.report`` in the container with the arguments given; returns its stdout.
RunListing = Callable[[list[str]], bytes]
#: Nanoseconds a file time may lag the wall clock (one tick of the kernel's coarse clock at HZ=100).
TICK_NS = 10_000_000
#: Seconds before the listing's own start that the container is asked about (the host then keeps
#: what is younger than the call, measured with its own clock).
WINDOW_SLACK = 10.0
#: Bytes of listing a container may send (4,000 names; the supervisor's output cap for it).
LISTING_CAP = 32 << 20
_BUFFER = 1 << 20
_LISTING_SOURCE: str | None = None


def listing_source() -> str:
    """``_listing.py`` as one script that reports, for ``python -c SOURCE ARGS...`` in a container."""
    global _LISTING_SOURCE
    if _LISTING_SOURCE is None:
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_listing.py")
        with open(path, encoding="utf-8") as handle:
            _LISTING_SOURCE = handle.read() + "\nimport sys\n\nreport(sys.argv[1:])\n"
    return _LISTING_SOURCE


def files_of(
    cli: DockerCLI, spec: ContainerSpec, run_listing: RunListing, changes: Callable[[str], Changes]
) -> HostFiles | DockerFiles:
    """A container's files: on this host's disk when its work dir is mounted (``changes`` gives its
    change log), else through the engine (``run_listing`` lists in the container)."""
    if spec.mount is not None:
        return HostFiles(spec.host_work_dir, WORKSPACE, spec.owner, changes(spec.host_work_dir))
    return DockerFiles(cli, spec, run_listing)


def checked_output(exit_code: int | None, capture: OutputCapture, container: str) -> bytes:
    """The listing's output; DockerError when it failed or went past LISTING_CAP."""
    if exit_code != 0 or capture.truncated:
        raise DockerError(
            f"listing the files changed in container {container} failed (exit code {exit_code}): "
            f"{capture.text()[-2000:]}",
            output=capture.text(),
        )
    return capture.text().encode("utf-8")


class TarSink:
    """Takes a walk's entries (as ``Writer`` does) and writes them as a tar stream to ``fd``, names prefixed.

    Headers come from ``tarfile`` (PAX). Small entries are gathered into writes of up to 1 MiB;
    a big file's data goes from the host file to the pipe with ``sendfile``, never through
    Python buffers (tarfile's stream writer copied each chunk several times).
    """

    def __init__(self, fd: int, prefix: str) -> None:
        self._fd = fd
        self._prefix = prefix
        self._pending = bytearray()
        self.written: list[str] = []
        for index in range(prefix.count("/")):  # the folders leading to the copy, so the engine makes them
            folder = "/".join(prefix.split("/")[: index + 1])
            self._header(self._info(tarfile.DIRTYPE, folder, 0o755, time.time_ns()))

    @staticmethod
    def _info(  # noqa: PLR0917 - a tar header's fields, in their order
        kind: bytes, name: str, mode: int, mtime_ns: int, size: int = 0, linkname: str = ""
    ) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.size = kind, mode & 0o777, mtime_ns // 1_000_000_000, size
        info.linkname = linkname
        return info

    def _emit(self, data: bytes) -> None:
        self._pending += data
        if len(self._pending) >= _BUFFER:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            _write_all(self._fd, bytes(self._pending))
            self._pending.clear()

    def _header(self, info: tarfile.TarInfo) -> None:
        self._emit(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def _name(self, name: str) -> str:
        return posixpath.join(self._prefix, name) if name else self._prefix

    def directory(self, name: str, mode: int, mtime_ns: int) -> None:
        self._header(self._info(tarfile.DIRTYPE, self._name(name), mode, mtime_ns))
        self.written.append(name)

    def file(self, name: str, mode: int, mtime_ns: int, size: int, source: Source) -> None:
        self._header(self._info(tarfile.REGTYPE, self._name(name), mode, mtime_ns, size))
        if size < _BUFFER:
            data = _read_up_to(source, size)
        else:
            self._flush()
            data = b""
            sent = _send(source, self._fd, size)
            if sent < size:
                data = bytes(size - sent)
        if len(data) < size:  # the file shrank while being copied: keep the archive well formed
            data += bytes(size - len(data))
        self._emit(data + bytes(-size % tarfile.BLOCKSIZE))
        self.written.append(name)

    def symlink(self, name: str, target: str) -> None:
        self._header(self._info(tarfile.SYMTYPE, self._name(name), 0o777, time.time_ns(), linkname=target))
        self.written.append(name)

    def refuse(self, name: str, what: str) -> None:
        raise UnsafeFileError(path=self._name(name), reason=f"{what} is not copied")

    def close(self) -> None:
        self._emit(bytes(2 * tarfile.BLOCKSIZE))  # the end-of-archive marker
        self._flush()


def _read_up_to(source: Source, size: int) -> bytes:
    """Up to ``size`` bytes of ``source`` (fewer if it ends first)."""
    parts, left, offset = [], size, 0
    while left > 0:
        chunk = os.pread(source, left, offset) if isinstance(source, int) else source.read(left)
        if not chunk:
            break
        parts.append(chunk)
        left, offset = left - len(chunk), offset + len(chunk)
    return b"".join(parts)


def _widen_pipe(fd: int) -> None:
    """Give a pipe 1 MiB of buffer (Linux's default is 64 KiB: 16 times more switches to the client)."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), _BUFFER)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _send(source: Source, fd: int, size: int) -> int:
    """Copy up to ``size`` bytes of ``source`` to ``fd`` (sendfile for a file descriptor); return how many."""
    done = 0
    if isinstance(source, int):
        while done < size:
            sent = os.sendfile(fd, source, done, min(size - done, 1 << 30))
            if sent == 0:
                break
            done += sent
        return done
    while done < size:
        chunk = source.read(min(size - done, _BUFFER))
        if not chunk:
            break
        _write_all(fd, chunk)
        done += len(chunk)
    return done


class DockerFiles:
    """Files of a container's own (unmounted) work dir, through ``docker cp``."""

    def __init__(self, cli: DockerCLI, spec: ContainerSpec, run_listing: RunListing) -> None:
        self._cli, self._spec, self._run_listing = cli, spec, run_listing

    def copy_to(self, host_path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[str]:
        """Stream a host file or directory into the work dir as tar; return the work-dir-relative names."""
        source = os.path.abspath(os.fspath(host_path))
        given = os.fspath(dest)
        folder, top = destination(work_path(given, (WORKSPACE,), allow_root=True), given, source)
        if not os.path.lexists(source):
            raise WorkFileNotFoundError(f"{source!r} does not exist on the host; nothing was copied", path=source)
        prefix = posixpath.normpath(posixpath.join(folder, top))
        if top == os.path.basename(source) and self._copy_file(source, folder):
            return [prefix]
        argv = [*self._cli.argv, *self._cli.copy_in_args(self._spec.name, WORKSPACE)]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stderr = _drain(proc)
        assert proc.stdin is not None
        head, name = os.path.split(source)
        source_dir = os.open(head, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        _widen_pipe(proc.stdin.fileno())
        sink = TarSink(proc.stdin.fileno(), prefix)
        try:
            walk(source_dir, name, sink, follow_top=True)
            sink.close()
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the client ended early: its status and stderr say why
        except BaseException:
            proc.kill()
            raise
        finally:
            os.close(source_dir)
            _close_quietly(proc.stdin)
        self._finish(proc, stderr, argv, prefix)
        return sorted(posixpath.normpath(posixpath.join(prefix, entry)) for entry in sink.written)

    def _copy_file(self, source: str, folder: str) -> bool:
        """The fast way for one regular file into a folder that exists: the client reads the file itself.

        (``docker cp -`` reading our tar from a pipe takes about 1.25x as long for 100 MB, the
        same with ``cat archive |``.) False when it does not apply or the folder is missing:
        the tar stream then makes the folders.
        """
        if os.path.islink(source) or not os.path.isfile(source):
            return False
        inside = WORKSPACE if folder == "." else f"{WORKSPACE}/{folder}"
        deadline = CLI_DEADLINE + os.path.getsize(source) / (10 << 20)  # at least 10 MB/s
        done = self._cli.run(
            *self._cli.copy_file_in_args(self._spec.name, source, inside), deadline=deadline, check=False
        )
        return done.returncode == 0

    def copy_from(
        self, path: str | os.PathLike[str], host_dest: str | os.PathLike[str], *, overwrite: bool, max_bytes: int
    ) -> list[str]:
        """Stream a file or directory of the work dir out as tar, checked and extracted entry by entry."""
        relative = work_path(path, (WORKSPACE,), allow_root=True)
        parent, top, _ = host_target(host_dest, relative, overwrite)
        inside = f"{WORKSPACE}/." if relative == "." else f"{WORKSPACE}/{relative}"
        argv = [*self._cli.argv, *self._cli.copy_out_args(self._spec.name, inside)]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            stderr = _drain(proc)
            out = proc.stdout
            assert out is not None
            _widen_pipe(out.fileno())
            writer = Writer(parent, top, shown=relative, links_inside=True, replace=overwrite, max_bytes=max_bytes)
            base = "" if relative == "." else posixpath.basename(relative)
            try:
                written = copy_tree(writer, lambda w: _extract(out, base, w))
            except BaseException as exc:
                proc.kill()
                self._finish(proc, stderr, argv, relative)  # the engine's own error first, when it has one
                if isinstance(exc, tarfile.TarError):
                    raise UnsafeFileError(path=relative, reason=f"the engine sent a malformed archive ({exc})") from exc
                raise
            finally:
                out.close()
            self._finish(proc, stderr, argv, relative)
        finally:
            os.close(parent)
        return sorted({posixpath.normpath(posixpath.join(relative, entry)) for entry in written} - {"."})

    def _finish(self, proc: subprocess.Popen[bytes], stderr: Callable[[], bytes], argv: list[str], path: str) -> None:
        """Wait for the client; raise WorkFileNotFoundError or the mapped DockerError when it failed."""
        try:
            code = wait_exit(proc, CLI_DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code in (0, -9):
            return
        text = stderr().decode("utf-8", "replace").strip()
        lowered = text.lower()
        if "could not find the file" in lowered or "could not be found on container" in lowered:
            raise WorkFileNotFoundError(path=path)
        raise self._cli.error(argv, text)

    def watch(self) -> Callable[[Collection[str]], tuple[list[str], bool]]:
        """Start watching; the returned function asks the container which files changed since."""
        start = time.monotonic()

        def listing(skip: Collection[str]) -> tuple[list[str], bool]:
            sent = time.monotonic()
            window = int((sent - start + WINDOW_SLACK) * 1e9)
            report = json.loads(self._run_listing([str(window), str(MAX_LISTED * 4), json.dumps(sorted(skip))]))
            # A file changed during the call is at most this old when the listing read the clock.
            oldest = int((time.monotonic() - start) * 1e9) + TICK_NS
            found = [name for name, age in report["files"] if age <= oldest]
            # The container kept the most recent changes: what it cut is older than all it sent,
            # so it was the call's only if the oldest it sent still was.
            cut_ours = bool(report["cut"]) and all(age <= oldest for _, age in report["files"])
            return found[:MAX_LISTED], len(found) > MAX_LISTED or cut_ours

        return listing


def _extract(stream: IO[bytes], base: str, writer: Writer) -> None:
    """Write each member of the tar ``stream`` with ``writer``, checking its name and kind first.

    Members are named ``base`` or ``base/...`` (``./...`` or bare names for the work dir itself,
    ``base`` ''); anything else, absolute or with ``..``, is refused.
    """
    with tarfile.open(fileobj=stream, mode="r|", bufsize=_BUFFER) as tar:
        for member in tar:
            name = _entry_name(member.name, base)
            if member.isreg():
                # Straight from the archive's stream (stream mode: the member's data is next in it);
                # extractfile() would add two buffered layers, each copying every chunk again.
                data = cast("IO[bytes]", tar.fileobj)
                writer.file(name, member.mode, int(member.mtime) * 1_000_000_000, member.size, data)
            elif member.isdir():
                writer.directory(name, member.mode, int(member.mtime) * 1_000_000_000)
            elif member.issym():
                writer.symlink(name, member.linkname)
            elif member.islnk():
                writer.hardlink(name, _entry_name(member.linkname, base))
            else:
                writer.refuse(name, "a device, fifo or other special file")


def _entry_name(member: str, base: str) -> str:
    """The writer's name for a tar member (relative to the copy's top); UnsafeFileError when it leaves."""
    name = posixpath.normpath(member)
    if member.startswith("/") or name == ".." or name.startswith("../"):
        raise UnsafeFileError(path=member, reason="an archive member outside the copied path")
    if not base:
        return "" if name == "." else name
    if name == base:
        return ""
    if name.startswith(base + "/"):
        return name[len(base) + 1 :]
    raise UnsafeFileError(path=member, reason=f"an archive member outside {base!r}")


def _drain(proc: subprocess.Popen[bytes]) -> Callable[[], bytes]:
    """Read the client's stderr in a thread (kept to 64 KiB); return a function giving it once it ended."""
    kept = bytearray()
    stream = proc.stderr
    assert stream is not None

    def read() -> None:
        with stream:
            for chunk in iter(lambda: stream.read(4096), b""):
                kept.extend(chunk)
                del kept[: -(1 << 16)]

    thread = threading.Thread(target=read, name="ccexec-cp-stderr", daemon=True)
    thread.start()

    def text() -> bytes:
        thread.join(CLI_DEADLINE)
        return bytes(kept)

    return text


def _close_quietly(stream: IO[bytes] | None) -> None:
    if stream is not None:
        with contextlib.suppress(OSError):
            stream.close()
