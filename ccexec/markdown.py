"""extract_code_blocks: the fenced code blocks of a Markdown text (a model's reply, a doc)."""

from __future__ import annotations

from .blocks import CodeBlock

# An opening fence: any indentation, 3+ backticks or tildes, then the info string.
_OPEN_PATTERN = r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$"
_SHELL_COMMANDS = frozenset(
    [
        "pip",
        "pip3",
        "python",
        "python3",
        "apt",
        "apt-get",
        "brew",
        "conda",
        "npm",
        "npx",
        "yarn",
        "node",
        "git",
        "curl",
        "wget",
        "ls",
        "cd",
        "cat",
        "echo",
        "export",
        "mkdir",
        "rm",
        "cp",
        "mv",
        "chmod",
        "chown",
        "touch",
        "grep",
        "sed",
        "awk",
        "sudo",
        "source",
        "uv",
        "poetry",
        "make",
        "docker",
        "tar",
        "unzip",
    ]
)


def extract_code_blocks(text: str) -> list[CodeBlock]:
    """Return the fenced code blocks of ``text``, in order, as CodeBlocks.

    Backtick and tilde fences (``` or ~~~, three or more) are recognised at any indentation;
    that indentation is removed from the block's lines. The language is the first word of the
    info string (``py title="x"`` -> ``py``; ``c++``, ``objective-c`` kept), lower-cased; an
    untagged block gets one inferred from its content (``sh`` for shell commands such as
    ``pip install``, ``python`` when it compiles as Python), else ``""``. A fence is closed
    only by the same character, at least as long, so nested fences stay inside. An
    unterminated block (a reply cut off mid-code) is dropped rather than run half-written.
    Never raises for any text.
    """
    import re

    opening = re.compile(_OPEN_PATTERN)
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    blocks: list[CodeBlock] = []
    index = 0
    while index < len(lines):
        match = opening.match(lines[index])
        index += 1
        if match is None:
            continue
        fence, info = match.group("fence"), match.group("info")
        if fence[0] == "`" and "`" in info:
            continue  # inline code such as ```x``` on one line, not a fence
        indent = len(match.group("indent").expandtabs(4))
        body: list[str] = []
        closed = False
        while index < len(lines):
            line = lines[index]
            index += 1
            stripped = line.strip()
            if stripped.startswith(fence) and set(stripped) == {fence[0]}:
                closed = True
                break
            body.append(_dedent(line, indent))
        if not closed:
            break
        code = "\n".join(body)
        blocks.append(CodeBlock(code=code, language=_language(info, code)))
    return blocks


def _dedent(line: str, indent: int) -> str:
    """Remove up to ``indent`` columns of leading whitespace; keep the rest byte for byte."""
    column = 0
    for index, char in enumerate(line):
        if column >= indent or char not in " \t":
            return line[index:]
        width = 4 - column % 4 if char == "\t" else 1
        if column + width > indent:  # a tab straddling the fence's indentation
            return " " * (column + width - indent) + line[index + 1 :]
        column += width
    return ""


def _language(info: str, code: str) -> str:
    words = info.strip().split()
    if words:
        # `{.python}` (pandoc) and `python,` are seen in the wild.
        return words[0].strip("{}.,;:").lower()
    return infer_language(code)


def infer_language(code: str) -> str:
    """Guess the language of an untagged block: ``sh``, ``python`` or ``""``."""
    lines = [line.strip() for line in code.split("\n") if line.strip() and not line.strip().startswith("#")]
    if not lines:
        return ""
    if code.lstrip().startswith("#!"):
        first = code.lstrip().split("\n", 1)[0]
        return "python" if "python" in first else "sh"
    if all(line.startswith("$ ") or line.split()[0] in _SHELL_COMMANDS for line in lines):
        return "sh"
    try:
        compile(code, "<block>", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError):  # deep nesting overflows the parser
        return ""
    return "python"
