"""Writing and deleting files under the work dir without following any symlink (an ``openat`` walk).

Part of the supervisor (see ``_supervisor.py``): shipped into containers as text, Python 3.8+,
standard library only.
"""

import os

MYPY = False
if MYPY:  # for type comments only
    from typing import Dict, Tuple  # noqa: F401


def open_in(root_fd, relative, create_dirs):
    # type: (int, str, bool) -> Tuple[int, str]
    """Return (directory fd, last name) for ``relative`` under ``root_fd``, following no symlink.

    Raises ValueError for a path that leaves the directory (``..``, absolute, or through a
    symlink), OSError for the rest.
    """
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    if not parts or relative.startswith("/") or ".." in parts or "\0" in relative:
        raise ValueError(relative) from None
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            try:
                child = open_directory(fd, part)
            except FileNotFoundError:
                if not create_dirs:
                    raise
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass  # made meanwhile; opening it checks what it is
                child = open_directory(fd, part)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd, parts[-1]


def is_link(directory, name):
    # type: (int, str) -> bool
    try:
        return os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode & 0o170000 == 0o120000
    except OSError:
        return False


def open_directory(directory, name):
    # type: (int, str) -> int
    """Open the directory ``name`` in ``directory``; a symlink there is a ValueError (it may lead out)."""
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=directory)
    except OSError:
        if is_link(directory, name):
            raise ValueError(name) from None
        raise


def write_file(root_fd, relative, text):
    # type: (int, str, str) -> None
    """Write ``text`` (UTF-8) to ``relative`` under ``root_fd``, making parents; no symlink followed."""
    directory, name = open_in(root_fd, relative, True)
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o666, dir_fd=directory)
        except OSError:
            if is_link(directory, name):
                raise ValueError(relative) from None
            raise
    finally:
        os.close(directory)
    with open(fd, "wb") as handle:
        handle.write(text.encode("utf-8", "surrogateescape"))


def delete_file(root_fd, relative):
    # type: (int, str) -> None
    directory, name = open_in(root_fd, relative, False)
    try:
        os.unlink(name, dir_fd=directory)
    finally:
        os.close(directory)
