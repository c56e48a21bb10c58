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

try:  # imported from ccexec on the host (tests, tools)
    from ._inotify import IN_ATTRIB, IN_CREATE, IN_DELETE, IN_MOVED_FROM, Tree
    from ._workdir import open_in
except ImportError:  # shipped as text after _workdir's and _inotify's: their names are defined already
    pass

MYPY = False
if MYPY:  # for type comments only
    from typing import List, Optional, Tuple  # noqa: F401

_WATCHED = IN_ATTRIB | IN_CREATE | IN_DELETE


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
        self.tree = Tree(root_fd, _WATCHED)
        self.full()

    def scrub(self):
        # type: () -> int
        """Scrub what changed since the last scrub; return how many entries were changed."""
        named = self.changes()
        if named is None:
            return self.full()
        entries, directories = named
        changed = 0
        for path in entries:
            try:
                directory, name = open_in(self.tree.root, path, False)
            except (OSError, ValueError):
                continue  # gone, or under a link now: not in the work dir any more
            try:
                changed += clean(directory, name)
            finally:
                os.close(directory)
        for path in directories:
            changed += self.tree.walk(path, _clean)
        return changed

    def changes(self):
        # type: () -> Optional[Tuple[List[str], List[str]]]
        """The entries and the new directories the queued events name; None if they may not name all."""
        named = self.tree.changes()
        if named is None:
            return None
        entries, directories, seen = named
        if seen & IN_ATTRIB and seen & (IN_DELETE | IN_MOVED_FROM):
            return None
        return entries, directories

    def full(self):
        # type: () -> int
        """Watch the whole tree anew and scrub all of it."""
        self.tree.restart()
        return self.tree.walk("", _clean)


def _clean(directory, path, name):
    # type: (int, str, str) -> int
    return clean(directory, name)
