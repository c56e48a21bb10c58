"""Which files under the work dir changed since a moment: one ``scandir`` walk, nothing read.

Used on the host, and shipped into containers as text (part of the supervisor, or run as
``python -I -S -c SOURCE``), so Python 3.8+, standard library only, type comments. The walk
opens each directory relative to its parent with O_NOFOLLOW: a symlink is listed as an entry,
never entered.
"""

import json
import os
import time

MYPY = False
if MYPY:  # for type comments only
    from typing import Container, List, Optional, Set, Tuple  # noqa: F401

#: CLOCK_REALTIME_COARSE (Linux): the clock the kernel stamps file times with, so a file written
#: after a reading of it is never older than that reading (time.time_ns() may run a tick ahead).
COARSE_CLOCK = 5
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def now_ns():
    # type: () -> int
    """The coarse wall clock that file times come from, in nanoseconds."""
    return time.clock_gettime_ns(COARSE_CLOCK)


def generated(name):
    # type: (str) -> bool
    """Whether ``name`` has the form of a generated code file's (``blocks.generated_filename``):
    ``tmp_code_`` + 12 hex digits + ``_`` + 8 hex digits + ``.`` + an extension."""
    return (
        len(name) > 31 and name.startswith("tmp_code_") and name[21] == "_" and name[30] == "."
        and not name[9:21].strip(_HEX) and not name[22:30].strip(_HEX)
    )  # fmt: skip


_HEX = "0123456789abcdef"
_SEEN = set()  # type: Set[str]  # generated names met already: known again by one lookup


def _remember(name):
    # type: (str) -> bool
    """Whether ``name`` is a generated one (remembered if so)."""
    if not generated(name):
        return False
    if len(_SEEN) < 100000:
        _SEEN.add(name)
    return True


def changed(root, since_ns, limit, skip=(), *, youngest=False, seen=None):
    # type: (str, int, int, Container[str], bool, Optional[List[int]]) -> Tuple[List[Tuple[str, int]], bool]
    """Return ``([(relative name, change time), ...], cut)`` for files and links under ``root``
    changed (modified, created, renamed or chmod-ed: the later of mtime and ctime) at or after
    ``since_ns``, sorted by name, at most ``limit`` (with ``youngest``, the ``limit`` most
    recently changed); ``cut`` says more were found. Names in ``skip`` are left out, and so are
    generated code files, without a look at them (calls keep theirs: the work dir fills up with
    them); directories are walked, not listed. ``seen``, when given, gets the number of entries read."""
    found = []  # type: List[Tuple[str, int]]
    top = os.open(root, _DIR_FLAGS)
    stack = [("", top)]
    while stack:
        prefix, fd = stack.pop()
        try:
            names = os.listdir(fd)  # names only: a work dir of kept code files lists fast
            if seen is not None:
                seen.append(len(names))
            for entry in names:
                if entry in _SEEN or (entry.startswith("tmp_code_") and _remember(entry)):
                    continue
                name = prefix + entry
                try:
                    stat = os.stat(entry, dir_fd=fd, follow_symlinks=False)
                    if stat.st_mode & 0o170000 == 0o040000:
                        stack.append((name + "/", os.open(entry, _DIR_FLAGS, dir_fd=fd)))
                        continue
                except OSError:
                    continue  # gone, or replaced by a link, meanwhile
                stamp = max(stat.st_mtime_ns, stat.st_ctime_ns)
                if stamp >= since_ns and name not in skip:
                    found.append((name, stamp))
        except OSError:
            pass
        finally:
            os.close(fd)
    if youngest:
        found.sort(key=lambda item: item[1], reverse=True)
        return sorted(found[:limit]), len(found) > limit
    found.sort()
    return found[:limit], len(found) > limit


def report(args):
    # type: (List[str]) -> None
    """In a container: ``args`` are WINDOW_NS LIMIT SKIP_JSON; write the LIMIT files changed most
    recently within the last WINDOW_NS nanoseconds of the container's clock to stdout as JSON,
    each with its age (the host, whose clock may differ, decides with the ages). Run by the
    supervisor's shepherd in a forked process, or as ``python -c SOURCE + "report(sys.argv[1:])"``."""
    window, limit, skip = int(args[0]), int(args[1]), set(json.loads(args[2]))
    now = now_ns()
    files, cut = changed(".", now - window, limit, skip, youngest=True)
    data = memoryview(json.dumps({"files": [[name, now - stamp] for name, stamp in files], "cut": cut}).encode())
    while data:
        data = data[os.write(1, data) :]
