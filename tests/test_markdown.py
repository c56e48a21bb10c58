"""extract_code_blocks on realistic model replies, edge cases and arbitrary text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ccexec import CodeBlock, extract_code_blocks

# (reply, expected [(language, code), ...])
REPLIES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "plain python": (
        "Sure! Here is the script:\n\n```python\nprint('hello')\n```\n\nRun it and tell me the output.",
        [("python", "print('hello')")],
    ),
    "several blocks in order": (
        "First install:\n```bash\npip install requests\n```\nThen:\n```python\nimport requests\n"
        "print(requests.__version__)\n```\nAnd check:\n```sh\nls -la\n```\n",
        [
            ("bash", "pip install requests"),
            ("python", "import requests\nprint(requests.__version__)"),
            ("sh", "ls -la"),
        ],
    ),
    "tildes": ("~~~python\nx = 1\nprint(x)\n~~~\n", [("python", "x = 1\nprint(x)")]),
    "long fence": ("`````py\nprint(5)\n`````\n", [("py", "print(5)")]),
    "info string with attributes": ('```py title="x.py" linenums="1"\nprint(1)\n```\n', [("py", "print(1)")]),
    "upper-case tag": ("```Python\nprint(1)\n```\n", [("python", "print(1)")]),
    "c++": ("```c++\nint main() { return 0; }\n```\n", [("c++", "int main() { return 0; }")]),
    "objective-c": (
        "```objective-c\n@interface Foo : NSObject\n@end\n```\n",
        [("objective-c", "@interface Foo : NSObject\n@end")],
    ),
    "pandoc attribute": ("```{.python}\nprint(3)\n```\n", [("python", "print(3)")]),
    "pandoc attributes": ("```{.python .numberLines}\nprint(4)\n```\n", [("python", "print(4)")]),
    "indented in a list item": (
        "1. Install it:\n\n   ```sh\n   pip install numpy\n   ```\n\n2. Then run:\n\n   ```python\n"
        "   import numpy as np\n   if True:\n       print(np.arange(3))\n\n   print('done')\n   ```\n",
        [
            ("sh", "pip install numpy"),
            ("python", "import numpy as np\nif True:\n    print(np.arange(3))\n\nprint('done')"),
        ],
    ),
    "crlf": (
        "Here you go:\r\n\r\n```python\r\nprint(1)\r\nprint(2)\r\n```\r\nBye\r\n",
        [("python", "print(1)\nprint(2)")],
    ),
    "closing fence with trailing spaces": ("```python\nprint(1)\n```   \n", [("python", "print(1)")]),
    "untagged python": (
        "```\nimport os\n\nfor name in os.listdir('.'):\n    print(name)\n```\n",
        [("python", "import os\n\nfor name in os.listdir('.'):\n    print(name)")],
    ),
    "untagged shell commands": (
        "```\npip install numpy pandas\npython -c 'import numpy'\n```\n",
        [("sh", "pip install numpy pandas\npython -c 'import numpy'")],
    ),
    "untagged prompt-style shell": ("```\n$ echo hi\n$ date\n```\n", [("sh", "$ echo hi\n$ date")]),
    "untagged prose": (
        "```\nThe answer is 42, because the question was wrong.\n```\n",
        [("", "The answer is 42, because the question was wrong.")],
    ),
    "untagged python shebang": (
        "```\n#!/usr/bin/env python3\nprint(1)\n```\n",
        [("python", "#!/usr/bin/env python3\nprint(1)")],
    ),
    "nested fences": (
        "Save this as README.md:\n\n````markdown\n# Demo\n\n```python\nprint('inner')\n```\n````\n",
        [("markdown", "# Demo\n\n```python\nprint('inner')\n```")],
    ),
    "tilde fence holds backtick fences": (
        "~~~md\n```python\nprint(1)\n```\n~~~\n",
        [("md", "```python\nprint(1)\n```")],
    ),
    "unterminated fence is dropped": (
        "```python\nprint('complete')\n```\nNow the rest:\n```python\nprint('cut off mid-",
        [("python", "print('complete')")],
    ),
    "inline triple backticks": ("Call ```print(1)``` to print.\n```print(2)```\n", []),
    "empty block": ("```python\n```\n", [("python", "")]),
    "empty untagged block": ("```\n```\n", [("", "")]),
    "no blocks": ("Just an explanation with `inline` code and no fences.\n", []),
    "empty text": ("", []),
}


@pytest.mark.parametrize(("reply", "expected"), REPLIES.values(), ids=list(REPLIES))
def test_extract_code_blocks(reply: str, expected: list[tuple[str, str]]) -> None:
    """Each realistic reply yields exactly the expected (language, code) blocks, in order."""
    blocks = extract_code_blocks(reply)
    assert all(isinstance(block, CodeBlock) for block in blocks)
    assert [(block.language, block.code) for block in blocks] == expected


@pytest.mark.parametrize(
    "reply",
    [
        "```make\nall:\n\techo hi\n```\n",
        "```sh\ncat <<-EOF\n\thello\n\tEOF\n```\n",
        "```go\nfunc main() {\n\tfmt.Println(1)\n}\n```\n",
    ],
    ids=["makefile", "heredoc", "go"],
)
def test_tabs_in_code_are_kept(reply: str) -> None:
    """Leading tabs inside an unindented fence are part of the code and are kept as they are."""
    (block,) = extract_code_blocks(reply)
    assert "\t" in block.code
    assert block.code == reply.split("\n", 1)[1].rsplit("```", 1)[0].rstrip("\n")


@pytest.mark.parametrize(
    "code",
    # Sizes that make compile() fail on every CPython from 3.9 to 3.13 (smaller ones vary).
    ["-" * 100_000 + "1", "x" + ".a" * 100_000],
    ids=["unary-minus", "attribute-chain"],
)
def test_untagged_deeply_nested_code_never_raises(code: str) -> None:
    """An untagged block the compiler cannot handle is extracted without raising."""
    (block,) = extract_code_blocks(f"```\n{code}\n```\n")
    assert block.code == code


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_never_raises_on_arbitrary_text(text: str) -> None:
    """For any text, extract_code_blocks returns a list of CodeBlocks with str fields."""
    blocks = extract_code_blocks(text)
    assert isinstance(blocks, list)
    for block in blocks:
        assert isinstance(block, CodeBlock)
        assert isinstance(block.code, str)
        assert isinstance(block.language, str)


_LINE = st.one_of(
    st.sampled_from(["```", "````", "~~~", "```python", "~~~ sh", "  ```", "```py```", "", "\t```", "`` `"]),
    st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINE, max_size=12), st.sampled_from(["\n", "\r\n", "\r"]))
def test_never_raises_on_fence_heavy_text(lines: list[str], newline: str) -> None:
    """Text built mostly of fences, in any line-ending style, never raises and gives CodeBlocks."""
    blocks = extract_code_blocks(newline.join(lines))
    assert all(isinstance(block, CodeBlock) for block in blocks)
    assert all("\r" not in block.code for block in blocks)


@settings(max_examples=200, deadline=None)
@given(
    st.text(alphabet=st.characters(exclude_characters="`~\r", exclude_categories=["Cs"])),
    st.sampled_from(["python", "sh", "c++", "text"]),
)
def test_fenced_text_round_trips(code: str, tag: str) -> None:
    """Code without fence characters, fenced with an explicit tag, comes back unchanged."""
    (block,) = extract_code_blocks(f"Intro.\n\n```{tag}\n{code}\n```\n\nOutro.")
    assert (block.language, block.code) == (tag, code)
