"""The wire protocol between ccexec (the host) and its supervisor, wherever the supervisor runs.

Every message, both ways, is a frame: a header line ``KIND IDENT LENGTH\\n`` (one ASCII
letter, two decimal integers) followed by exactly LENGTH bytes of payload. Readers are
bounded: a header longer than MAX_HEADER, an unknown kind or a payload over its kind's cap is
a ProtocolError, never a buffer that grows. JSON payloads are decoded into the typed values
below and every field is type-checked.

host -> supervisor            supervisor -> host
  R run    RunRequest           H hello  Hello (once, first)
  C cancel (empty)              O output raw bytes of block IDENT
                                E end    BlockEnd of block IDENT

This file is shipped into containers as text ahead of ``_supervisor.py``, so it must run on
Python 3.8 and import nothing but the standard library (type comments, no annotations).
The timing constants below are the supervisor's; the host derives its grace periods from them.
"""

import json as _json

MYPY = False
if MYPY:  # for type comments only: importing typing would slow every supervisor start
    from typing import Any, Dict, List, Optional, Tuple  # noqa: F401

#: Version of this protocol; the supervisor says it in Hello and the host checks it.
VERSION = 1
#: Seconds between SIGTERM to a block's processes and SIGKILL, on timeout or cancellation.
TERM_GRACE = 0.5
#: Seconds the supervisor spends killing a block's leftovers before it gives up on them.
KILL_WAIT_LIMIT = 2.0
#: Seconds the supervisor keeps reading a block's output once everything was killed.
DRAIN_LIMIT = 2.0
#: Seconds a block's end may come after its deadline before the host counts the supervisor as hung.
END_GRACE = TERM_GRACE + KILL_WAIT_LIMIT + DRAIN_LIMIT + 5.0

MAX_HEADER = 64
#: Largest payload each kind may carry, in bytes.
PAYLOAD_CAPS = {
    b"R": 256 << 20,  # a request carries the code
    b"C": 0,
    b"H": 64 << 10,
    b"O": 1 << 20,
    b"E": 64 << 10,
}
#: The kinds each side may receive.
TO_SUPERVISOR = (b"R", b"C")
TO_HOST = (b"H", b"O", b"E")


class ProtocolError(ValueError):
    """A frame broke the protocol: the channel cannot be trusted any more."""


def frame(kind, ident, payload=b""):
    # type: (bytes, int, bytes) -> bytes
    """Return one encoded frame."""
    return b"%s %d %d\n" % (kind, ident, len(payload)) + payload


class FrameParser:
    """Split a byte stream into frames, holding at most one header and one payload in memory."""

    def __init__(self, kinds):
        # type: (Tuple[bytes, ...]) -> None
        self.kinds = kinds
        self.buffer = bytearray()
        self.header = None  # type: Optional[Tuple[bytes, int, int]]

    def feed(self, data):
        # type: (bytes) -> List[Tuple[bytes, int, bytes]]
        """Add bytes; return the frames now complete. Raise ProtocolError on a malformed frame."""
        self.buffer += data
        frames = []  # type: List[Tuple[bytes, int, bytes]]
        while True:
            if self.header is None:
                end = self.buffer.find(b"\n", 0, MAX_HEADER)
                if end < 0:
                    if len(self.buffer) >= MAX_HEADER:
                        raise ProtocolError("frame header over %d bytes" % MAX_HEADER)
                    return frames
                self.header = self._parse_header(bytes(self.buffer[:end]))
                del self.buffer[: end + 1]
            kind, ident, length = self.header
            if len(self.buffer) < length:
                return frames
            frames.append((kind, ident, bytes(self.buffer[:length])))
            del self.buffer[:length]
            self.header = None

    def _parse_header(self, line):
        # type: (bytes) -> Tuple[bytes, int, int]
        parts = line.split(b" ")
        if len(parts) != 3 or parts[0] not in self.kinds or not parts[1].isdigit() or not parts[2].isdigit():
            raise ProtocolError("malformed frame header %r" % line[:MAX_HEADER])
        if len(parts[1]) > 18 or len(parts[2]) > 18:
            raise ProtocolError("frame header numbers too long: %r" % line)
        length = int(parts[2])
        if length > PAYLOAD_CAPS[parts[0]]:
            raise ProtocolError("%s frame of %d bytes, over its cap" % (parts[0].decode(), length))
        return parts[0], int(parts[1]), length


def load_json(payload):
    # type: (bytes) -> Any
    """Decode a JSON payload; raise ProtocolError when it is not JSON."""
    try:
        return _json.loads(payload)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ProtocolError("payload is not JSON: %s" % exc) from None


def _fields(value, spec, what):
    # type: (Any, Dict[str, Tuple[Any, ...]], str) -> Dict[str, Any]
    """Check that ``value`` is an object with exactly the keys of ``spec``, each of its allowed types."""
    if not isinstance(value, dict):
        raise ProtocolError("%s is not an object" % what)
    unknown = set(value) - set(spec)
    if unknown:
        raise ProtocolError("%s has unknown fields %s" % (what, sorted(unknown)))
    for key, types in spec.items():
        if key not in value:
            raise ProtocolError("%s lacks %r" % (what, key))
        field = value[key]
        # bool is an int subclass: it passes only where bool is allowed.
        if not any(type(field) is kind or (field is None and kind is None) for kind in types):
            raise ProtocolError("%s field %r has type %s" % (what, key, type(field).__name__))
    return value


class _Message(object):
    """A frame whose payload is a JSON object of the fields in SPEC."""

    KIND = b""
    SPEC = {}  # type: Dict[str, Tuple[Any, ...]]
    ident = 0

    def encode(self):
        # type: () -> bytes
        data = {key: getattr(self, key) for key in self.SPEC}
        return frame(self.KIND, self.ident, _json.dumps(data).encode())


class Hello(_Message):
    """The supervisor's first frame: protocol version, its interpreter, the guards it could set."""

    __slots__ = ("guards", "protocol", "python")

    KIND = b"H"
    SPEC = {"protocol": (int,), "python": (str,), "guards": (list,)}

    def __init__(self, protocol, python, guards):
        # type: (int, str, List[str]) -> None
        self.protocol = protocol
        self.python = python
        self.guards = guards

    @classmethod
    def decode(cls, payload):
        # type: (bytes) -> Hello
        data = _fields(load_json(payload), cls.SPEC, "hello")
        if not all(type(guard) is str for guard in data["guards"]):
            raise ProtocolError("hello guards must be strings")
        return cls(data["protocol"], data["python"], data["guards"])


#: The ``argv[0]`` that lists the work dir's changes instead of running a program (see RunRequest).
LISTING = "{listing}"


class RunRequest(_Message):
    """Run one block: write ``code`` to ``path`` (relative to the work dir) if given, run ``argv``.

    ``argv`` may hold the placeholders ``{file}`` (the written file) and ``{python}`` (the
    supervisor's interpreter); ``["{listing}", ARGS...]`` runs no program: a process forked
    from the shepherd writes ``_listing.report(ARGS)`` as the block's output. ``env`` is the
    block's whole environment when ``clear_env``, else overrides of the supervisor's.
    ``after``: run only if that block succeeded.
    ``cleanup``: delete the file once the block has ended, before its end is reported.
    ``fork_server``: when > 0 and ``argv`` is ``["{python}", "{file}"]``, fork the block from
    a started interpreter, which is replaced after that many blocks (0: spawn as usual).
    """

    __slots__ = ("after", "argv", "cleanup", "clear_env", "code", "env", "fork_server", "ident", "path", "timeout")

    KIND = b"R"
    SPEC = {
        "argv": (list,),
        "path": (str, None),
        "code": (str,),
        "timeout": (float, int),
        "env": (dict,),
        "clear_env": (bool,),
        "after": (int, None),
        "cleanup": (bool,),
        "fork_server": (int,),
    }

    def __init__(self, ident, argv, timeout, env, clear_env=False, path=None, code="", after=None, cleanup=False,
                 fork_server=0):  # fmt: skip
        # type: (int, List[str], float, Dict[str, str], bool, Optional[str], str, Optional[int], bool, int) -> None
        self.ident = ident
        self.argv = argv
        self.timeout = timeout
        self.env = env
        self.clear_env = clear_env
        self.path = path
        self.code = code
        self.after = after
        self.cleanup = cleanup
        self.fork_server = fork_server

    @classmethod
    def decode(cls, ident, payload):
        # type: (int, bytes) -> RunRequest
        data = _fields(load_json(payload), cls.SPEC, "run request")
        if not data["argv"] or not all(type(part) is str for part in data["argv"]):
            raise ProtocolError("run request argv must be a non-empty list of strings")
        if not all(type(k) is str and type(v) is str for k, v in data["env"].items()):
            raise ProtocolError("run request env must map strings to strings")
        if data["fork_server"] < 0:
            raise ProtocolError("run request fork_server must not be negative")
        return cls(
            ident, data["argv"], float(data["timeout"]), data["env"], data["clear_env"],
            data["path"], data["code"], data["after"], data["cleanup"], data["fork_server"],
        )  # fmt: skip


class BlockEnd(_Message):
    """How a block ended, as the supervisor saw it.

    Exactly one of ``exit_code`` (the leader exited) and ``signal`` (it was killed) is set,
    unless ``not_started`` (ccexec could not write or start it: the output says why) or
    ``skipped`` (it was chained after a block that failed). ``oom``: the kernel killed a
    process of the container for memory during the block. ``note``: what the supervisor
    has to add (the block interfered with its supervision).
    """

    __slots__ = ("cancelled", "duration", "exit_code", "ident", "not_started", "note", "oom", "signal",
                 "skipped", "timed_out")  # fmt: skip

    KIND = b"E"
    SPEC = {
        "exit_code": (int, None),
        "signal": (int, None),
        "timed_out": (bool,),
        "cancelled": (bool,),
        "duration": (float,),
        "not_started": (bool,),
        "skipped": (bool,),
        "oom": (bool,),
        "note": (str,),
    }

    def __init__(self, ident, exit_code=None, signal=None, timed_out=False, cancelled=False, duration=0.0,
                 not_started=False, skipped=False, oom=False, note=""):  # fmt: skip
        # type: (int, Optional[int], Optional[int], bool, bool, float, bool, bool, bool, str) -> None
        self.ident = ident
        self.exit_code = exit_code
        self.signal = signal
        self.timed_out = timed_out
        self.cancelled = cancelled
        self.duration = duration
        self.not_started = not_started
        self.skipped = skipped
        self.oom = oom
        self.note = note

    def __repr__(self):
        # type: () -> str
        return "BlockEnd(%s)" % ", ".join("%s=%r" % (key, getattr(self, key)) for key in ("ident", *self.SPEC))

    @classmethod
    def decode(cls, ident, payload):
        # type: (int, bytes) -> BlockEnd
        data = _fields(load_json(payload), cls.SPEC, "block end")
        code, sig, duration = data["exit_code"], data["signal"], data["duration"]
        if code is not None and not 0 <= code <= 255:
            raise ProtocolError("block end exit_code %r out of range" % code)
        if sig is not None and not 0 < sig < 128:
            raise ProtocolError("block end signal %r out of range" % sig)
        if not 0.0 <= duration < 1e9:
            raise ProtocolError("block end duration %r out of range" % duration)
        if len(data["note"]) > 4096:
            raise ProtocolError("block end note too long")
        return cls(ident, **data)
