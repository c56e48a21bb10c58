"""Files in and out of the work dir: path checks, the one writer of every copy, and the host's copier.

Every copy, whatever its source (a walk of a host directory here, a ``docker cp`` tar stream in
``backends/docker_files.py``), is written by ``Writer``: below a directory fd, each name created
beside its final place and renamed there, no symlink followed, every entry checked before a byte
of it is written (its name, its kind, where a link leads, the byte budget). A refusal removes
what the copy had created.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from typing import IO, Callable, Collection, Protocol, Sequence, Union

from ._changes import Changes
from ._workdir import open_directory, open_in
from .errors import CopyTooLargeError, HostPathExistsError, UnsafeFileError, WorkFileNotFoundError, WorkPathError

#: Default cap on the bytes one copy out of the work dir may write on the host.
DEFAULT_MAX_BYTES = 1 << 30
#: Most entries ``CommandLineCodeResult.files`` lists (``files_truncated`` says when more changed).
MAX_LISTED = 1000
_CHUNK = 1 << 20
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: Where a file's bytes come from: an open fd (copied with sendfile), or a binary stream.
Source = Union[int, IO[bytes]]


def work_path(path: str | os.PathLike[str], roots: Sequence[str], *, allow_root: bool) -> str:
    """Return ``path`` relative to the work dir, normalised (``.`` for the work dir itself).

    ``path`` is relative to the work dir, or absolute below one of ``roots`` (the work dir as the
    code sees it, as the host sees it). Raises WorkPathError for a path that leaves it, or names
    the work dir when ``allow_root`` is False.
    """
    text = os.fspath(path)
    if not isinstance(text, str) or not text or "\0" in text:
        raise WorkPathError(f"{text!r} is not a path; pass a non-empty str or Path", path=str(text))
    if text.startswith("/"):
        for root in (root.rstrip("/") for root in roots):
            if text.rstrip("/") == root:
                text = "."
                break
            if text.startswith(root + "/"):
                text = text[len(root) + 1 :]
                break
        else:
            raise WorkPathError(path=text)
    relative = posixpath.normpath(text)
    if relative == ".." or relative.startswith("../") or (relative == "." and not allow_root):
        raise WorkPathError(path=text)
    return relative


def is_directory_form(path: str) -> bool:
    """Whether a destination names a directory to copy into (``.``, ``..``, a trailing ``/``)."""
    return path.endswith("/") or posixpath.basename(path) in (".", "..", "")


class Writer:
    """Creates one copy named ``top`` in the directory ``parent_fd``; entries are named relative
    to ``top`` ('' is ``top`` itself), parents before children.

    ``links_inside``: a symlink must lead to a name inside this copy (copies out of the work dir).
    ``replace``: what is in the way may be replaced (a file or link, never a directory).
    ``max_bytes``: file bytes this copy may write (None: no cap). ``owner``: (uid, gid) to give.
    """

    def __init__(
        self, parent_fd: int, top: str, *, shown: str, links_inside: bool, replace: bool,
        max_bytes: int | None = None, owner: tuple[int, int] | None = None,
    ) -> None:  # fmt: skip
        self._parent, self._top, self._shown = parent_fd, top, shown
        self._links_inside, self._replace, self._owner = links_inside, replace, owner
        self._budget, self._max_bytes = max_bytes, max_bytes or 0
        self._dirs: dict[str, int] = {}  # entry name -> fd of that directory
        self._created: list[tuple[str, bool]] = []  # (entry name, is a directory), to undo
        self._dir_times: list[tuple[str, int]] = []
        self.written: list[str] = []  # entry names, in order

    # -- entries ---------------------------------------------------------------------------

    def directory(self, name: str, mode: int, mtime_ns: int) -> None:
        """Create (or reuse) the directory ``name``."""
        self._dir_fd(name, mode)
        self._dir_times.append((name, mtime_ns))
        self.written.append(name)

    def file(self, name: str, mode: int, mtime_ns: int, size: int, source: Source) -> None:
        """Write ``size`` bytes from ``source`` as the file ``name``; raise CopyTooLargeError past the budget."""
        if self._budget is not None:
            if size > self._budget:
                raise CopyTooLargeError(path=self._shown_name(name), max_bytes=self._max_bytes)
            self._budget -= size
        directory, last = self._parent_of(name)
        temp = _temp_name(last)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=directory)
        try:
            try:
                _copy_bytes(source, fd, size)
                os.fchmod(fd, mode & 0o777)  # no setuid, setgid or sticky bit comes out of a copy
                if self._owner is not None:
                    os.fchown(fd, *self._owner)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)
            self._put(temp, directory, last, name)
        except BaseException:
            _unlink_quietly(temp, directory)
            raise

    def symlink(self, name: str, target: str) -> None:
        """Create the link ``name`` -> ``target``; with ``links_inside``, refuse one that leads out of the copy."""
        if self._links_inside:
            inside = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
            if not name or target.startswith("/") or inside == ".." or inside.startswith("../"):
                raise UnsafeFileError(
                    path=self._shown_name(name), reason=f"a symlink to {target!r}, outside what is copied"
                )
        directory, last = self._parent_of(name)
        temp = _temp_name(last)
        os.symlink(target, temp, dir_fd=directory)
        try:
            self._put(temp, directory, last, name)
        except BaseException:
            _unlink_quietly(temp, directory)
            raise

    def hardlink(self, name: str, target: str) -> None:
        """Link ``name`` to ``target``, a file this copy wrote already; refuse any other."""
        if target not in self.written or target in self._dirs:
            raise UnsafeFileError(
                path=self._shown_name(name), reason=f"a hard link to {target!r}, which is not a file of this copy"
            )
        source_dir, source_last = self._parent_of(target)
        directory, last = self._parent_of(name)
        temp = _temp_name(last)
        os.link(source_last, temp, src_dir_fd=source_dir, dst_dir_fd=directory, follow_symlinks=False)
        try:
            self._put(temp, directory, last, name)
        except BaseException:
            _unlink_quietly(temp, directory)
            raise

    def refuse(self, name: str, what: str) -> None:
        """Raise UnsafeFileError for an entry of a kind no copy creates (device, fifo, socket)."""
        raise UnsafeFileError(path=self._shown_name(name), reason=f"{what} is not copied")

    # -- the end -----------------------------------------------------------------------------

    def finish(self) -> list[str]:
        """Set the directories' times (their entries are written now), close; return the names written."""
        try:
            for name, mtime_ns in reversed(self._dir_times):
                os.utime(self._dirs[name], ns=(mtime_ns, mtime_ns))
        finally:
            self._close()
        return self.written

    def abort(self) -> None:
        """Remove what this copy created (files it replaced stay replaced), close."""
        try:
            for name, is_dir in reversed(self._created):
                directory, last = self._parent_of(name)
                try:
                    if is_dir:
                        os.rmdir(last, dir_fd=directory)
                    else:
                        os.unlink(last, dir_fd=directory)
                except OSError:
                    continue
        finally:
            self._close()

    # -- helpers -----------------------------------------------------------------------------

    def _shown_name(self, name: str) -> str:
        return posixpath.normpath(posixpath.join(self._shown, name)) if name else self._shown

    def _parent_of(self, name: str) -> tuple[int, str]:
        """(fd of the directory holding ``name``, its last component)."""
        if not name:
            return self._parent, self._top
        head, last = posixpath.split(name)
        return self._dir_fd(head, 0o755), last

    def _dir_fd(self, name: str, mode: int) -> int:
        """The directory ``name`` of this copy, made (with ``mode``) if missing; opened without following links."""
        if name in self._dirs:
            return self._dirs[name]
        directory, last = self._parent_of(name)
        try:
            os.mkdir(last, 0o700, dir_fd=directory)
            self._created.append((name, True))
            fd = os.open(last, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
            os.fchmod(fd, mode & 0o777 | 0o700)  # we must still write in it
            if self._owner is not None:
                os.fchown(fd, *self._owner)
        except FileExistsError:
            try:
                fd = open_directory(directory, last)
            except (ValueError, NotADirectoryError):  # a link or a file where a directory goes
                if not self._replace:
                    raise HostPathExistsError(path=self._shown_name(name)) from None
                os.unlink(last, dir_fd=directory)
                return self._dir_fd(name, mode)
        self._dirs[name] = fd
        return fd

    def _put(self, temp: str, directory: int, last: str, name: str) -> None:
        """Rename ``temp`` to its place; what was there (a file or link) is replaced only when allowed."""
        try:
            existing = os.stat(last, dir_fd=directory, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if not self._replace:
                raise HostPathExistsError(path=self._shown_name(name))
            if stat.S_ISDIR(existing.st_mode):  # never removed: it may hold anything
                raise UnsafeFileError(path=self._shown_name(name), reason="a directory is where a file goes")
        os.rename(temp, last, src_dir_fd=directory, dst_dir_fd=directory)
        if existing is None:
            self._created.append((name, False))
        self.written.append(name)

    def _close(self) -> None:
        dirs, self._dirs = self._dirs, {}
        for fd in dirs.values():
            os.close(fd)


def _temp_name(last: str) -> str:
    return f".ccexec-{os.urandom(6).hex()}-{last[:64]}"


def _unlink_quietly(name: str, directory: int) -> None:
    with contextlib.suppress(OSError):
        os.unlink(name, dir_fd=directory)


def _copy_bytes(source: Source, fd: int, size: int) -> None:
    """Copy ``size`` bytes (fewer if the source ends first) from ``source`` to ``fd``."""
    left = size
    if isinstance(source, int):
        offset = 0
        while left > 0:
            sent = os.sendfile(fd, source, offset, min(left, 1 << 30))
            if sent == 0:
                return
            offset += sent
            left -= sent
        return
    while left > 0:
        chunk = source.read(min(left, _CHUNK))
        if not chunk:
            return
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view) :]
        left -= len(chunk)


# -- walking a host directory, following no symlink ----------------------------------------------


class Sink(Protocol):
    """What a walk feeds: ``Writer`` (files on disk) or a tar stream (``docker_files.TarSink``)."""

    def directory(self, name: str, mode: int, mtime_ns: int) -> None: ...
    def file(self, name: str, mode: int, mtime_ns: int, size: int, source: Source) -> None: ...
    def symlink(self, name: str, target: str) -> None: ...
    def refuse(self, name: str, what: str) -> None: ...


def walk(directory: int, name: str, writer: Sink, *, follow_top: bool = False, prefix: str = "") -> None:
    """Copy the entry ``name`` of ``directory`` (recursively) into ``writer`` as ``prefix``.

    Nothing is followed but, with ``follow_top``, ``name`` itself (a host path the user gave).
    """
    info = os.stat(name, dir_fd=directory, follow_symlinks=follow_top)
    kind = stat.S_IFMT(info.st_mode)
    if kind == stat.S_IFDIR:
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow_top else os.O_NOFOLLOW)
        fd = os.open(name, flags, dir_fd=directory)
        try:
            writer.directory(prefix, info.st_mode, info.st_mtime_ns)
            with os.scandir(fd) as entries:
                names = sorted(entry.name for entry in entries)
            for child in names:
                walk(fd, child, writer, prefix=posixpath.join(prefix, child) if prefix else child)
        finally:
            os.close(fd)
    elif kind == stat.S_IFREG:
        fd = os.open(name, _FILE_FLAGS if not follow_top else _FILE_FLAGS & ~os.O_NOFOLLOW, dir_fd=directory)
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode):  # replaced meanwhile
                writer.refuse(prefix, "an entry that changed kind while copied")
            writer.file(prefix, opened.st_mode, opened.st_mtime_ns, opened.st_size, fd)
        finally:
            os.close(fd)
    elif kind == stat.S_IFLNK:
        writer.symlink(prefix, os.readlink(name, dir_fd=directory))
    else:
        writer.refuse(prefix, _kind_name(kind))


def _kind_name(kind: int) -> str:
    names = {stat.S_IFIFO: "a fifo", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device"}
    return names.get(kind, "a block device" if kind == stat.S_IFBLK else "an entry of an unknown kind")


def copy_tree(writer: Writer, produce: Callable[[Writer], None]) -> list[str]:
    """Run ``produce(writer)``, then finish the copy; on any failure remove what it created and re-raise."""
    try:
        produce(writer)
    except BaseException:
        writer.abort()
        raise
    return writer.finish()


# -- the host side of a copy out: where host_dest is --------------------------------------------


def host_target(host_dest: str | os.PathLike[str], source: str, overwrite: bool) -> tuple[int, str, str]:
    """Open the directory that receives a copy out of the work dir; return (its fd, the copy's name, shown path).

    ``host_dest`` is the path the copy gets, or with a trailing ``/`` the directory it goes into
    (under the name of ``source``). Its parents are made. Raises HostPathExistsError when the
    copy's path exists and not ``overwrite``.
    """
    text = os.fspath(host_dest)
    if not isinstance(text, str) or not text:
        raise WorkPathError(f"host_dest must be a non-empty path, got {text!r}", path=str(text))
    if is_directory_form(text) and source != ".":
        parent, top = os.path.abspath(text), posixpath.basename(source)
    else:
        parent, top = os.path.split(os.path.abspath(text))
    os.makedirs(parent, exist_ok=True)
    fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    shown = os.path.join(parent, top)
    try:
        os.stat(top, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return fd, top, shown
    except BaseException:
        os.close(fd)
        raise
    if not overwrite:
        os.close(fd)
        raise HostPathExistsError(path=shown)
    return fd, top, shown


# -- the host backend's files --------------------------------------------------------------------


class HostFiles:
    """Files of a work dir on this host's disk (the local executor, or a mounted container's)."""

    def __init__(
        self, work_dir: str, code_dir: str, owner: tuple[int, int] | None = None, changes: Changes | None = None
    ) -> None:
        self._work_dir, self._roots = work_dir, (work_dir, code_dir)
        self._changes = changes if changes is not None else Changes(work_dir)
        # A container's unprivileged user must own what we put in its mounted work dir.
        self._owner = owner if owner is not None and os.geteuid() == 0 else None

    def copy_to(self, host_path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[str]:
        """Copy a host file or directory into the work dir; return the work-dir-relative names written."""
        source = os.path.abspath(os.fspath(host_path))
        dest_text = os.fspath(dest)
        folder, top = _destination(work_path(dest_text, self._roots, allow_root=True), dest_text, source)
        if not os.path.lexists(source):
            raise WorkFileNotFoundError(f"{source!r} does not exist on the host; nothing was copied", path=source)
        root = os.open(self._work_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            parent = _open_folder(root, folder)
            writer = Writer(parent, top, shown=_join(folder, top), links_inside=False, replace=True, owner=self._owner)
            head, name = os.path.split(source)
            source_dir = os.open(head, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                written = copy_tree(writer, lambda w: walk(source_dir, name, w, follow_top=True))
            finally:
                os.close(source_dir)
                os.close(parent)
        finally:
            os.close(root)
        return sorted(_join(folder, top, entry) for entry in written)

    def copy_from(
        self, path: str | os.PathLike[str], host_dest: str | os.PathLike[str], *, overwrite: bool, max_bytes: int
    ) -> list[str]:
        """Copy a file or directory of the work dir to the host; return the work-dir-relative names copied."""
        relative = work_path(path, self._roots, allow_root=True)
        root = os.open(self._work_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            directory, name = (os.dup(root), ".") if relative == "." else _open_source(root, relative)
            try:
                if not _exists(directory, name):
                    raise WorkFileNotFoundError(path=relative)
                parent, top, _ = host_target(host_dest, relative, overwrite)
                try:
                    writer = Writer(
                        parent, top, shown=relative, links_inside=True, replace=overwrite, max_bytes=max_bytes
                    )
                    written = copy_tree(writer, lambda w: walk(directory, name, w))
                finally:
                    os.close(parent)
            finally:
                os.close(directory)
        finally:
            os.close(root)
        return sorted({_join(relative, entry) for entry in written} - {"."})

    def watch(self) -> Callable[[Collection[str]], tuple[list[str], bool]]:
        """Start watching the work dir; the returned function lists what changed since (skipping names given)."""
        changes, began = self._changes, self._changes.begin()
        return lambda skip: changes.listing(began, MAX_LISTED, skip)


def _destination(relative: str, given: str, source: str) -> tuple[str, str]:
    """(folder in the work dir, the copy's name) for ``copy_to``'s ``dest``."""
    if is_directory_form(given) or relative == ".":
        return relative, os.path.basename(source.rstrip("/")) or "root"
    return posixpath.split(relative) if "/" in relative else (".", relative)


def _join(*parts: str) -> str:
    return posixpath.normpath(posixpath.join(*[part for part in parts if part]))


def _open_folder(root: int, folder: str) -> int:
    """Open (making it) the work dir's folder ``folder`` without following links; WorkPathError through a link."""
    if folder == ".":
        return os.dup(root)
    try:
        directory, _ = open_in(root, folder + "/x", True)
    except ValueError:
        raise WorkPathError(f"{folder!r} goes through a symlink; copy to a real directory", path=folder) from None
    return directory


def _open_source(root: int, relative: str) -> tuple[int, str]:
    try:
        return open_in(root, relative, False)
    except ValueError:
        raise WorkPathError(
            f"{relative!r} goes through a symlink, which is never followed out of the work dir", path=relative
        ) from None
    except (FileNotFoundError, NotADirectoryError):
        raise WorkFileNotFoundError(path=relative) from None


def _exists(directory: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True
