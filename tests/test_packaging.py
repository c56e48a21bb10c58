"""Packaging promises: no dependencies, typed, one version, public names, lazy and stdlib-only imports."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

import ccexec

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "ccexec"
PYPROJECT = ROOT / "pyproject.toml"

#: Modules ccexec imports only when a feature needs them, so `import ccexec` stays fast.
#: Modules `import ccexec` must not load (each costs milliseconds; the docker and supervisor
#: machinery loads with the first executor).
LAZY_MODULES = frozenset(
    ["asyncio", "tempfile", "venv", "json", "logging", "hashlib", "subprocess", "typing", "shutil", "threading"]
)
#: Subpackage whose modules adapt third-party frameworks; they may import them, lazily only.
INTEGRATIONS = PACKAGE / "integrations"


def project_table() -> dict[str, Any]:
    """Return pyproject's [project] table (a regex reading of the few keys we need before 3.11)."""
    text = PYPROJECT.read_text(encoding="utf-8")
    if sys.version_info >= (3, 11):
        import tomllib

        project: dict[str, Any] = tomllib.loads(text)["project"]
        return project
    section = re.search(r"^\[project\]\n(.*?)(?=^\[)", text, re.MULTILINE | re.DOTALL)
    assert section is not None, "pyproject.toml has no [project] table"
    body = section.group(1)
    version = re.search(r'^version\s*=\s*"([^"]+)"', body, re.MULTILINE)
    deps = re.search(r"^dependencies\s*=\s*\[(.*?)\]", body, re.MULTILINE | re.DOTALL)
    assert version is not None
    assert deps is not None
    return {
        "version": version.group(1),
        "dependencies": re.findall(r'"([^"]+)"', re.sub(r"#.*", "", deps.group(1))),
    }


def test_no_runtime_dependencies() -> None:
    """pyproject.toml declares `dependencies = []`: ccexec is vendored into restricted boxes."""
    assert project_table()["dependencies"] == []


def test_py_typed_is_shipped() -> None:
    """ccexec/py.typed exists and is declared as package data."""
    assert (PACKAGE / "py.typed").is_file()
    assert re.search(r'^ccexec\s*=\s*\[[^\]]*"py\.typed"', PYPROJECT.read_text(encoding="utf-8"), re.MULTILINE)


def test_version_matches_pyproject() -> None:
    """ccexec.__version__ is the version pyproject.toml builds."""
    assert ccexec.__version__ == project_table()["version"]


def test_console_script_resolves() -> None:
    """The `ccexec` console script points at a callable: ccexec.cli.main."""
    match = re.search(r'^ccexec\s*=\s*"([\w.]+):(\w+)"', PYPROJECT.read_text(encoding="utf-8"), re.MULTILINE)
    assert match is not None
    assert callable(getattr(importlib.import_module(match.group(1)), match.group(2)))


def test_all_names_are_importable() -> None:
    """Every name in ccexec.__all__ exists, once, and `from ccexec import *` gives exactly those."""
    assert len(ccexec.__all__) == len(set(ccexec.__all__))
    missing = [name for name in ccexec.__all__ if not hasattr(ccexec, name)]
    assert missing == []
    namespace: dict[str, Any] = {}
    exec("from ccexec import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(ccexec.__all__)


@pytest.fixture(scope="module")
def imported_by_ccexec() -> list[str]:
    """Return the modules a fresh interpreter loads for `import ccexec`."""
    code = "import sys\nbefore = set(sys.modules)\nimport ccexec\nprint('\\n'.join(sorted(set(sys.modules) - before)))"
    # -S -E: no site or PYTHON* variables, so nothing but ccexec imports those modules first.
    proc = subprocess.run(
        [sys.executable, "-S", "-E", "-c", code],
        cwd=ROOT,
        capture_output=True,
        encoding="utf-8",
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    imported = proc.stdout.split()
    assert "ccexec" in imported
    return imported


@pytest.mark.parametrize("lazy", sorted(LAZY_MODULES))
def test_import_is_lazy(imported_by_ccexec: list[str], lazy: str) -> None:
    """A fresh `import ccexec` imports none of LAZY_MODULES (subprocess, typing, json... cost milliseconds)."""
    eager = [name for name in imported_by_ccexec if name.split(".")[0] == lazy]
    assert eager == [], f"import ccexec imported {eager}; everything it imported: {imported_by_ccexec}"


def python_files() -> Iterator[Path]:
    """Yield every Python file of the package, subpackages included."""
    yield from sorted(PACKAGE.rglob("*.py"))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def absolute_imports(tree: ast.AST) -> Iterator[tuple[str, int, bool, bool]]:
    """Yield (top-level module, line, under TYPE_CHECKING, inside a function) for each absolute import."""

    def walk(node: ast.AST, typing_only: bool, in_function: bool) -> Iterator[tuple[str, int, bool, bool]]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno, typing_only, in_function
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno, typing_only, in_function
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for statement in node.body:
                yield from walk(statement, True, in_function)
            for statement in node.orelse:
                yield from walk(statement, typing_only, in_function)
            return
        function = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            yield from walk(child, typing_only, function)

    return walk(tree, False, False)


@pytest.mark.skipif(not hasattr(sys, "stdlib_module_names"), reason="sys.stdlib_module_names is new in 3.10")
def test_imports_only_the_standard_library() -> None:
    """Every absolute import in ccexec/ is stdlib or ccexec (typing_extensions under TYPE_CHECKING only)."""
    stdlib: frozenset[str] = getattr(sys, "stdlib_module_names")  # noqa: B009 - absent before 3.10 (mypy targets 3.9)
    offenders = []
    checked = 0
    for path in python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        integration = INTEGRATIONS in path.parents
        for module, line, typing_only, in_function in absolute_imports(tree):
            checked += 1
            if module in stdlib or module == "ccexec":
                continue
            if typing_only and module == "typing_extensions":
                continue
            if integration and (typing_only or in_function):
                continue  # frameworks are imported when their adapter is used, never by `import ccexec`
            offenders.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert checked > 20  # the walk really saw the package's imports
    assert offenders == []


def test_import_walk_sees_type_checking_and_functions() -> None:
    """The import walker tells TYPE_CHECKING blocks and function bodies apart from the module level."""
    source = (
        "import os\n"
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from typing_extensions import Self\n"
        "else:\n"
        "    import json\n"
        "def f():\n"
        "    import numpy\n"
        "from . import sibling\n"
    )
    found = list(absolute_imports(ast.parse(source)))
    assert found == [
        ("os", 1, False, False),
        ("typing", 2, False, False),
        ("typing_extensions", 4, True, False),
        ("json", 6, False, False),
        ("numpy", 8, False, True),
    ]
