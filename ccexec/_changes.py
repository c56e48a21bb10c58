"""What a call changed in a work dir on this host's disk: a walk of it, or inotify's events once it is large.

A walk reads every entry of the work dir (about 0.4 us each, under the GIL), and the work dir
grows with the code files calls keep: at a few thousand of them, the walk costs more than the
block. So once a walk has read ``WATCH_FROM`` entries, one inotify instance watches every
directory of the work dir (``_inotify.Tree``), and a call's listing looks only at the entries
the events named since the call began, with the walk's test (changed at or after the call's
start). When the events may not name everything (the queue overflowed, a directory moved, the
work dir itself went away, no watch could be added), the calls in progress list by a walk and
the tree is watched anew.

A watched work dir lists two changes a walk would, no more: a file changed only through a
shared memory map (its times change, no event comes), and a file's old name when its only
change is a new hard link (its ctime changes; the new name is listed).
"""

from __future__ import annotations

import contextlib
import os
import threading
import weakref
from collections.abc import Collection

from ._inotify import IN_ATTRIB, IN_CREATE, IN_MODIFY, IN_MOVED_TO, Tree
from ._listing import changed, generated, now_ns
from ._workdir import open_in

#: Entries a walk must read before the work dir is watched instead.
WATCH_FROM = 2000
_WATCHED = IN_CREATE | IN_MOVED_TO | IN_MODIFY | IN_ATTRIB
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Began = tuple[int, int]  # (the call's window, the coarse clock when it began)


class Changes:
    """The change log of one work dir, shared by the calls of its executor (any number at once)."""

    def __init__(self, work_dir: str) -> None:
        self._work_dir = work_dir
        self._lock = threading.Lock()
        self._tree: Tree | None = None
        self._unwatchable = False  # inotify missing, refused or out of watches: walks only
        self._window = 0  # events read now are tagged with this; each call's begin() opens a new one
        self._log: list[tuple[int, str]] = []  # (window, path) for every entry an event named
        self._walk_before = 0  # calls that began in an earlier window list by a walk
        self._open: dict[int, int] = {}  # window -> calls that began in it and have not listed yet
        self._finalizer = weakref.finalize(self, _close, [])  # closes the tree's descriptors

    def begin(self) -> Began:
        """Mark a call's start; pass what this returns to ``listing`` once."""
        with self._lock:
            self._read()
            self._window += 1
            self._open[self._window] = self._open.get(self._window, 0) + 1
            window = self._window
        return window, now_ns()

    def listing(self, began: Began, limit: int, skip: Collection[str]) -> tuple[list[str], bool]:
        """The files changed since ``began`` (sorted, at most ``limit``), without ``skip``; whether more were."""
        window, since = began
        with self._lock:
            self._read()
            watched = self._tree is not None and window >= self._walk_before
            named = {path for tagged, path in self._log if tagged >= window} if watched else set()
            self._end(window)
        if not watched:
            seen: list[int] = []
            found, cut = changed(self._work_dir, since, limit, skip, seen=seen)
            if sum(seen) >= WATCH_FROM:
                self._start_watching()
            return [name for name, _ in found], cut
        names = sorted(self._look(named, since, skip))
        return names[:limit], len(names) > limit

    def close(self) -> None:
        """Stop watching (a later call starts again from a walk)."""
        with self._lock:
            self._drop_tree()

    # -- with the lock held ----------------------------------------------------------------------

    def _read(self) -> None:
        """Tag what the queued events name with the current window; walk the new directories."""
        tree = self._tree
        if tree is None:
            return
        named = tree.changes()
        if named is None:  # they may not name everything: calls begun so far walk; watch anew
            self._walk_before = self._window + 1
            self._log.clear()
            self._watch_anew()
            return
        entries, directories, _ = named
        window = self._window
        self._log.extend((window, path) for path in entries if not generated(path.rpartition("/")[2]))
        for top in directories:

            def visit(fd: int, path: str, name: str) -> int:
                self._log.append((window, f"{path}/{name}"))
                return 0

            tree.walk(top, visit)
        if tree.fd < 0:  # out of watches meanwhile
            self._give_up()

    def _end(self, window: int) -> None:
        """One call of ``window`` listed: forget the log no open call needs."""
        left = self._open.get(window, 1) - 1
        if left:
            self._open[window] = left
        else:
            self._open.pop(window, None)
        oldest = min(self._open, default=self._window + 1)
        keep = next((index for index, (tagged, _) in enumerate(self._log) if tagged >= oldest), len(self._log))
        del self._log[:keep]

    def _watch_anew(self) -> None:
        """(Re)open the work dir, watch all of it; give up on failure."""
        self._drop_tree()
        try:
            root = os.open(self._work_dir, _DIRECTORY)
        except OSError:
            return  # gone: walks say so; the next large walk watches again
        tree = Tree(root, _WATCHED)
        tree.restart()
        if tree.fd >= 0:
            tree.walk("", lambda fd, path, name: 0)
        if tree.fd < 0:
            os.close(root)
            self._unwatchable = True
            return
        self._tree = tree
        self._finalizer = weakref.finalize(self, _close, [tree.fd, root])

    def _drop_tree(self) -> None:
        """Close the watched tree's descriptors, if any (the finalizer forgets them first)."""
        self._finalizer.detach()
        tree, self._tree = self._tree, None
        if tree is not None:
            tree.close()
            os.close(tree.root)

    def _give_up(self) -> None:
        """No more watching: every call from now on (and those in progress) lists by a walk."""
        self._drop_tree()
        self._unwatchable = True
        self._walk_before = self._window + 1
        self._log.clear()

    # -- without the lock ------------------------------------------------------------------------

    def _start_watching(self) -> None:
        with self._lock:
            if self._tree is None and not self._unwatchable:
                self._watch_anew()
                self._walk_before = self._window + 1  # calls begun before now were not watched whole

    def _look(self, named: set[str], since: int, skip: Collection[str]) -> list[str]:
        """The named entries that are files or links changed at or after ``since``, as a walk would find them."""
        found = []
        root = os.open(self._work_dir, _DIRECTORY)
        try:
            for path in named:
                if path in skip:
                    continue
                try:
                    directory, name = open_in(root, path, False)
                except (OSError, ValueError):
                    continue  # gone, or under a link now
                try:
                    stat = os.stat(name, dir_fd=directory, follow_symlinks=False)
                except OSError:
                    continue
                finally:
                    os.close(directory)
                if stat.st_mode & 0o170000 != 0o040000 and max(stat.st_mtime_ns, stat.st_ctime_ns) >= since:
                    found.append(path)
        finally:
            os.close(root)
        return found


def _close(fds: list[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
