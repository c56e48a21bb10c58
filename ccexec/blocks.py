"""Code blocks, the languages that run them, and where each block's file goes."""

from __future__ import annotations

import os
import posixpath

from ._records import FrozenRecord, Record

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import time matters)
if TYPE_CHECKING:
    from typing import Mapping, Sequence

    from ._protocol import RunRequest

#: Placeholder in a language command for "the Python interpreter of this executor".
PYTHON = "{python}"
#: Placeholder in a language command for the code file; appended when absent.
FILE = "{file}"


class CodeBlock(Record):
    """A block of code and the language tag it was written with (AutoGen's dataclass)."""

    __slots__ = ("code", "language")
    _fields = ("code", "language")
    __match_args__ = ("code", "language")

    def __init__(self, code: str, language: str) -> None:
        self.code = code
        self.language = language


class Language(FrozenRecord):
    """How to run a file of one language: its extension and the command before the file.

    ``command`` items are passed as separate arguments (never through a shell). ``{python}``
    stands for the executor's interpreter (the venv's, ``sys.executable``, or ``python`` in a
    container) and ``{file}`` for the code file, which is appended when no item names it.
    """

    __slots__ = ("extension", "command")
    _fields = ("extension", "command")
    __match_args__ = ("extension", "command")

    def __init__(self, extension: str, command: Sequence[str]) -> None:
        self._set("extension", extension)
        self._set("command", tuple(command))

    if TYPE_CHECKING:
        extension: str
        command: tuple[str, ...]

    def argv(self, file: str, python: str) -> list[str]:
        """Return the argv that runs ``file``."""
        args = [python if part == PYTHON else part for part in self.command]
        if FILE not in args:
            return [*args, file]
        return [file if part == FILE else part for part in args]


_PYTHON = Language("py", (PYTHON,))
_SH = Language("sh", ("sh",))
_PWSH = Language("ps1", ("pwsh", "-NoLogo", "-NonInteractive", "-File"))

#: The languages every executor knows, by lower-case tag (aliases included).
DEFAULT_LANGUAGES: Mapping[str, Language] = {
    "python": _PYTHON,
    "py": _PYTHON,
    "python3": _PYTHON,
    "bash": Language("sh", ("bash",)),
    "sh": _SH,
    "shell": _SH,
    "pwsh": _PWSH,
    "powershell": _PWSH,
    "ps1": _PWSH,
}


def language_table(extra: Mapping[str, Language] | None) -> dict[str, Language]:
    """Merge user languages over the defaults; tags are matched case-insensitively."""
    table = dict(DEFAULT_LANGUAGES)
    for tag, language in (extra or {}).items():
        if not isinstance(language, Language):
            raise TypeError(f"languages[{tag!r}] must be a ccexec.Language, not {type(language).__name__}")
        if not tag.strip() or any(ch.isspace() for ch in tag.strip()):
            raise ValueError(f"language tag {tag!r} must be one word")
        if not language.command:
            raise ValueError(f"languages[{tag!r}].command is empty")
        table[tag.strip().lower()] = language
    return table


def normalize_tag(tag: str) -> str:
    """Return the lookup form of a block's language tag (``Python `` -> ``python``)."""
    return tag.strip().lower()


# `# filename: a b.py`, `// filename: x.js`, `<!-- filename: x.html -->`, `/* filename: x */`,
# `-- filename: q.sql`. The keyword is required: AutoGen's legacy form took any first-line
# comment as a name. Everything after the first colon is the name, so `c:d.txt` survives.
_FILENAME_PATTERN = r"^\s*(?:#|//|--|;|<!--|/\*)\s*filename\s*:\s*(?P<name>.+?)\s*(?:-->|\*/)?\s*$"


def requested_filename(code: str) -> str | None:
    """Return the name given by a ``# filename:`` first line, or None."""
    first = code.lstrip("\ufeff").split("\n", 1)[0].rstrip("\r")
    if "filename" not in first.lower():  # the common case: no regex (nor `re` import) needed
        return None
    import re

    match = re.match(_FILENAME_PATTERN, first, re.IGNORECASE)
    if match is None:
        return None
    name = match.group("name").strip().strip("\"'`").strip()
    return name or None


class FilenameOutsideWorkspace(ValueError):
    """A ``# filename:`` resolves outside the work dir (reported as exit 1, not raised)."""


def container_relative_path(name: str, root: str) -> str:
    """Return ``name`` relative to the POSIX ``root`` (the container's work dir), lexically.

    The container side resolves symlinks again before it writes; this is the first check.
    """
    if not name or "\x00" in name:
        raise FilenameOutsideWorkspace(name)
    path = posixpath.normpath(posixpath.join(root, name))
    if path.startswith("//"):  # normpath keeps a leading double slash
        path = "/" + path.lstrip("/")
    prefix = root.rstrip("/") + "/"
    if not path.startswith(prefix) or path == root:
        raise FilenameOutsideWorkspace(name)
    return path[len(prefix) :]


def generated_filename(code: str, extension: str) -> str:
    """Return a fresh file name for a block: unique even when the same code runs twice at once."""
    # A content hash (as AutoGen names files) alone collides under concurrency; add randomness.
    import hashlib

    digest = hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"tmp_code_{digest}_{os.urandom(4).hex()}.{extension}"


def coerce_blocks(code_blocks: Sequence[object]) -> list[CodeBlock]:
    """Accept ccexec CodeBlocks or any object with ``code`` and ``language`` (AutoGen's)."""
    if isinstance(code_blocks, (str, bytes)):
        raise TypeError("code_blocks must be a list of CodeBlock, not a string")
    blocks = []
    for index, block in enumerate(code_blocks):
        code = getattr(block, "code", None)
        language = getattr(block, "language", None)
        if not isinstance(code, str) or not isinstance(language, str):
            raise TypeError(
                f"code_blocks[{index}] must have str 'code' and 'language' attributes "
                f"(a ccexec.CodeBlock), got {type(block).__name__}"
            )
        blocks.append(block if isinstance(block, CodeBlock) else CodeBlock(code, language))
    return blocks


class PlannedBlock:
    """A block ready to send: its request, and where its file goes (relative to the work dir)."""

    __slots__ = ("block", "generated", "relative", "request")

    def __init__(self, block: CodeBlock, relative: str, generated: bool, request: RunRequest) -> None:
        self.block, self.relative, self.generated, self.request = block, relative, generated, request


def plan(  # noqa: PLR0917 - the call's blocks and the executor's settings
    blocks: Sequence[CodeBlock], languages: Mapping[str, Language], code_dir: str, timeout: float,
    env: dict[str, str], clear_env: bool, delete_generated: bool, fork_server: int = 0,
) -> tuple[list[PlannedBlock], tuple[str, str] | None]:  # fmt: skip
    """Name each block's file and build its request, up to the first block that cannot start.

    With ``delete_generated``, the supervisor deletes a generated file once its block ended.
    ``fork_server``: the requests' field of that name (python blocks forked from a started interpreter).

    Returns the planned blocks and, when one cannot start, (its language, why) to report
    after the blocks before it succeeded: an unknown language, or a ``# filename:`` outside
    the work dir.
    """
    from ._protocol import RunRequest

    planned: list[PlannedBlock] = []
    for block in blocks:
        language = languages.get(normalize_tag(block.language))
        name = requested_filename(block.code)
        if language is None:
            return planned, (block.language, f"unknown language {block.language}\n")
        try:
            relative = (
                generated_filename(block.code, language.extension) if name is None else relative_name(name, code_dir)
            )
        except FilenameOutsideWorkspace:
            return planned, (block.language, f"Filename is not in the workspace: {name!r}\n")
        argv = language.argv("{file}", "{python}")
        cleanup = delete_generated and name is None
        request = RunRequest(
            0, argv, timeout, env, clear_env, relative, block.code, cleanup=cleanup, fork_server=fork_server
        )
        planned.append(PlannedBlock(block, relative, name is None, request))
    return planned, None


def relative_name(name: str, code_dir: str) -> str:
    """A ``# filename:`` as a path relative to the work dir, lexically; raises FilenameOutsideWorkspace.

    Symlinks are not resolved here: the supervisor writes without following any.
    """
    real = os.path.realpath(code_dir)
    if name.startswith("/") and real != code_dir and name.startswith(real.rstrip("/") + "/"):
        return container_relative_path(name, real)
    return container_relative_path(name, code_dir)
