"""Keeping a mounted work dir free of setuid/setgid files and device nodes, looking only at what changed.

Part of the supervisor (see ``_supervisor.py``): shipped into containers as text, Python 3.8+,
standard library only. A block running as root in a container could otherwise leave a
setuid-root program or a raw disk device in a work dir that the host's users can reach; the
supervisor scrubs it at the end of each call.

A full scrub looks at every entry (about 2 us each), and the work dir grows with the code files
calls keep. So ``Scrubber`` watches every directory with inotify(7) and, at the next scrub, looks
only at the entries the events name (created, linked, moved in, chmod-ed) and walks only the
directories that are new. When the events cannot be trusted to name everything, it scrubs and
watches the whole tree anew:

- the event queue overflowed, or a watch could not be added (no inotify: always);
- a directory was moved (the paths the watches stand for are stale);
- a chmod event came in a call that also removed or moved away a file: a block can change a
  file through a descriptor whose name is gone while another hard link to it stays.

A block cannot carry a descriptor or a process from one call into the next (everything of a
block is killed when it ends), so each call's changes are all in the events read at its end.
"""

import os
import struct

try:  # imported from ccexec on the host (tests, tools)
    from ._workdir import open_in
except ImportError:  # shipped as text after _workdir's: its names are defined already
    pass

MYPY = False
if MYPY:  # for type comments only
    from typing import Any, Dict, List, Optional, Tuple  # noqa: F401

# inotify(7)
_IN_ATTRIB, _IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x4, 0x40, 0x80, 0x100, 0x200
_IN_MOVE_SELF, _IN_Q_OVERFLOW, _IN_IGNORED, _IN_ISDIR = 0x800, 0x4000, 0x8000, 0x40000000
_IN_ONLYDIR, _IN_NONBLOCK, _IN_CLOEXEC = 0x01000000, 0o4000, 0o2000000
_WATCHED = _IN_ATTRIB | _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE | _IN_MOVE_SELF | _IN_ONLYDIR
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then the name, NUL-padded


def clean(directory, name):
    # type: (int, str) -> bool
    """Remove ``name`` if it is a device node, strip its setuid/setgid bits if it is a regular file
    (no symlink followed); return whether it was changed."""
    try:
        mode = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode
        kind = mode & 0o170000
        if kind in (0o020000, 0o060000):  # character or block device
            os.unlink(name, dir_fd=directory)
            return True
        if kind == 0o100000 and mode & 0o6000:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
            try:
                os.fchmod(fd, mode & 0o1777)
            finally:
                os.close(fd)
            return True
    except OSError:
        pass  # gone or replaced meanwhile
    return False


class Scrubber:
    """Scrubs the work dir (``root_fd``) at each ``scrub()``: what changed since the last one, or all of it."""

    def __init__(self, root_fd):
        # type: (int) -> None
        self.root = root_fd
        self.fd = -1  # the inotify instance; -1: none (every scrub is a full one)
        self.paths = {}  # type: Dict[int, str]  # watch descriptor -> directory, relative ("" the root)
        self.init = self.add = None  # type: Any  # libc's inotify_init1 and inotify_add_watch
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            self.init, self.add = libc.inotify_init1, libc.inotify_add_watch
            self.add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        except (ImportError, OSError, AttributeError):
            pass  # full scrubs only
        self.full()

    def scrub(self):
        # type: () -> int
        """Scrub what changed since the last scrub; return how many entries were changed."""
        named = self.changes() if self.fd >= 0 else None
        if named is None:
            return self.full()
        entries, directories = named
        changed = 0
        for path in entries:
            try:
                directory, name = open_in(self.root, path, False)
            except (OSError, ValueError):
                continue  # gone, or under a link now: not in the work dir any more
            try:
                changed += clean(directory, name)
            finally:
                os.close(directory)
        for path in directories:
            changed += self.walk(path)
        return changed

    def changes(self):
        # type: () -> Optional[Tuple[List[str], List[str]]]
        """The entries and the new directories the queued events name; None if they may not name all."""
        entries, directories, attributes, removals = [], [], False, False  # type: List[str], List[str], bool, bool
        for wd, mask, name in self.events():
            moved = mask & _IN_MOVE_SELF or (mask & _IN_ISDIR and mask & (_IN_MOVED_FROM | _IN_MOVED_TO))
            if mask & _IN_Q_OVERFLOW or moved:
                return None
            if mask & _IN_IGNORED:
                self.paths.pop(wd, None)
                continue
            base = self.paths.get(wd)
            if base is None or not name:
                continue  # a directory gone since, or an event about the directory itself
            path = base + "/" + name if base else name
            removals = removals or bool(mask & (_IN_DELETE | _IN_MOVED_FROM))
            attributes = attributes or bool(mask & _IN_ATTRIB and not mask & _IN_ISDIR)
            if mask & _IN_ISDIR:
                if mask & _IN_CREATE:
                    directories.append(path)
            elif mask & (_IN_CREATE | _IN_MOVED_TO | _IN_ATTRIB):
                entries.append(path)
        if attributes and removals:
            return None
        return entries, directories

    def full(self):
        # type: () -> int
        """Watch the whole tree anew and scrub all of it."""
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.paths = -1, {}
        if self.add is not None:
            self.fd = self.init(_IN_NONBLOCK | _IN_CLOEXEC)
        return self.walk("")

    def walk(self, top):
        # type: (str) -> int
        """Watch each directory under ``top`` (before listing it), scrub every entry there."""
        changed, todo = 0, [top]
        while todo:
            path = todo.pop()
            try:
                if path:
                    parent, name = open_in(self.root, path, False)
                    try:
                        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
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
                        changed += clean(fd, name)
            except OSError:
                pass
            finally:
                os.close(fd)
        return changed

    def watch(self, fd, path):
        # type: (int, str) -> None
        if self.fd < 0:
            return
        wd = self.add(self.fd, b"/proc/self/fd/%d" % fd, _WATCHED)
        if wd < 0:  # out of watches (or no /proc): full scrubs from now on
            os.close(self.fd)
            self.fd, self.add = -1, None
            return
        self.paths[wd] = path

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
