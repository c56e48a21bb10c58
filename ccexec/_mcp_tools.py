"""The MCP server's tools: run_code, write_file, read_file, list_files (see ``ccexec/mcp.py``).

Files are reached from the host's side of the work dir with the supervisor's own walk
(``_workdir.open_in``: no ``..``, no absolute path outside it, no symlink followed), after
the same lexical check as a ``# filename:`` line.
"""

from __future__ import annotations

import base64
import codecs
import os
import posixpath
import stat
import tempfile
import threading
from typing import Any, Callable, Dict, Sequence

from . import _workdir
from ._client import Cancel
from .blocks import CodeBlock, FilenameOutsideWorkspace, relative_name
from .errors import CcexecError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .executor import BaseCommandLineExecutor

JSON = Dict[str, Any]

#: Largest file read_file returns, in bytes.
MAX_READ_BYTES = 4 << 20
#: Most entries list_files reports.
MAX_LIST_ENTRIES = 1000
#: Image kinds by their first bytes (WebP is RIFF....WEBP, checked apart).
_IMAGES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_RESULT_SCHEMA: JSON = {
    "type": "object",
    "properties": {
        "exit_code": {"type": "integer", "description": "the process's exit code (124: timed out)"},
        "timed_out": {"type": "boolean", "description": "whether the block was killed at its timeout"},
        "truncated": {"type": "boolean", "description": "whether output was cut to the size limit"},
        # The output again: some hosts show the model only structuredContent when there is one
        # (Microsoft Agent Framework by default), and the model must see what the code printed.
        "output": {"type": "string", "description": "stdout and stderr, as in the text content"},
        "files": {
            "type": "array",
            "items": {"type": "string"},
            "description": "work-dir paths the call created or modified (at most 1000)",
        },
    },
    "required": ["exit_code", "timed_out", "truncated", "output"],
}
#: Suffixes of the image files run_code returns as image content when asked (then checked by magic).
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp")
#: At most this many images come back from one run_code call.
MAX_IMAGES = 8


class Refusal(Exception):
    """A tool call that cannot be done; the message tells the model what to do instead."""


class ProgressStream:
    """Stream a call's output as progress notifications (``send(params)``), up to ``budget`` bytes."""

    def __init__(self, send: Callable[[JSON], None], budget: int) -> None:
        self._send, self._budget, self._sent = send, budget, 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._lock = threading.Lock()

    def __call__(self, chunk: bytes) -> None:
        with self._lock:
            if self._sent >= self._budget or not chunk:
                return
            chunk = chunk[: self._budget - self._sent]
            self._sent += len(chunk)  # the progress value: bytes streamed, so it always grows
            text = self._decoder.decode(chunk)
            if self._sent >= self._budget:
                text += f"\n[ccexec: streaming stopped after {self._budget} bytes; the result keeps head and tail]\n"
            if text:
                self._send({"progress": self._sent, "message": text})


class Tools:
    """The four tools over one executor; ``files`` is the host path of the work dir (None: not reachable)."""

    names = ("run_code", "write_file", "read_file", "list_files")

    def __init__(
        self, executor: BaseCommandLineExecutor, *, timeout: float, max_output_bytes: int, files: str | None, note: str
    ) -> None:
        self._executor, self._timeout, self.max_output_bytes = executor, timeout, max_output_bytes
        self._files, self._note = files, note
        self._code_dir = executor._work_dir_for_code()

    def has(self, name: str) -> bool:
        """Whether a tool of this name exists."""
        return name in self.names

    def instructions(self) -> str:
        """What a client may show the model about this server."""
        return (
            f"Runs code in new processes {self._note}. The work dir {self._code_dir} persists between calls: "
            "write files there, run code that uses them, read the results back."
        )

    def definitions(self, *, structured: bool) -> list[JSON]:
        """The tools/list entries (outputSchema only for clients whose protocol knows it)."""
        rules = (
            f"Rules: every call is a new process, so variables and imports do not survive between calls; "
            f"files do: the current directory is the work dir {self._code_dir}, shared with write_file, "
            f"read_file and list_files. Stdin is closed (never wait for input). The block is killed after "
            f"{self._timeout:g} seconds (or the shorter `timeout` given) and then reports exit code 124. Output "
            f"beyond {self.max_output_bytes} bytes is cut in the middle. Code runs {self._note}."
        )
        languages = ", ".join(sorted({"python", "sh", "bash"} & set(self._executor.languages)))
        run_code: JSON = {
            "name": "run_code",
            "description": f"Run a block of code and return its output (stdout and stderr as printed). {rules}",
            "inputSchema": _schema(
                {
                    "code": {"type": "string", "description": "the source code to run"},
                    "language": {"type": "string", "description": f"one of {languages}", "default": "python"},
                    "timeout": {"type": "number", "minimum": 1, "maximum": self._timeout, "description": "seconds"},
                    "images": {
                        "type": "boolean",
                        "default": False,
                        "description": f"also return the PNG, JPEG, GIF and WebP files the code created or changed "
                        f"as images (at most {MAX_IMAGES}, each at most {MAX_READ_BYTES} bytes)",
                    },
                },
                ["code"],
            ),
        }
        if structured:
            run_code["outputSchema"] = _RESULT_SCHEMA
        path = {"type": "string", "description": f"a path relative to the work dir {self._code_dir}"}
        return [
            run_code,
            {
                "name": "write_file",
                "description": "Write a UTF-8 text file in the work dir (parents are created; an existing file is "
                "replaced). Paths cannot leave the work dir nor pass through a symbolic link.",
                "inputSchema": _schema({"path": path, "content": {"type": "string"}}, ["path", "content"]),
            },
            {
                "name": "read_file",
                "description": f"Read a file of the work dir: UTF-8 text comes back as text, PNG, JPEG, GIF and WebP "
                f"as an image; other binary files are refused. At most {MAX_READ_BYTES} bytes.",
                "inputSchema": _schema({"path": path}, ["path"]),
                "annotations": {"readOnlyHint": True},
            },
            {
                "name": "list_files",
                "description": "List a directory of the work dir (default: the work dir itself): one entry per line, "
                "directories ending in /, files with their size in bytes.",
                "inputSchema": _schema({"path": path}, []),
                "annotations": {"readOnlyHint": True},
            },
        ]

    def call(
        self, name: str, arguments: JSON, cancel: Cancel, progress: Callable[[bytes], None] | None, *, structured: bool
    ) -> JSON:
        """Run a tool; a refusal comes back as an error result the model can read."""
        try:
            if name == "run_code":
                return self._run_code(arguments, cancel, progress, structured)
            if name == "read_file":  # also without a mounted work dir, through copy_from
                return self._read_file(self._relative(_text(arguments, "path")))
            if name == "write_file" and self._files is None:  # nothing mounted: through copy_to
                return self._copy_in(self._relative(_text(arguments, "path")), _text(arguments, "content"))
            root = self._open_root()
            try:
                if name == "write_file":
                    return _write(root, self._relative(_text(arguments, "path")), _text(arguments, "content"))
                return _list(root, self._relative_dir(arguments.get("path")))
            finally:
                os.close(root)
        except Refusal as exc:
            return self.failure(f"{name}: {exc}")

    @staticmethod
    def failure(text: str) -> JSON:
        """A tool result that reports an error to the model."""
        return {"content": [{"type": "text", "text": text}], "isError": True}

    def _run_code(
        self, arguments: JSON, cancel: Cancel, progress: Callable[[bytes], None] | None, structured: bool
    ) -> JSON:
        code, language = _text(arguments, "code"), arguments.get("language", "python")
        if not isinstance(language, str):
            raise Refusal(f'"language" must be a string such as "python", got {language!r}')
        timeout = arguments.get("timeout", self._timeout)
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 1 <= timeout <= self._timeout:
            raise Refusal(f'"timeout" must be a number of seconds from 1 to {self._timeout:g}, got {timeout!r}')
        images = arguments.get("images", False)
        if not isinstance(images, bool):
            raise Refusal(f'"images" must be true or false, got {images!r}')
        block = CodeBlock(code, language)
        result = self._executor._execute([block], cancel, on_output=progress, timeout=float(timeout))
        reply: JSON = {"content": [{"type": "text", "text": result.output}], "isError": result.exit_code != 0}
        if result.exit_code != 0:  # for hosts that show the text only
            reply["content"].append({"type": "text", "text": f"[exit code {result.exit_code}]"})
        if images:
            reply["content"].extend(self._images(result.files))
        if structured:
            reply["structuredContent"] = {
                "exit_code": result.exit_code, "timed_out": result.timed_out, "truncated": result.truncated,
                "output": result.output, "files": list(result.files),
            }  # fmt: skip
        return reply

    def _images(self, files: Sequence[str]) -> list[JSON]:
        """Image content for the new or changed image files of a call (from the call's own listing)."""
        found: list[JSON] = []
        for relative in files:
            if len(found) == MAX_IMAGES or not relative.lower().endswith(_IMAGE_SUFFIXES):
                continue
            try:
                content = self._read_file(relative)["content"][0]
            except Refusal:
                continue  # changed since, or not an image after all: the files list still names it
            if content.get("type") == "image":
                found.append(content)
        return found

    def _copy_in(self, relative: str, content: str) -> JSON:
        """write_file where the work dir is not mounted: the text goes in with copy_to."""
        data = content.encode("utf-8", "surrogateescape")
        with tempfile.TemporaryDirectory(prefix="ccexec-mcp-") as folder:
            source = os.path.join(folder, posixpath.basename(relative))
            with open(source, "wb") as handle:
                handle.write(data)
            try:
                self._executor.copy_to(source, relative)
            except (CcexecError, OSError) as exc:
                raise Refusal(f"cannot write {relative!r}: {exc}") from None
        return _text_result(f"wrote {len(data)} bytes to {relative}")

    def _read_file(self, relative: str) -> JSON:
        """A work-dir file as content: from the host's side, or (nothing mounted) through copy_from."""
        if self._files is not None:
            root = self._open_root()
            try:
                return _read(root, relative)
            finally:
                os.close(root)
        with tempfile.TemporaryDirectory(prefix="ccexec-mcp-") as folder:
            target = os.path.join(folder, "file")
            try:
                self._executor.copy_from(relative, target, max_bytes=MAX_READ_BYTES)
                with open(target, "rb") as handle:
                    return _content(relative, handle.read(MAX_READ_BYTES + 1))
            except (CcexecError, OSError) as exc:
                raise Refusal(f"cannot read {relative!r}: {exc}") from None

    def _open_root(self) -> int:
        if self._files is None:
            raise Refusal(
                "the work dir is not mounted here (the engine is remote), so the server cannot list it; "
                f"use run_code (e.g. `ls -la`) to list {self._code_dir}; read_file and write_file work"
            )
        self._executor.start()  # creates the work dir when it does not exist yet
        return os.open(self._files, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _relative(self, path: str) -> str:
        """``path`` relative to the work dir, by the ``# filename:`` check; a Refusal when it leaves it."""
        try:
            return relative_name(path, self._code_dir)
        except FilenameOutsideWorkspace:
            raise Refusal(
                f"{path!r} is outside the work dir {self._code_dir}; give a path inside it, such as 'out/data.csv'"
            ) from None

    def _relative_dir(self, path: object) -> str | None:
        """A directory's relative path; None for the work dir itself."""
        if path is None or (isinstance(path, str) and path.strip().rstrip("/") in ("", ".", self._code_dir)):
            return None
        if not isinstance(path, str):
            raise Refusal(f'"path" must be a string, got {path!r}')
        return self._relative(path)


def _schema(properties: JSON, required: list[str]) -> JSON:
    return {"type": "object", "properties": properties, "required": required, "additionalProperties": False}


def _text(arguments: JSON, key: str) -> str:
    value = arguments.get(key)
    if not isinstance(value, str):
        raise Refusal(f'"{key}" must be a string, got {"nothing" if value is None else type(value).__name__}')
    return value


def _text_result(text: str) -> JSON:
    return {"content": [{"type": "text", "text": text}], "isError": False}


def _write(root: int, relative: str, content: str) -> JSON:
    try:
        _workdir.write_file(root, relative, content)
        _hand_over(root, relative)
    except ValueError:
        raise Refusal(f"{relative!r} leads through a symbolic link; ccexec follows none") from None
    except OSError as exc:
        raise Refusal(f"cannot write {relative!r}: {exc.strerror}") from None
    return _text_result(f"wrote {len(content.encode('utf-8', 'surrogateescape'))} bytes to {relative}")


def _hand_over(root: int, relative: str) -> None:
    """Give what root wrote to the work dir's owner (a hardened container's non-root user must change it)."""
    owner = os.fstat(root)
    if os.geteuid() != 0 or owner.st_uid == 0:
        return
    parts = [part for part in relative.split("/") if part not in ("", ".")]
    for depth in range(1, len(parts) + 1):
        directory, name = _workdir.open_in(root, "/".join(parts[:depth]), False)
        try:
            if os.stat(name, dir_fd=directory, follow_symlinks=False).st_uid == 0:
                os.chown(name, owner.st_uid, owner.st_gid, dir_fd=directory, follow_symlinks=False)
        finally:
            os.close(directory)


def _open_file(root: int, relative: str) -> int:
    directory, name = _workdir.open_in(root, relative, False)
    try:
        return os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=directory)
    finally:
        os.close(directory)


def _read(root: int, relative: str) -> JSON:
    try:
        fd = _open_file(root, relative)
    except ValueError:
        raise Refusal(f"{relative!r} leads through a symbolic link; ccexec follows none") from None
    except OSError as exc:
        raise Refusal(f"cannot read {relative!r}: {exc.strerror}; list_files shows what exists") from None
    with open(fd, "rb") as handle:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise Refusal(f"{relative!r} is a directory; use list_files")
        if not stat.S_ISREG(info.st_mode):
            raise Refusal(f"{relative!r} is not a regular file")
        if info.st_size > MAX_READ_BYTES:
            raise Refusal(f"{relative!r} has {info.st_size} bytes, over the {MAX_READ_BYTES} limit; use run_code")
        data = handle.read(MAX_READ_BYTES + 1)
    return _content(relative, data)


def _content(relative: str, data: bytes) -> JSON:
    """Text or image content for the bytes of a file; a Refusal for other binaries."""
    mime = next((kind for magic, kind in _IMAGES if data.startswith(magic)), None)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        mime = "image/webp"
    if mime is not None:
        image = base64.b64encode(data).decode("ascii")
        return {"content": [{"type": "image", "data": image, "mimeType": mime}], "isError": False}
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = "\0"
    if "\0" in text:
        raise Refusal(
            f"{relative!r} is a binary file ({len(data)} bytes), neither UTF-8 text nor a PNG, JPEG, GIF or WebP "
            "image; inspect it with run_code"
        )
    return _text_result(text)


def _list(root: int, relative: str | None) -> JSON:
    try:
        if relative is None:
            fd = os.dup(root)
        else:
            directory, name = _workdir.open_in(root, relative, False)
            try:
                fd = _workdir.open_directory(directory, name)
            finally:
                os.close(directory)
    except ValueError:
        raise Refusal(f"{relative!r} leads through a symbolic link; ccexec follows none") from None
    except OSError as exc:
        raise Refusal(f"cannot list {relative!r}: {exc.strerror}") from None
    try:
        lines = sorted(_entry(entry) for entry in os.scandir(fd))
    finally:
        os.close(fd)
    shown = lines[:MAX_LIST_ENTRIES]
    if len(lines) > len(shown):
        shown.append(f"[{len(lines) - len(shown)} more entries not shown]")
    return _text_result("\n".join(shown) if shown else "(empty)")


def _entry(entry: os.DirEntry[str]) -> str:
    try:
        info: os.stat_result | None = entry.stat(follow_symlinks=False)
    except OSError:
        info = None
    if info is None:
        return entry.name
    if stat.S_ISDIR(info.st_mode):
        return f"{entry.name}/"
    if stat.S_ISLNK(info.st_mode):
        return f"{entry.name} (symbolic link)"
    return f"{entry.name}  {info.st_size} bytes"
