"""Pure helpers: file naming and workspace checks, languages, block coercion, capture, results, errors."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import pickle
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import pytest

import ccexec
from ccexec import errors
from ccexec._capture import OutputCapture
from ccexec.blocks import (
    CodeBlock,
    FilenameOutsideWorkspace,
    Language,
    coerce_blocks,
    container_relative_path,
    relative_name,
    requested_filename,
)
from ccexec.results import BlockResult, CommandLineCodeResult, describe_exit

# -- requested_filename -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("# filename: a b.py\nprint(1)", "a b.py"),
        ("// filename: x.js\nconsole.log(1)", "x.js"),
        ("<!-- filename: x.html -->\n<p>hi</p>", "x.html"),
        ("/* filename: x.c */\nint main(void) { return 0; }", "x.c"),
        ("-- filename: q.sql\nselect 1;", "q.sql"),
        ("# FileName: Upper.py\n", "Upper.py"),
        ("# FILENAME:tight.py", "tight.py"),
        ("\ufeff# filename: bom.py\nprint(1)", "bom.py"),
        ('# filename: "quoted name.py"\n', "quoted name.py"),
        ("# filename: 'single.py'\n", "single.py"),
        ("# filename: `tick.py`\n", "tick.py"),
        ("# filename: sub dir/c:d.txt\n", "sub dir/c:d.txt"),
        ("# filename: crlf.py\r\nprint(1)\r\n", "crlf.py"),
        ("    # filename: indented.py\n", "indented.py"),
        ("# filename: trailing.py   \n", "trailing.py"),
        ("# just a comment\nprint(1)", None),
        ("#!/usr/bin/env python\n", None),
        ("print(1)\n# filename: second_line.py", None),
        ("# filename:\nprint(1)", None),
        ('# filename: ""\n', None),
        ("filename: no_comment.py\n", None),
        ("", None),
    ],
)
def test_requested_filename(code: str, expected: str | None) -> None:
    """The first line names the file only with a comment marker and the `filename:` keyword."""
    assert requested_filename(code) == expected


# -- names outside the work dir ---------------------------------------------------------------


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """A work dir with a symlink pointing outside it and one pointing inside."""
    work = tmp_path / "work"
    (work / "inner").mkdir(parents=True)
    (tmp_path / "work2").mkdir()
    (work / "out").symlink_to(tmp_path)
    (work / "in").symlink_to(work / "inner")
    return work


@pytest.mark.parametrize(
    ("resolve", "name"),
    [(container_relative_path, "../x"), (relative_name, "../x"), (container_relative_path, "/etc/passwd")],
    ids=["container", "host", "absolute"],
)
def test_filename_outside_workspace_is_caught_as_value_error(
    work: Path, resolve: Callable[[str, str], str], name: str
) -> None:
    """A refused name raises FilenameOutsideWorkspace, which `except ValueError` catches, carrying the name."""
    root = "/workspace" if resolve is container_relative_path else str(work)
    with pytest.raises(ValueError) as caught:  # noqa: PT011 - the builtin a caller catches is the point
        resolve(name, root)
    assert type(caught.value) is FilenameOutsideWorkspace
    assert caught.value.args == (name,)
    assert name in str(caught.value)


# -- container_relative_path ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a/b.py", "a/b.py"),
        ("x.py", "x.py"),
        ("/workspace/x.py", "x.py"),
        ("./x", "x"),
        ("a/./b", "a/b"),
        ("a/../b", "b"),
        ("/workspace/a/../b", "b"),
        ("sub dir/c:d.txt", "sub dir/c:d.txt"),
    ],
)
def test_container_relative_path_accepts(name: str, expected: str) -> None:
    """Names inside /workspace are returned relative to it, normalised lexically."""
    assert container_relative_path(name, "/workspace") == expected


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc/passwd", "/workspace", "/workspace/", ".", "a/../../x", "/workspace2/x", "/", "/../x", "", "a\x00b"],
)
def test_container_relative_path_rejects(name: str) -> None:
    """Names outside /workspace, /workspace itself, a prefix sibling, empty and NUL are refused."""
    with pytest.raises(FilenameOutsideWorkspace):
        container_relative_path(name, "/workspace")


# -- Language.argv ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (("{python}",), ["/venv/bin/python", "/w/f.x"]),
        (("node",), ["node", "/w/f.x"]),
        (("{python}", "-I"), ["/venv/bin/python", "-I", "/w/f.x"]),
        (("{python}", "-I", "{file}", "--verbose"), ["/venv/bin/python", "-I", "/w/f.x", "--verbose"]),
        (("sh", "-c", 'exec cat "$1"', "sh", "{file}"), ["sh", "-c", 'exec cat "$1"', "sh", "/w/f.x"]),
        (("diff", "{file}", "{file}"), ["diff", "/w/f.x", "/w/f.x"]),
    ],
)
def test_language_argv(command: tuple[str, ...], expected: list[str]) -> None:
    """{python} becomes the interpreter, {file} the file, which is appended when not named."""
    assert Language("x", command).argv("/w/f.x", "/venv/bin/python") == expected


# -- coerce_blocks ----------------------------------------------------------------------------


def test_coerce_blocks_accepts_duck_typed_blocks() -> None:
    """Objects with str code and language (AutoGen's CodeBlock) become CodeBlocks; ours pass through."""
    ours = CodeBlock("echo 1", "sh")
    blocks = coerce_blocks([SimpleNamespace(code="print(1)", language="python", extra=1), ours])
    assert blocks == [CodeBlock("print(1)", "python"), ours]
    assert type(blocks[0]) is CodeBlock
    assert blocks[1] is ours
    assert coerce_blocks(()) == []


@pytest.mark.parametrize("value", ["print(1)", b"print(1)"])
def test_coerce_blocks_rejects_a_string(value: object) -> None:
    """A bare string (a common mistake) raises TypeError instead of running each character."""
    with pytest.raises(TypeError, match="not a string"):
        coerce_blocks(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "block",
    [
        SimpleNamespace(code=1, language="python"),
        SimpleNamespace(code="x", language=None),
        SimpleNamespace(code=b"x", language="python"),
        SimpleNamespace(language="python"),
        {"code": "x", "language": "python"},
        ("x", "python"),
        None,
    ],
)
def test_coerce_blocks_rejects_wrong_types(block: object) -> None:
    """An item without str code and language raises TypeError naming its index."""
    with pytest.raises(TypeError, match=r"code_blocks\[1\]"):
        coerce_blocks([CodeBlock("x", "sh"), block])


# -- OutputCapture ----------------------------------------------------------------------------


def test_capture_keeps_everything_under_the_limit() -> None:
    """Output up to the limit is kept whole, in order, and not marked truncated."""
    seen: list[bytes] = []
    capture = OutputCapture(20, seen.append)
    for chunk in (b"hello ", b"w\xc3", b"\xa9rld\n", b"", b"0123456"):
        capture.feed(chunk)
    assert not capture.truncated
    assert capture.total == 20
    assert capture.text() == "hello w\u00e9rld\n0123456"
    assert b"".join(seen) == b"hello w\xc3\xa9rld\n0123456"


def test_capture_keeps_head_and_tail_with_a_marker() -> None:
    """Past the limit, the first and last halves are kept around a marker counting what was dropped."""
    seen: list[bytes] = []
    capture = OutputCapture(10, seen.append)
    for chunk in (b"0123", b"456789ABC", b"DEF"):
        capture.feed(chunk)
    assert capture.truncated
    assert capture.text() == "01234\n[ccexec: output truncated: 6 of 16 bytes not shown]\nBCDEF"
    assert b"".join(seen) == b"0123456789ABCDEF"


def test_capture_one_byte_over_is_truncated() -> None:
    """One byte more than the limit is already truncation."""
    capture = OutputCapture(4, None)
    capture.feed(b"abcd")
    assert (capture.truncated, capture.text()) == (False, "abcd")
    capture.feed(b"e")
    assert capture.truncated
    assert capture.text().startswith("ab\n")
    assert capture.text().endswith("\nde")


def test_capture_memory_is_bounded() -> None:
    """After 10 MB fed in chunks, the internal buffers hold less than twice the limit."""
    limit = 64 * 1024
    capture = OutputCapture(limit, None)
    chunk = bytes(range(256)) * 256  # 64 KiB
    largest = 0
    for _ in range(160):
        capture.feed(chunk)
        largest = max(largest, len(capture._head) + len(capture._tail))
    capture.feed(b"THE END")
    assert capture.total == 160 * len(chunk) + 7
    assert largest < 2 * limit
    assert len(capture._head) + len(capture._tail) < 2 * limit
    text = capture.text()
    assert text.endswith("THE END")
    assert f"of {capture.total} bytes not shown" in text
    assert len(text) < limit + 100  # kept bytes (one character each here) plus the marker


@pytest.mark.parametrize(
    ("fed", "expected"),
    [
        (b"partial", "partial\nTimeout\n"),
        (b"line\n", "line\nTimeout\n"),
        (b"", "Timeout\n"),
    ],
)
def test_capture_note_starts_a_new_line(fed: bytes, expected: str) -> None:
    """add_note puts ccexec's line on a line of its own, and streams it too."""
    seen: list[bytes] = []
    capture = OutputCapture(100, seen.append)
    capture.feed(fed)
    capture.add_note("Timeout\n")
    assert capture.text() == expected
    assert b"".join(seen).decode() == expected
    assert not capture.truncated


def test_capture_note_survives_truncation() -> None:
    """A note added after output was truncated is still shown, last."""
    capture = OutputCapture(10, None)
    capture.feed(b"x" * 1000)
    capture.add_note("Timeout: stopped\n")
    assert capture.truncated
    assert capture.text().endswith("xxxxx\nTimeout: stopped\n")


# -- results ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("code", "name"), [(-9, "SIGKILL"), (137, "SIGKILL"), (-15, "SIGTERM"), (139, "SIGSEGV")])
def test_describe_exit_names_signals(code: int, name: str) -> None:
    """Negative codes and 128 + N name the signal."""
    assert describe_exit(code) == f"exit code {code} ({name})"


@pytest.mark.parametrize("code", [0, 1, 2, 124, 127, 128, 255, -999])
def test_describe_exit_plain_codes(code: int) -> None:
    """Ordinary codes, and numbers that are no signal, are reported as they are."""
    assert describe_exit(code) == f"exit code {code}"


def test_from_blocks_empty_is_success() -> None:
    """No blocks ran: exit 0, no output, no file, nothing flagged."""
    result = CommandLineCodeResult.from_blocks([])
    assert (result.exit_code, result.output, result.code_file, result.blocks) == (0, "", None, ())
    assert not result.timed_out
    assert not result.truncated


def test_from_blocks_combines() -> None:
    """The last block's exit code, joined output, first file, and any flag set by a block."""
    first = BlockResult("python", 0, "a\n", "/w/1.py", 0.1)
    last = BlockResult("sh", 124, "b\nTimeout\n", "/w/2.sh", 1.0, timed_out=True, truncated=True)
    result = CommandLineCodeResult.from_blocks([first, last])
    assert (result.exit_code, result.output, result.code_file) == (124, "a\nb\nTimeout\n", "/w/1.py")
    assert result.timed_out
    assert result.truncated
    assert result.blocks == (first, last)


# -- errors -----------------------------------------------------------------------------------

DOCUMENTED_BASES: list[tuple[type[ccexec.CcexecError], type[BaseException]]] = [
    (ccexec.InvalidArgumentError, ValueError),
    (ccexec.VirtualEnvError, RuntimeError),
    (ccexec.FunctionSetupError, ValueError),
    (ccexec.DockerError, RuntimeError),
    (ccexec.DockerNotFoundError, FileNotFoundError),
    (ccexec.EngineUnavailableError, ConnectionError),
    (ccexec.EnginePermissionError, PermissionError),
    (ccexec.ImageNotFoundError, LookupError),
    (ccexec.ContainerGoneError, ccexec.DockerError),
    (ccexec.ContainerGoneError, ccexec.SupervisorGoneError),
    (ccexec.DockerTimeoutError, TimeoutError),
    (ccexec.SupervisorGoneError, RuntimeError),
    (ccexec.ProtocolViolationError, ccexec.SupervisorGoneError),
    (ccexec.WorkPathError, ValueError),
    (ccexec.WorkFileNotFoundError, FileNotFoundError),
    (ccexec.HostPathExistsError, FileExistsError),
    (ccexec.UnsafeFileError, ValueError),
    (ccexec.CopyTooLargeError, OSError),
    (ccexec.SandboxUnavailableError, RuntimeError),
]
ALL_ERRORS = sorted(
    (cls for _, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, errors.CcexecError)),
    key=lambda cls: cls.__name__,
)


@pytest.mark.parametrize(("cls", "base"), DOCUMENTED_BASES, ids=[cls.__name__ for cls, _ in DOCUMENTED_BASES])
def test_error_subclasses_documented_builtin(cls: type[ccexec.CcexecError], base: type[BaseException]) -> None:
    """Each exception is a CcexecError and the builtin the README documents, exported from ccexec."""
    assert issubclass(cls, ccexec.CcexecError)
    assert issubclass(cls, base)
    assert getattr(ccexec, cls.__name__) is cls
    assert cls.__name__ in ccexec.__all__


def test_every_error_is_documented() -> None:
    """No exception class in ccexec.errors is missing from the table above."""
    documented = {cls for cls, _ in DOCUMENTED_BASES} | {ccexec.CcexecError}
    assert set(ALL_ERRORS) <= documented, "add new exceptions to DOCUMENTED_BASES"


#: One instance of each class with its typed fields set, and the fields to compare.
TYPED_ERRORS: list[tuple[ccexec.CcexecError, dict[str, object]]] = [
    (errors.DockerError("it failed", command=["docker", "ps"], stderr="boom"), {"command": ["docker", "ps"]}),
    (errors.ImageNotFoundError("no image", command=["docker", "run"], stderr="x"), {"stderr": "x"}),
    (errors.FunctionSetupError("pip failed", output="log", exit_code=2), {"output": "log", "exit_code": 2}),
    (errors.VirtualEnvError("no venv", path="/v"), {"path": "/v"}),
    (errors.SupervisorGoneError(where="the local executor", reason="exit status -9"), {"reason": "exit status -9"}),
    (errors.ProtocolViolationError(where="container c", reason="bad header"), {"where": "container c"}),
    (errors.ContainerGoneError(container="c1", reason="killed", exit_status=137), {"exit_status": 137}),
    (errors.WorkPathError(path="../x"), {"path": "../x"}),
    (errors.WorkFileNotFoundError(path="a b"), {"path": "a b"}),
    (errors.HostPathExistsError(path="/tmp/out"), {"path": "/tmp/out"}),
    (errors.UnsafeFileError(path="leak", reason="a symlink"), {"path": "leak", "reason": "a symlink"}),
    (errors.CopyTooLargeError(path="huge", max_bytes=10), {"path": "huge", "max_bytes": 10}),
    (errors.SandboxUnavailableError(cause="no bwrap", fix="install it"), {"cause": "no bwrap", "fix": "install it"}),
]


@pytest.mark.parametrize(("error", "fields"), TYPED_ERRORS, ids=[type(e).__name__ for e, _ in TYPED_ERRORS])
def test_error_keeps_typed_fields_through_pickling(error: ccexec.CcexecError, fields: dict[str, object]) -> None:
    """Pickling and copying keep the class, the message and the typed fields."""
    for clone in (pickle.loads(pickle.dumps(error)), copy.copy(error), copy.deepcopy(error)):
        assert type(clone) is type(error)
        assert str(clone) == str(error)
        assert {name: getattr(clone, name) for name in fields} == fields


def test_supervisor_errors_build_their_message_from_fields() -> None:
    """SupervisorGoneError, ProtocolViolationError and ContainerGoneError say where, what, and what next."""
    gone = str(errors.SupervisorGoneError(where="the local executor", reason="exit status -9"))
    assert "the local executor" in gone
    assert "exit status -9" in gone
    assert "next call" in gone
    violation = str(errors.ProtocolViolationError(where="container c", reason="frame header over 64 bytes"))
    assert "malformed frame" in violation
    assert "frame header over 64 bytes" in violation
    container = str(errors.ContainerGoneError(container="c1", reason="its main process ended"))
    assert "container c1" in container
    assert "its main process ended" in container


@pytest.mark.parametrize("cls", ALL_ERRORS, ids=[cls.__name__ for cls in ALL_ERRORS])
def test_error_without_details(cls: type[ccexec.CcexecError]) -> None:
    """A bare message works too, str() is the message (no errno prefix for OSError kinds)."""
    clone = pickle.loads(pickle.dumps(cls("just this")))
    assert (type(clone), str(clone), clone.args) == (cls, "just this", ("just this",))


# -- the value classes are dataclasses to `dataclasses` ---------------------------------------


def test_value_classes_work_with_dataclasses_functions() -> None:
    """is_dataclass, fields, asdict and replace work on CodeBlock and the results, as on AutoGen's."""
    block = ccexec.CodeBlock("print(1)", "python")
    assert dataclasses.is_dataclass(block)
    assert [field.name for field in dataclasses.fields(block)] == ["code", "language"]
    assert dataclasses.asdict(block) == {"code": "print(1)", "language": "python"}
    assert dataclasses.replace(block, code="x") == ccexec.CodeBlock("x", "python")
    inner = ccexec.BlockResult("python", 0, "1\n", None)
    result = ccexec.CommandLineCodeResult(0, "1\n", None, blocks=(inner,))
    assert dataclasses.asdict(result)["blocks"][0]["duration"] == 0.0
    assert dataclasses.replace(result, exit_code=2).exit_code == 2
    assert isinstance(result, ccexec.CodeResult)


def test_value_classes_compare_hash_pickle_and_freeze() -> None:
    """== compares fields; frozen ones hash and refuse assignment; all survive pickle and deepcopy."""
    block = ccexec.CodeBlock("a", "sh")
    assert block == ccexec.CodeBlock("a", "sh")
    assert block != ccexec.CodeBlock("b", "sh")
    block.code = "b"  # CodeBlock is mutable, as AutoGen's
    assert repr(block) == "CodeBlock(code='b', language='sh')"
    language = ccexec.Language("js", ["node"])
    assert language.command == ("node",)
    assert hash(language) == hash(ccexec.Language("js", ("node",)))
    with pytest.raises(AttributeError):
        language.extension = "mjs"
    result = ccexec.CommandLineCodeResult(1, "x", "f.py", blocks=(ccexec.BlockResult("py", 1, "x", "f.py", 0.5),))
    assert pickle.loads(pickle.dumps(result)) == result
    assert copy.deepcopy(result) == result


def test_exec_start_gate_tells_the_wrapper_from_the_docker_client() -> None:
    """Exec mode: output counts as the block's only after the wrapper's start line (split anywhere);
    a docker client's own error (container not running) is kept apart, never shown as the block's."""
    from ccexec._capture import OutputCapture
    from ccexec.backends.docker_exec import STARTED, _StartGate

    capture = OutputCapture(1 << 10)
    gate = _StartGate(capture)
    for chunk in (STARTED[:3], STARTED[3:] + b"hel", b"lo\n"):
        gate.feed(chunk)
    assert (gate.started, capture.text()) == (True, "hello\n")
    capture = OutputCapture(1 << 10)
    gate = _StartGate(capture)
    gate.feed(b"Error response from daemon: Container abc is not running\n")
    assert (gate.started, capture.text()) == (False, "")
    assert gate.rejected.startswith(b"Error response from daemon")


def test_a_supervisor_without_its_guards_is_warned_about_once() -> None:
    """A supervisor whose hello lacks a guard (no ctypes in its Python) gives one RuntimeWarning per
    place and guard, naming what is left open; a guarded one gives none."""
    from ccexec._client import warn_unguarded
    from ccexec._protocol import Hello

    where = f"container unit-{os.urandom(3).hex()}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_unguarded(Hello(1, "/usr/bin/python3", ["nondumpable", "subreaper"]), where)
        assert caught == []
        warn_unguarded(Hello(1, "/usr/bin/python3", ["subreaper"]), where)
        warn_unguarded(Hello(1, "/usr/bin/python3", []), where)
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 2
    assert "could not make itself nondumpable" in messages[0]
    assert "forge results" in messages[0]
    assert "could not make itself subreaper" in messages[1]
    assert all(warning.category is RuntimeWarning for warning in caught)


@pytest.mark.parametrize("inotify", [True, False], ids=["watched", "full-scrubs"])
def test_scrubber_strips_what_changed(tmp_path: Path, inotify: bool) -> None:
    """The scrubber strips setuid/setgid bits where files changed, in new and renamed folders, inotify or not."""
    from ccexec._scrubber import Scrubber

    (tmp_path / "old").write_bytes(b"x")
    (tmp_path / "keep").mkdir()
    root = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        scrubber = Scrubber(root)
        if not inotify:  # as without inotify: every scrub a full one
            scrubber.tree.close()
            scrubber.tree.add = None
        assert scrubber.scrub() == 0
        os.chmod(tmp_path / "old", 0o4755)
        (tmp_path / "new" / "deep").mkdir(parents=True)
        (tmp_path / "new" / "deep" / "x").write_bytes(b"x")
        os.chmod(tmp_path / "new" / "deep" / "x", 0o2755)
        assert scrubber.scrub() == 2
        os.rename(tmp_path / "new", tmp_path / "moved")
        os.chmod(tmp_path / "moved" / "deep" / "x", 0o4700)
        os.chmod(tmp_path / "keep", 0o2755)  # a folder's setgid bit is left alone
        assert scrubber.scrub() == 1
        assert scrubber.scrub() == 0
        modes = [path.stat().st_mode for path in tmp_path.rglob("*") if path.is_file()]
        assert modes
        assert not any(mode & 0o6000 for mode in modes)
    finally:
        os.close(root)


def test_socket_channel_takes_only_the_token(tmp_path: Path) -> None:
    """Connections without the token are dropped; the one with it is taken; the folder is gone after close()."""
    import socket
    import time

    from ccexec.backends.channel import SocketChannel

    channel = SocketChannel()
    path = os.path.join(channel.folder, "s")
    stranger, owner = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX)
    stranger.connect(path)
    stranger.sendall(b"0" * 32 + b"\n")
    owner.connect(path)
    owner.sendall(channel.token)
    read_fd, write_fd = os.pipe()
    try:
        taken = channel.accept(read_fd, time.monotonic() + 5)
        assert taken is not None
        taken.sendall(b"hello")
        assert owner.recv(5) == b"hello"
        assert stranger.recv(5) == b""  # dropped
        taken.close()
        os.write(write_fd, b"x")  # the supervisor speaks on its stdio instead: no connection is waited for
        assert channel.accept(read_fd, time.monotonic() + 5) is None
    finally:
        channel.close()
        for fd in (read_fd, write_fd):
            os.close(fd)
        stranger.close()
        owner.close()
    assert not os.path.exists(channel.folder)
