"""The stdlib corpus: every standard-library module with a main block, run as a block both ways.

Each module's source is a block (run as a file, as a user's block is), once started anew and
once forked from the fork server, in one work dir; exit codes and outputs must match after
masking file names, addresses and times. Modules whose normal run takes over TIME_CAP seconds
are skipped when they do (they are servers or long demos). Run by ``nox -s forkserver``.
"""

from __future__ import annotations

import os
import re
import sysconfig
import warnings
from pathlib import Path
from typing import Iterator

import pytest

import ccexec
from ccexec import CodeBlock

STDLIB = Path(sysconfig.get_paths()["stdlib"])
#: Seconds a module's normal run may take; a slower one is skipped.
TIME_CAP = 5
GUARD = re.compile(r"^if\s+__name__\s*==\s*['\"]__main__['\"]\s*:", re.MULTILINE)
#: Directories not searched, and why.
SKIPPED_DIRECTORIES = {
    "site-packages": "third-party packages, not the standard library",
    "test": "CPython's and packages' own test suites (ctypes/test, unittest/test...), not modules",
    "tests": "test suites, not modules",
    "idlelib": "IDLE, a GUI",
    "tkinter": "GUI toolkit: needs a display",
    "turtledemo": "GUI demos: need a display",
    "ensurepip": "installs or uninstalls pip in the running Python",
    "__pycache__": "bytecode",
}
#: Modules whose main block must not run here, and why.
EXCLUDED = {
    "compileall.py": "writes bytecode into every directory on sys.path",
    "http/server.py": "serves on port 8000 until killed",
    "smtpd.py": "serves until killed",
    "xmlrpc/server.py": "serves on port 8000",
    "wsgiref/simple_server.py": "serves on port 8000",
    "xmlrpc/client.py": "talks to a server on localhost:8000",
    "ftplib.py": "network client",
    "imaplib.py": "network client",
    "nntplib.py": "network client",
    "poplib.py": "network client",
    "smtplib.py": "network client",
    "telnetlib.py": "network client",
    "xml/sax/expatreader.py": "fetches a URL",
    "webbrowser.py": "opens a browser",
    "turtle.py": "needs a display",
    "curses/has_key.py": "needs a terminal",
    "curses/textpad.py": "needs a terminal",
    "timeit.py": "prints timings of its own run",
    "gzip.py": "compresses stdin to stdout: the header holds the current second, which may tick between the runs",
    "random.py": "prints timings and statistics of random draws",
    "uuid.py": "prints a new random UUID (3.12+)",
    "cgi.py": "prints the whole environment (secrets too) into the test log on a failure",
    "sndhdr.py": "lists the work dir, whose generated file names differ between the runs",
}


def corpus() -> list[str]:
    """Every module under the stdlib with a main block, but for the skipped directories and exclusions."""
    found = []
    for root, directories, files in os.walk(STDLIB):
        directories[:] = sorted(d for d in directories if d not in SKIPPED_DIRECTORIES)
        for name in sorted(files):
            path = Path(root, name)
            relative = path.relative_to(STDLIB).as_posix()
            if name.endswith(".py") and relative not in EXCLUDED:
                try:
                    source = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError):
                    continue
                if GUARD.search(source):
                    found.append(relative)
    return found


def mask(text: str) -> str:
    """Generated file names, addresses, times and long numbers (pids, sizes) made equal."""
    text = re.sub(r"tmp_code_[0-9a-f]{12}_[0-9a-f]{8}", "tmp_code_X", text)
    text = re.sub(r"0x[0-9a-fA-F]+", "0xADDR", text)
    text = re.sub(r"\d+\.\d+", "N.N", text)
    return re.sub(r"\b\d{5,}\b", "N", text)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ccexec.LocalCommandLineCodeExecutor, ...]]:
    work = tmp_path_factory.mktemp("corpus")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        normal = ccexec.LocalCommandLineCodeExecutor(timeout=TIME_CAP, work_dir=work)
        forked = ccexec.LocalCommandLineCodeExecutor(timeout=TIME_CAP, work_dir=work, fork_server=True)
    with normal, forked:
        yield normal, forked


def test_corpus_is_large() -> None:
    """The selection finds the stdlib's main blocks (not an empty list by a broken scan)."""
    assert len(corpus()) > 40


@pytest.mark.parametrize("module", corpus())
def test_stdlib_main_block(pair: tuple[ccexec.LocalCommandLineCodeExecutor, ...], module: str) -> None:
    """The module's main block prints and exits the same, forked or started anew."""
    normal, forked = pair
    blocks = [CodeBlock((STDLIB / module).read_text(encoding="utf-8"), "python")]
    expected = normal.execute_code_blocks(blocks)
    if expected.timed_out:
        pytest.skip(f"does not finish within {TIME_CAP} s")
    got = forked.execute_code_blocks(blocks)
    assert (got.exit_code, mask(got.output)) == (expected.exit_code, mask(expected.output))
