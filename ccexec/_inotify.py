"""A directory tree watched with inotify(7): one watch per directory, its events read without blocking.

Shared by the supervisor's scrubber (shipped into containers as text after ``_workdir``'s, so
Python 3.8+, standard library only, type comments) and the host's change log (``_changes.py``).
A watch is added to a directory before it is listed, so nothing made in it meanwhile is missed;
directories are opened without following links, so a watch never lands outside the tree.
"""

import os
import struct

try:  # imported from ccexec on the host
    from ._workdir import open_in
except ImportError:  # shipped as text after _workdir's: its names are defined already
    pass

MYPY = False
if MYPY:  # for type comments only
    from typing import Any, Callable, Dict, List, Optional, Set, Tuple  # noqa: F401

IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x4, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_DELETE_SELF, IN_MOVE_SELF = 0x100, 0x200, 0x400, 0x800
_IN_Q_OVERFLOW, _IN_IGNORED, _IN_ISDIR, _IN_ONLYDIR = 0x4000, 0x8000, 0x40000000, 0x01000000
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the name, NUL-padded
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Tree:
    """Every directory under ``root_fd`` watched for ``mask`` (plus moves of directories) by one instance.

    ``fd`` is -1 when there is no instance: inotify is missing, refused (too many instances), or
    ran out of watches; then every ``changes()`` is None and the caller looks at everything.
    """

    def __init__(self, root_fd, mask):
        # type: (int, int) -> None
        self.root = root_fd
        self.mask = mask | IN_MOVED_FROM | IN_MOVED_TO | IN_MOVE_SELF | IN_DELETE_SELF | _IN_ONLYDIR
        self.fd = -1
        self.paths = {}  # type: Dict[int, str]  # watch descriptor -> directory, relative ("" the root)
        self.watched = set()  # type: Set[str]  # the paths' values
        self.init = self.add = None  # type: Any  # libc's inotify_init1 and inotify_add_watch
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            self.init, self.add = libc.inotify_init1, libc.inotify_add_watch
            self.add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        except (ImportError, OSError, AttributeError):
            pass  # no watching: every changes() is None

    def restart(self):
        # type: () -> None
        """Drop every watch and take a new instance (none when inotify is missing or refused)."""
        self.close()
        if self.add is not None:
            self.fd = self.init(_IN_NONBLOCK | _IN_CLOEXEC)

    def close(self):
        # type: () -> None
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.paths, self.watched = -1, {}, set()

    def walk(self, top, visit):
        # type: (str, Callable[[int, str, str], int]) -> int
        """Watch each directory under ``top`` (before listing it) and call ``visit(directory fd, its
        relative path, name)`` for every entry that is not a directory; return the sum of what it returned."""
        total, todo = 0, [top]
        while todo:
            path = todo.pop()
            try:
                if path:
                    parent, name = open_in(self.root, path, False)
                    try:
                        fd = os.open(name, _DIRECTORY, dir_fd=parent)
                    finally:
                        os.close(parent)
                else:
                    fd = os.dup(self.root)
            except (OSError, ValueError):
                continue  # gone, or a link now
            try:
                self.watch(fd, path)
                with os.scandir(fd) as listing:
                    names = [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in listing]
                for name, is_directory in names:
                    if is_directory:
                        todo.append(path + "/" + name if path else name)
                    else:
                        total += visit(fd, path, name)
            except OSError:
                pass
            finally:
                os.close(fd)
        return total

    def watch(self, fd, path):
        # type: (int, str) -> None
        if self.fd < 0:
            return
        wd = self.add(self.fd, b"/proc/self/fd/%d" % fd, self.mask)
        if wd < 0:  # out of watches (or no /proc): no watching from now on
            self.close()
            self.add = None
            return
        self.paths[wd] = path
        self.watched.add(path)

    def changes(self):
        # type: () -> Optional[Tuple[List[str], List[str], int]]
        """``(entries, directories to walk, the entries' event masks or-ed)`` for what the queued
        events name (entries: made, linked, moved in, written or chmod-ed; directories: new, or
        chmod-ed while not watched; relative paths); None when they may not name everything: no
        instance, the queue overflowed, a directory moved, the top went away."""
        if self.fd < 0:
            return None
        entries, directories, seen = [], [], 0  # type: List[str], List[str], int
        for wd, mask, name in self.events():
            moved = mask & IN_MOVE_SELF or (mask & _IN_ISDIR and mask & (IN_MOVED_FROM | IN_MOVED_TO))
            if mask & _IN_Q_OVERFLOW or moved or (mask & IN_DELETE_SELF and self.paths.get(wd) == ""):
                return None
            if mask & _IN_IGNORED:
                if wd in self.paths:
                    self.watched.discard(self.paths.pop(wd))
                continue
            base = self.paths.get(wd)
            if base is None or not name:
                continue  # a directory gone since, or an event about the directory itself
            path = base + "/" + name if base else name
            if mask & _IN_ISDIR:  # new, or chmod-ed and not watched yet (it could not be opened)
                if mask & IN_CREATE or (mask & IN_ATTRIB and path not in self.watched):
                    directories.append(path)
                continue
            seen |= mask
            if mask & (IN_CREATE | IN_MOVED_TO | IN_ATTRIB | IN_MODIFY):
                entries.append(path)
        return entries, directories, seen

    def events(self):
        # type: () -> List[Tuple[int, int, str]]
        """Every event queued now, as (wd, mask, name)."""
        data = b""
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        events, offset = [], 0  # type: List[Tuple[int, int, str]], int
        while offset + _EVENT.size <= len(data):
            wd, mask, _, size = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            name = data[offset : offset + size].rstrip(b"\0")
            offset += size
            events.append((wd, mask, os.fsdecode(name)))
        return events
