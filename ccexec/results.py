"""What a run returns: one result per call, with one entry per block that ran."""

from __future__ import annotations

from dataclasses import dataclass, field

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import time matters)
if TYPE_CHECKING:
    from typing import Sequence

#: Exit code reported for a block stopped at its deadline (as GNU ``timeout`` and AutoGen do).
TIMEOUT_EXIT_CODE = 124


@dataclass(frozen=True)
class BlockResult:
    """How one block ran.

    ``exit_code`` is the process's own (negative for a signal on the host, as in
    ``subprocess``; 128 + signal inside a container, as the engine reports it); 124 on timeout;
    1 for a block that never started (unknown language, bad file name). ``duration`` is the
    wall time in seconds from start to the end of its output.
    """

    language: str
    exit_code: int
    output: str
    code_file: str | None
    duration: float = 0.0
    timed_out: bool = False
    truncated: bool = False


@dataclass
class CodeResult:
    """The result of running code: exit code and output (AutoGen's base shape)."""

    exit_code: int
    output: str


@dataclass
class CommandLineCodeResult(CodeResult):
    """The result of ``execute_code_blocks``: AutoGen's three fields plus the details.

    ``exit_code`` is the last block's; ``output`` all blocks' output in order; ``code_file``
    the first block's file. ``blocks`` has one BlockResult per block that ran (the run stops at
    the first non-zero exit).
    """

    code_file: str | None
    timed_out: bool = False
    truncated: bool = False
    blocks: tuple[BlockResult, ...] = field(default_factory=tuple)

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
