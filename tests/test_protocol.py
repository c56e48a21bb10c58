"""The host never trusts the supervisor's channel: bounded frames, typed fields, a deadline on every wait.

A block cannot reach the channel (the supervisor is non-dumpable; see test_attacks.py), so
these tests play the hostile peer themselves: a real child process that writes whatever a
broken or subverted supervisor could, to the real client.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest

from ccexec import _client
from ccexec._capture import OutputCapture
from ccexec._client import Cancel
from ccexec._protocol import (
    MAX_HEADER,
    TO_HOST,
    VERSION,
    BlockEnd,
    FrameParser,
    Hello,
    ProtocolError,
    RunRequest,
    frame,
)
from ccexec.backends.host import Attached
from ccexec.errors import CcexecError, ProtocolViolationError, SupervisorGoneError

HELLO = Hello(VERSION, sys.executable, ["nondumpable", "subreaper"]).encode()  # claims its guards: no warning
GOOD_END = {
    "exit_code": 0,
    "signal": None,
    "timed_out": False,
    "cancelled": False,
    "duration": 0.1,
    "not_started": False,
    "skipped": False,
    "oom": False,
    "note": "",
}


# -- frames -----------------------------------------------------------------------------------


def test_frames_split_across_any_chunking() -> None:
    """Frames fed one byte at a time come out whole and in order."""
    stream = frame(b"O", 1, b"hello\nworld") + frame(b"E", 1, b"{}") + frame(b"O", 2, b"")
    parser = FrameParser(TO_HOST)
    frames = [f for i in range(len(stream)) for f in parser.feed(stream[i : i + 1])]
    assert frames == [(b"O", 1, b"hello\nworld"), (b"E", 1, b"{}"), (b"O", 2, b"")]


@pytest.mark.parametrize(
    "data",
    [
        b"O" * (MAX_HEADER + 1),  # a header that never ends
        b"o 1 5\nhello",  # a kind of another protocol version
        b"O one 5\n",  # not a number
        b"O 1 -5\n",  # not a length
        b"O 1 5 6\n",  # a field too many
        b"R 1 5\nhello",  # a kind the host never receives
        b"O 1 %d\n" % ((1 << 20) + 1),  # over the output cap
        b"E 1 %d\n" % ((64 << 10) + 1),  # over the end frame's cap
        b"O 1 99999999999999999999999\n",  # absurd numbers
    ],
)
def test_malformed_frames_are_refused(data: bytes) -> None:
    """Every malformed header is a ProtocolError, raised before its payload is buffered."""
    with pytest.raises(ProtocolError):
        FrameParser(TO_HOST).feed(data)


def test_parser_memory_is_bounded_by_a_header() -> None:
    """A gigabyte without a newline is refused after MAX_HEADER bytes, whatever the chunking."""
    parser = FrameParser(TO_HOST)
    chunk = b"A" * 16
    fed = 0
    try:
        for _ in range(1 << 26):
            parser.feed(chunk)
            fed += len(chunk)
    except ProtocolError:
        pass
    assert fed < MAX_HEADER
    assert len(parser.buffer) <= MAX_HEADER + len(chunk)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("exit_code", "0"),
        ("exit_code", True),
        ("exit_code", 256),
        ("exit_code", -1),
        ("signal", 0),
        ("signal", 200),
        ("timed_out", 1),
        ("duration", "fast"),
        ("duration", math.inf),
        ("duration", -1.0),
        ("note", "x" * 5000),
        ("note", None),
    ],
)
def test_end_frames_are_type_checked(field: str, value: object) -> None:
    """A field of the wrong type or out of range makes the end frame a ProtocolError."""
    with pytest.raises(ProtocolError):
        BlockEnd.decode(1, json.dumps({**GOOD_END, field: value}).encode())


@pytest.mark.parametrize("payload", [b"[]", b"null", b"{", b"\xff\xfe", json.dumps({**GOOD_END, "extra": 1}).encode()])
def test_end_frames_must_be_the_object_expected(payload: bytes) -> None:
    """Not JSON, not an object, or with unknown fields: a ProtocolError, never a TypeError or KeyError."""
    with pytest.raises(ProtocolError):
        BlockEnd.decode(1, payload)


def test_missing_end_field_is_refused() -> None:
    """An end frame without one of its fields is refused."""
    partial = {key: value for key, value in GOOD_END.items() if key != "oom"}
    with pytest.raises(ProtocolError):
        BlockEnd.decode(1, json.dumps(partial).encode())


def test_run_request_round_trips() -> None:
    """A request decodes to what was encoded (the supervisor's side of the contract)."""
    request = RunRequest(7, ["{python}", "{file}"], 2.5, {"A": "b"}, True, "x/y.py", "print(1)", 6)
    (kind, ident, payload), *_ = FrameParser((b"R",)).feed(request.encode())
    decoded = RunRequest.decode(ident, payload)
    assert kind == b"R"
    assert [getattr(decoded, name) for name in RunRequest.__slots__] == [
        getattr(request, name) for name in RunRequest.__slots__
    ]


# -- a hostile peer against the real client ---------------------------------------------------


def hostile_peer(output: bytes, flood: int = 0) -> Attached:
    """A process that writes ``output`` then ``flood`` bytes of 'A' on its stdout (where a supervisor's
    frames go), then lingers."""
    script = (
        "import os, time\n"
        "def send(data):\n"
        "    view = memoryview(data)\n"
        "    while view:\n"
        "        view = view[os.write(1, view):]\n"
        f"send({output!r})\n"
        f"for _ in range({flood} // 65536):\n"
        "    send(b'A' * 65536)\n"
        "time.sleep(60)\n"
    )
    return Attached([sys.executable, "-c", script], "a hostile peer")


def run_one(peer: Attached, timeout: float = 5.0) -> BlockEnd:
    """Send one block to the peer and wait for its end through the real client."""
    request = RunRequest(0, ["true"], timeout, {})
    ends = peer.client.run([request], [OutputCapture(1 << 20)], Cancel())
    try:
        return next(ends)
    finally:
        ends.close()


HOSTILE_STREAMS = {
    "half a header, then nothing": HELLO + b"O 1 ",
    "a long line without newline": HELLO + b"o " + b"A" * 100_000,
    "a gigabyte without newline": HELLO + b"O 1 ",
    "an end for a block never sent": HELLO + frame(b"E", 99, json.dumps(GOOD_END).encode()),
    "an end with a string exit code": HELLO + frame(b"E", 1, json.dumps({**GOOD_END, "exit_code": "0"}).encode()),
    "output before hello": frame(b"O", 1, b"PASS\n"),
    "a second hello": HELLO + HELLO,
    "another protocol version": Hello(VERSION + 1, "x", []).encode(),
}


@pytest.mark.parametrize("name", HOSTILE_STREAMS)
def test_hostile_stream_ends_the_session_with_an_error(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the peer writes, the call raises a CcexecError within its deadline and the peer is killed."""
    monkeypatch.setattr(_client, "END_GRACE", 0.5)
    peer = hostile_peer(HOSTILE_STREAMS[name], flood=(1 << 30) if "gigabyte" in name else 0)
    start = time.monotonic()
    try:
        peer.client.wait_ready(5.0)
        with pytest.raises(CcexecError) as caught:
            run_one(peer, timeout=2.0)
        assert time.monotonic() - start < 2.0 + 0.5 + 1.0  # the block's timeout + END_GRACE, and slack
        assert isinstance(caught.value, (ProtocolViolationError, SupervisorGoneError))
        assert peer.proc.wait(5.0) is not None  # killed, not left running
    finally:
        peer.close(1.0)


def test_forged_pass_never_becomes_a_result() -> None:
    """Output and an end frame for a block id the host did not send are a violation, not a result."""
    forged = frame(b"O", 2, b"PASS\n") + frame(b"E", 2, json.dumps(GOOD_END).encode())
    peer = hostile_peer(HELLO + forged)
    try:
        with pytest.raises(ProtocolViolationError, match="not running"):
            run_one(peer)
    finally:
        peer.close(1.0)


def test_silent_peer_hits_the_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """A supervisor that says hello and then nothing: the call raises at timeout + END_GRACE, not never."""
    monkeypatch.setattr(_client, "END_GRACE", 0.5)
    peer = hostile_peer(HELLO)
    start = time.monotonic()
    try:
        with pytest.raises(SupervisorGoneError, match="did not report"):
            run_one(peer, timeout=1.0)
        assert 1.0 <= time.monotonic() - start < 4.0
    finally:
        peer.close(1.0)


def test_host_memory_stays_bounded_against_a_flood() -> None:
    """A peer flooding a gigabyte of garbage leaves the host's peak memory (measured in a child) small."""
    script = f"""
import sys
sys.path.insert(0, {str(__import__("pathlib").Path(__file__).parents[1])!r})
from tests.test_protocol import HELLO, hostile_peer, run_one
from ccexec.errors import CcexecError
peer = hostile_peer(HELLO, flood=1 << 30)
try:
    run_one(peer)
except CcexecError:
    pass
peer.close(1.0)
print(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, encoding="utf-8", timeout=60, check=True)
    assert int(done.stdout) < 100 * 1024, f"host peak RSS {done.stdout.strip()} KiB"
