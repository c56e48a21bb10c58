"""What a run returns: one result per call, with one entry per block that ran."""

from __future__ import annotations

from ._records import FrozenRecord, Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import time matters)
if TYPE_CHECKING:
    from typing import ClassVar, Sequence

    from ._capture import OutputCapture
    from ._protocol import BlockEnd
    from .blocks import CodeBlock

#: Exit code reported for a block stopped at its deadline (as GNU ``timeout`` and AutoGen do).
TIMEOUT_EXIT_CODE = 124


class BlockResult(FrozenRecord):
    """How one block ran.

    ``exit_code`` is the process's own (negative for a signal on the host, as in
    ``subprocess``; 128 + signal inside a container, as the engine reports it); 124 on timeout;
    1 for a block that never started (unknown language, bad file name). ``duration`` is the
    wall time in seconds from start to the end of its output.
    """

    __slots__ = ("language", "exit_code", "output", "code_file", "duration", "timed_out", "truncated")
    _fields = __slots__
    _defaults: ClassVar[dict[str, object]] = {"duration": 0.0, "timed_out": False, "truncated": False}
    __match_args__ = ("language", "exit_code", "output", "code_file", "duration", "timed_out", "truncated")

    def __init__(  # noqa: PLR0917 - positional, in field order, as the dataclass it replaces
        self,
        language: str,
        exit_code: int,
        output: str,
        code_file: str | None,
        duration: float = 0.0,
        timed_out: bool = False,
        truncated: bool = False,
    ) -> None:
        for name, value in zip(self._fields, (language, exit_code, output, code_file, duration, timed_out, truncated)):
            self._set(name, value)

    if TYPE_CHECKING:
        language: str
        exit_code: int
        output: str
        code_file: str | None
        duration: float
        timed_out: bool
        truncated: bool


class CodeResult(Record):
    """The result of running code: exit code and output (AutoGen's base shape)."""

    __slots__ = ("exit_code", "output")
    _fields: ClassVar[tuple[str, ...]] = ("exit_code", "output")
    __match_args__ = ("exit_code", "output")

    def __init__(self, exit_code: int, output: str) -> None:
        self.exit_code = exit_code
        self.output = output


class CommandLineCodeResult(CodeResult):
    """The result of ``execute_code_blocks``: AutoGen's three fields plus the details.

    ``exit_code`` is the last block's; ``output`` all blocks' output in order; ``code_file``
    the first block's file. ``blocks`` has one BlockResult per block that ran (the run stops at
    the first non-zero exit). ``files``: the work-dir-relative names of the files and links the
    call created or changed (its code files left out), sorted, at most 1,000; ``files_truncated``
    says more changed.
    """

    __slots__ = ("code_file", "timed_out", "truncated", "blocks", "files", "files_truncated")
    _fields = ("exit_code", "output", "code_file", "timed_out", "truncated", "blocks", "files", "files_truncated")
    _defaults: ClassVar[dict[str, object]] = {
        "timed_out": False, "truncated": False, "blocks": (), "files": (), "files_truncated": False,
    }  # fmt: skip
    __match_args__ = (
        "exit_code", "output", "code_file", "timed_out", "truncated", "blocks", "files", "files_truncated",
    )  # fmt: skip

    def __init__(  # noqa: PLR0917 - positional, in field order, as AutoGen's dataclass
        self,
        exit_code: int,
        output: str,
        code_file: str | None,
        timed_out: bool = False,
        truncated: bool = False,
        blocks: tuple[BlockResult, ...] = (),
        files: tuple[str, ...] = (),
        files_truncated: bool = False,
    ) -> None:
        super().__init__(exit_code, output)
        self.code_file = code_file
        self.timed_out = timed_out
        self.truncated = truncated
        self.blocks = tuple(blocks)
        self.files = tuple(files)
        self.files_truncated = files_truncated

    @classmethod
    def from_blocks(cls, blocks: Sequence[BlockResult]) -> CommandLineCodeResult:
        """Combine per-block results into one call result."""
        if not blocks:
            return cls(exit_code=0, output="", code_file=None)
        return cls(
            exit_code=blocks[-1].exit_code,
            output="".join(block.output for block in blocks),
            code_file=blocks[0].code_file,
            timed_out=any(block.timed_out for block in blocks),
            truncated=any(block.truncated for block in blocks),
            blocks=tuple(blocks),
        )


def describe_exit(exit_code: int) -> str:
    """Return a short human reading of an exit code, naming signals (``SIGKILL``)."""
    import signal

    number = -exit_code if exit_code < 0 else exit_code - 128 if 128 < exit_code < 160 else 0
    if number:
        try:
            return f"exit code {exit_code} ({signal.Signals(number).name})"
        except ValueError:
            pass
    return f"exit code {exit_code}"


def block_result(  # noqa: PLR0917 - what the supervisor reported, and how to present it
    block: CodeBlock, end: BlockEnd, capture: OutputCapture, code_file: str, timeout: float, negative_signals: bool
) -> BlockResult:
    """Turn the supervisor's report into a BlockResult, with ccexec's notes in the output.

    A signal is reported as ``-N`` when ``negative_signals`` (as subprocess does on the
    host), else as ``128 + N`` (as shells and engines do); a timeout as TIMEOUT_EXIT_CODE.
    """
    if end.not_started:
        return BlockResult(block.language, end.exit_code or 1, capture.text(), None, end.duration)
    exit_code = 1 if end.exit_code is None and end.signal is None else end.exit_code or 0
    if end.signal is not None:
        exit_code = -end.signal if negative_signals else 128 + end.signal
    if end.note:
        capture.add_note(end.note)
    if end.timed_out:
        exit_code = TIMEOUT_EXIT_CODE
        capture.add_note(f"Timeout: the block ran longer than {timeout:g} s and was stopped\n")
    elif end.cancelled:
        capture.add_note("Cancelled: the block was stopped before it finished\n")
    elif end.oom:
        capture.add_note("ccexec: the process was killed: out of memory (the container's memory limit)\n")
    elif end.signal is not None:
        capture.add_note(f"ccexec: the process was killed by a signal ({describe_exit(exit_code)})\n")
    return BlockResult(
        block.language, exit_code, capture.text(), code_file, end.duration, end.timed_out, capture.truncated
    )
