"""User-defined functions: the module, packages, prompts and system message (local executor)."""

from __future__ import annotations

import shutil
import socket
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest

import ccexec
from ccexec import (
    Alias,
    CodeBlock,
    FunctionWithRequirements,
    ImportFromModule,
    LocalCommandLineCodeExecutor,
    with_requirements,
)
from ccexec.functions import function_source, module_source

from .conftest import silent_server


def add_two_numbers(a: int, b: int) -> int:
    """Add two numbers together."""
    return a + b


@with_requirements(global_imports=["math", ImportFromModule("os", ["sep"]), Alias("json", "js")])
def circle_area(radius: float) -> str:
    """Return the area of a circle, as JSON."""
    return str(js.dumps(round(math.pi * radius**2, 2)))  # type: ignore[name-defined]  # noqa: F821


def _identity(func: Any) -> Any:
    return func


@_identity
@with_requirements(
    global_imports=[],
)
@_identity
def decorated_thrice(x: int) -> int:
    """Triple x."""
    return 3 * x


def make(tmp_path: Path, **kwargs: Any) -> LocalCommandLineCodeExecutor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return LocalCommandLineCodeExecutor(work_dir=tmp_path, **kwargs)


def test_plain_function_output_is_exact(tmp_path: Path) -> None:
    """`print(add_two_numbers(1, 2))` gives exactly "3\\n", no setup noise."""
    executor = make(tmp_path, functions=[add_two_numbers])
    result = executor.execute_code_blocks(
        [CodeBlock("from functions import add_two_numbers\nprint(add_two_numbers(1, 2))", "python")]
    )
    assert (result.exit_code, result.output) == (0, "3\n")


def test_module_has_imports_first_and_no_decorators(tmp_path: Path) -> None:
    """The module starts with sorted imports, then each function without its decorators."""
    executor = make(tmp_path, functions=[circle_area, decorated_thrice], functions_module="tools")
    code = "from tools import circle_area, decorated_thrice\nprint(circle_area(1.0), decorated_thrice(2))"
    result = executor.execute_code_blocks([CodeBlock(code, "python")])
    assert (result.exit_code, result.output) == (0, "3.14 6\n")
    text = (tmp_path / "tools.py").read_text(encoding="utf-8")
    assert text.startswith("import json as js\nimport math\nfrom os import sep\n")
    assert "@" not in text


def test_decorator_keeps_name_and_doc_and_calls() -> None:
    """with_requirements keeps __name__ and __doc__, and the wrapper still calls the function."""
    assert circle_area.__name__ == "circle_area"
    assert circle_area.__doc__ == "Return the area of a circle, as JSON."
    assert decorated_thrice(3) == 9


def test_import_from_module_is_hashable_with_a_list() -> None:
    """ImportFromModule given a list is hashable and equal to the tuple form."""
    assert hash(ImportFromModule("os", ["path", "sep"])) == hash(ImportFromModule("os", ("path", "sep")))
    assert len({ImportFromModule("os", ["path"]), ImportFromModule("os", ("path",))}) == 1


def test_from_str_function(tmp_path: Path) -> None:
    """A string-defined function is importable; calling it wrongly fails the block with TypeError."""
    func = FunctionWithRequirements.from_str("def greet(name):\n    'Greet.'\n    return 'hi ' + name\n")
    executor = make(tmp_path, functions=[func])
    ok = executor.execute_code_blocks([CodeBlock("from functions import greet\nprint(greet('ann'))", "python")])
    assert ok.output == "hi ann\n"
    bad = executor.execute_code_blocks([CodeBlock("from functions import greet\ngreet(1, 2)", "python")])
    assert bad.exit_code == 1
    assert "TypeError" in bad.output


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("def broken(:\n    pass\n", "does not parse"),
        ("x = 1\n", "exactly one function"),
        ("def a():\n    pass\n\ndef b():\n    pass\n", "exactly one function"),
    ],
)
def test_from_str_rejects_bad_source(source: str, message: str) -> None:
    """Broken source or anything but one function raises ValueError naming the problem."""
    with pytest.raises(ValueError, match=message):
        FunctionWithRequirements.from_str(source)


def test_missing_import_raises_value_error(tmp_path: Path) -> None:
    """A global import that does not exist fails setup with Python's error, before any block."""
    func = FunctionWithRequirements.from_str("def f():\n    return 1\n", global_imports=["ccexec_no_such_module"])
    executor = make(tmp_path, functions=[func])
    with pytest.raises(ValueError, match="ccexec_no_such_module") as caught:
        executor.execute_code_blocks([CodeBlock("print('never')", "python")])
    assert isinstance(caught.value, ccexec.FunctionSetupError)


def test_missing_package_raises_value_error(tmp_path: Path) -> None:
    """A package that does not exist on the index fails setup with pip's error text."""
    func = FunctionWithRequirements.from_str("def f():\n    return 1\n", python_packages=["ccexec-no-such-package-x9q"])
    executor = make(tmp_path, functions=[func], setup_timeout=120)
    with pytest.raises(ccexec.FunctionSetupError, match="ccexec-no-such-package-x9q") as caught:
        executor.execute_code_blocks([CodeBlock("print('never')", "python")])
    assert "ERROR: No matching distribution found for ccexec-no-such-package-x9q" in caught.value.output
    assert "No matching distribution found for ccexec-no-such-package-x9q" in str(caught.value)
    assert caught.value.exit_code == 1  # pip's own exit code, not a timeout (None)


@pytest.fixture
def silent_index() -> Iterator[str]:
    """An index URL on loopback that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    with silent_server(server):
        yield f"http://127.0.0.1:{server.getsockname()[1]}/simple"


def test_pip_timeout_kills_pip(tmp_path: Path, silent_index: str) -> None:
    """A pip install that outlives setup_timeout is killed and raises, saying so."""
    packages = [f"--index-url={silent_index}", "--retries=0", "--timeout=60", "ccexec-slow-package"]
    func = FunctionWithRequirements.from_str("def f():\n    return 1\n", python_packages=packages)
    executor = make(
        tmp_path, functions=[func], setup_timeout=2, env={"PIP_FIND_LINKS": None, "PIP_CONFIG_FILE": "/dev/null"}
    )
    with pytest.raises(ccexec.FunctionSetupError, match="did not finish within setup_timeout=2 s"):
        executor.execute_code_blocks([CodeBlock("print(1)", "python")])


@pytest.mark.slow
def test_package_installed_into_venv(tmp_path: Path) -> None:
    """A function's package is pip-installed into the venv (not the host), and pip's output stays out."""
    venv = ccexec.create_virtual_env(tmp_path / "venv")
    func = FunctionWithRequirements.from_str(
        "def six_version():\n    'Version of six.'\n    return six.__version__\n",
        python_packages=["six==1.16.0"],
        global_imports=["six"],
    )
    executor = make(tmp_path / "work", functions=[func], virtual_env_context=venv, setup_timeout=180)
    code = (
        "import six, sys\nfrom functions import six_version\nprint(six_version(), six.__file__.startswith(sys.prefix))"
    )
    result = executor.execute_code_blocks([CodeBlock(code, "python")])
    assert (result.exit_code, result.output) == (0, "1.16.0 True\n")
    assert list((Path(venv.env_dir) / "lib").glob("python3*/site-packages/six.py"))


def test_prompt_stubs(tmp_path: Path) -> None:
    """format_functions_for_prompt lists signature + docstring stubs and how to import them."""
    executor = make(tmp_path, functions=[add_two_numbers, circle_area])
    prompt = executor.format_functions_for_prompt()
    assert "from functions import" in prompt
    assert 'def add_two_numbers(a: int, b: int) -> int:\n    """Add two numbers together."""\n    ...' in prompt
    assert "return a + b" not in prompt
    custom = executor.format_functions_for_prompt(template="Module $module_name:\n$functions")
    assert custom.startswith("Module functions:\ndef add_two_numbers")


def test_system_message(tmp_path: Path) -> None:
    """The code-writer system message names languages, work dir, timeout, filename rule and functions."""
    executor = make(tmp_path, functions=[add_two_numbers], timeout=45)
    message = executor.code_writer_system_message()
    for expected in ("python", "sh", "bash", str(tmp_path), "45 seconds", "# filename:", "NEW process"):
        assert expected in message
    assert ("pwsh" in message) == bool(shutil.which("pwsh"))  # offered only when installed
    assert "def add_two_numbers(a: int, b: int) -> int:" in message


def test_function_source_of_multiline_decorator() -> None:
    """Decorators spanning lines are stripped; the def line starts the source."""
    assert function_source(decorated_thrice).startswith("def decorated_thrice(x: int) -> int:")
    assert module_source([add_two_numbers]).startswith("def add_two_numbers")


def test_functions_must_be_functions(tmp_path: Path) -> None:
    """functions= with non-functions raises ValueError at construction."""
    with pytest.raises(ValueError, match="functions"):
        make(tmp_path, functions=["not a function"])
