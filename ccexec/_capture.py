"""A capped output buffer: keeps the head and the tail, counts what it dropped."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import time matters)
if TYPE_CHECKING:
    from typing import Callable, Optional

    OutputCallback = Optional[Callable[[bytes], object]]


class OutputCapture:
    """Collect a block's output bytes with bounded memory.

    Up to ``limit`` bytes are kept: the first half and the last half (a traceback at the end
    matters as much as the first lines). Memory stays under about twice ``limit`` whatever
    the block prints. ``on_output`` sees every chunk as it arrives, even dropped ones.
    """

    def __init__(self, limit: int, on_output: OutputCallback = None) -> None:
        self.limit = limit
        self.total = 0
        self._head_limit = limit - limit // 2
        self._tail_limit = limit // 2
        self._head = bytearray()
        self._tail = bytearray()
        self._on_output = on_output

    def feed(self, data: bytes) -> None:
        """Add a chunk of output."""
        if not data:
            return
        self.total += len(data)
        if self._on_output is not None:
            self._on_output(data)
        room = self._head_limit - len(self._head)
        if room > 0:
            self._head += data[:room]
            data = data[room:]
        if data and self._tail_limit:
            self._tail += data
            if len(self._tail) > 2 * self._tail_limit:
                del self._tail[: len(self._tail) - self._tail_limit]

    def add_note(self, text: str) -> None:
        """Append a line of ccexec's own (a timeout notice), starting a new line if needed."""
        data = text.encode("utf-8")
        last = self._tail[-1:] or self._head[-1:]
        if last and last != b"\n":
            data = b"\n" + data
        if self._on_output is not None:
            self._on_output(data)
        # Notes bypass the cap: they are short and must be seen.
        self._tail += data
        self._tail_limit += len(data)
        self.total += len(data)

    @property
    def truncated(self) -> bool:
        """Whether output was dropped."""
        return self.total > len(self._head) + min(len(self._tail), self._tail_limit)

    def text(self) -> str:
        """Return the kept output, decoded as UTF-8 with replacement, with a truncation marker."""
        if not self.truncated:
            return (bytes(self._head) + bytes(self._tail)).decode("utf-8", "replace")
        tail = bytes(self._tail[-self._tail_limit :]) if self._tail_limit else b""
        dropped = self.total - len(self._head) - len(tail)
        marker = f"\n[ccexec: output truncated: {dropped} of {self.total} bytes not shown]\n"
        return self._head.decode("utf-8", "replace") + marker + tail.decode("utf-8", "replace")
