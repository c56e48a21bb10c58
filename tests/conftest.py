"""Shared fixtures: executors in tmp_path work dirs, and checks that processes are gone."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import Iterator

import pytest

import ccexec


@pytest.fixture
def local(tmp_path: Path) -> Iterator[ccexec.LocalCommandLineCodeExecutor]:
    """A local executor with a short timeout in a fresh work dir."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        executor = ccexec.LocalCommandLineCodeExecutor(timeout=10, work_dir=tmp_path)
    with executor:
        yield executor


def pid_alive(pid: int) -> bool:
    """Return whether a process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pids: list[int], within: float = 2.0) -> list[int]:
    """Return the pids still alive after ``within`` seconds."""
    end = time.monotonic() + within
    alive = [pid for pid in pids if pid_alive(pid)]
    while alive and time.monotonic() < end:
        time.sleep(0.02)
        alive = [pid for pid in alive if pid_alive(pid)]
    return alive


def read_pids(path: Path) -> list[int]:
    """Read the pids a block wrote, one per line."""
    return [int(line) for line in path.read_text().split()]


HELPERS = Path(__file__).parent / "helpers"
assert HELPERS.is_dir()
os.environ.setdefault("PYTHONWARNDEFAULTENCODING", "1")
