"""User-defined functions that executed code can import, with their packages and imports.

AutoGen's vocabulary: ``with_requirements``, ``FunctionWithRequirements``, ``Alias`` and
``ImportFromModule``. The executors write the functions to ``<work_dir>/<functions_module>.py``
(imports first, then each function's source, decorators stripped), pip-install their
packages, check that the module imports, and only then run blocks.
"""

from __future__ import annotations

import functools
import textwrap
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Generic, Sequence, TypeVar, Union

if TYPE_CHECKING:
    from ._protocol import BlockEnd
    from .backends import Backend

T = TypeVar("T")


@dataclass(frozen=True)
class Alias:
    """``import name as alias`` (or, inside ImportFromModule, ``from m import name as alias``)."""

    name: str
    alias: str


@dataclass(frozen=True)
class ImportFromModule:
    """``from module import a, b as c``; ``imports`` may be given as a list (stored as a tuple)."""

    module: str
    imports: Sequence[Union[str, Alias]]  # stored as a tuple

    def __post_init__(self) -> None:
        # A tuple keeps the object hashable when the caller passed a list.
        object.__setattr__(self, "imports", tuple(self.imports))


Import = Union[str, ImportFromModule, Alias]


@dataclass
class FunctionWithRequirementsStr:
    """A function given as source text, with the packages and imports it needs."""

    func: str
    python_packages: Sequence[str] = field(default_factory=tuple)
    global_imports: Sequence[Import] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self._node = _single_function(self.func)

    @property
    def name(self) -> str:
        """The function's name."""
        return str(self._node.name)


@dataclass
class FunctionWithRequirements(Generic[T]):
    """A Python function with the packages and imports it needs; calling it calls the function."""

    func: Callable[..., T]
    python_packages: Sequence[str] = field(default_factory=tuple)
    global_imports: Sequence[Import] = field(default_factory=tuple)

    if TYPE_CHECKING:  # set by with_requirements (functools.update_wrapper); not dataclass fields
        __name__: ClassVar[str]

    @classmethod
    def from_callable(
        cls, func: Callable[..., T], python_packages: Sequence[str] = (), global_imports: Sequence[Import] = ()
    ) -> FunctionWithRequirements[T]:
        """Wrap a callable."""
        return cls(func=func, python_packages=tuple(python_packages), global_imports=tuple(global_imports))

    @staticmethod
    def from_str(
        func: str, python_packages: Sequence[str] = (), global_imports: Sequence[Import] = ()
    ) -> FunctionWithRequirementsStr:
        """Wrap source text holding exactly one function.

        Raises ValueError when the source does not parse or holds anything but one function.
        """
        return FunctionWithRequirementsStr(
            func=func, python_packages=tuple(python_packages), global_imports=tuple(global_imports)
        )

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        return self.func(*args, **kwargs)


UserFunction = Union[FunctionWithRequirements[Any], FunctionWithRequirementsStr, Callable[..., Any]]


def with_requirements(
    python_packages: Sequence[str] = (), global_imports: Sequence[Import] = ()
) -> Callable[[Callable[..., T]], FunctionWithRequirements[T]]:
    """Decorate a function with the packages and imports it needs; keeps its name and docstring."""

    def wrap(func: Callable[..., T]) -> FunctionWithRequirements[T]:
        wrapped = FunctionWithRequirements.from_callable(func, python_packages, global_imports)
        functools.update_wrapper(wrapped, func)
        return wrapped

    return wrap


# -- rendering ---------------------------------------------------------------------------------


def function_name(function: UserFunction) -> str:
    """Return the name code imports the function by."""
    if isinstance(function, FunctionWithRequirementsStr):
        return function.name
    if isinstance(function, FunctionWithRequirements):
        return str(function.func.__name__)
    return str(function.__name__)


def function_source(function: UserFunction) -> str:
    """Return the function's source, dedented, without decorators.

    Raises ValueError when the source cannot be found (a builtin, a lambda, a REPL function).
    """
    if isinstance(function, FunctionWithRequirementsStr):
        source = textwrap.dedent(function.func)
    else:
        func = function.func if isinstance(function, FunctionWithRequirements) else function
        import inspect

        try:
            source = textwrap.dedent(inspect.getsource(func))
        except (OSError, TypeError) as exc:
            raise ValueError(
                f"cannot get the source of {func!r}: {exc}; pass it as text with FunctionWithRequirements.from_str"
            ) from exc
    node = _single_function(source)
    # The def line starts after any number of (multi-line) decorators.
    return "\n".join(source.splitlines()[node.lineno - 1 : node.end_lineno]) + "\n"


def _single_function(source: str) -> Any:
    import ast

    try:
        tree = ast.parse(textwrap.dedent(source))
    except SyntaxError as exc:
        raise ValueError(f"function source does not parse: {exc.msg} (line {exc.lineno})") from exc
    functions = [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    if len(tree.body) != 1 or len(functions) != 1:
        raise ValueError(
            f"function source must hold exactly one function definition, found {len(tree.body)} statements"
        )
    return functions[0]


def _render_import(item: Import) -> str:
    if isinstance(item, str):
        return f"import {item}"
    if isinstance(item, Alias):
        return f"import {item.name} as {item.alias}"
    names = ", ".join(name if isinstance(name, str) else f"{name.name} as {name.alias}" for name in item.imports)
    return f"from {item.module} import {names}"


def _requirements(function: UserFunction) -> tuple[Sequence[str], Sequence[Import]]:
    if isinstance(function, (FunctionWithRequirements, FunctionWithRequirementsStr)):
        return function.python_packages, function.global_imports
    return (), ()


def module_source(functions: Sequence[UserFunction]) -> str:
    """Return the module text: sorted unique imports, then each function's source."""
    rendered = {_render_import(item) for function in functions for item in _requirements(function)[1]}
    imports = sorted(rendered, key=lambda line: (line.startswith("from "), line))  # `import` lines first
    bodies = [function_source(function) for function in functions]
    header = "\n".join(imports) + "\n\n\n" if imports else ""
    return header + "\n\n".join(bodies)


def required_packages(functions: Sequence[UserFunction]) -> list[str]:
    """Return the union of the functions' packages, in first-seen order."""
    seen: dict[str, None] = {}
    for function in functions:
        for package in _requirements(function)[0]:
            seen.setdefault(package, None)
    return list(seen)


def function_stub(function: UserFunction) -> str:
    """Return ``def name(signature):`` with the docstring and a ``...`` body."""
    import ast

    node = _single_function(function_source(function))
    docstring = ast.get_docstring(node)
    body: list[ast.stmt] = [ast.Expr(ast.Constant(docstring))] if docstring else []
    body.append(ast.Expr(ast.Constant(...)))
    node.body = body
    node.decorator_list = []
    return ast.unparse(node)


#: The default template of ``format_functions_for_prompt``; ``$module_name`` and
#: ``$functions`` are substituted (AutoGen's placeholder names).
FUNCTIONS_PROMPT_TEMPLATE = """The following Python functions are already written for you. Import them from the \
module `$module_name` instead of writing them again, for example `from $module_name import name`:

$functions"""


def format_functions_for_prompt(functions: Sequence[UserFunction], module_name: str, template: str) -> str:
    """Return ``template`` with the module name and the functions' stubs filled in."""
    from string import Template

    stubs = "\n\n".join(function_stub(function) for function in functions)
    return Template(template).substitute(module_name=module_name, functions=stubs)


def install(
    functions: Sequence[UserFunction],
    module_name: str,
    backend: Backend,
    env: tuple[dict[str, str], bool],
    setup_timeout: float,
) -> None:
    """Write ``module_name``.py, pip-install the functions' packages, check the module imports.

    Each step runs on ``backend``, where the blocks run, with the blocks' environment ``env``
    (variables, whether they replace the supervisor's). Raises FunctionSetupError with pip's
    or Python's output when a step fails.
    """
    from .blocks import PYTHON
    from .errors import FunctionSetupError

    try:
        source = module_source(functions)
    except ValueError as exc:
        raise FunctionSetupError(str(exc)) from exc
    packages = required_packages(functions)
    steps: list[tuple[list[str], tuple[str, str] | None, str]] = []
    if packages:
        pip = [PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", *packages]
        steps.append((pip, None, f"pip install {' '.join(packages)}"))
    steps.append(([PYTHON, "-c", f"import {module_name}"], (f"{module_name}.py", source), f"import {module_name}"))
    for argv, write, what in steps:
        end, output = _setup_step(backend, argv, write, env, setup_timeout)
        if end.timed_out:
            raise FunctionSetupError(
                f"`{what}` did not finish within setup_timeout={setup_timeout:g} s and was killed; "
                f"raise setup_timeout or preinstall the packages. Output:\n{output}",
                output=output,
            )
        if end.exit_code != 0:
            exit_code = end.exit_code if end.exit_code is not None else 128 + (end.signal or 0)
            hint = ""
            if "No module named pip" in output:
                hint = " The interpreter has no pip: use a venv made with_pip=True or an image with pip."
            raise FunctionSetupError(
                f"`{what}` failed with exit code {exit_code} while setting up the user functions.{hint} "
                f"Output:\n{output}",
                output=output,
                exit_code=exit_code,
            )


def _setup_step(
    backend: Backend, argv: list[str], write: tuple[str, str] | None, env: tuple[dict[str, str], bool], timeout: float
) -> tuple[BlockEnd, str]:
    """Run one setup command on the backend (writing ``write`` = (name, text) first); return its end and output."""
    from ._capture import OutputCapture
    from ._client import Cancel
    from ._protocol import RunRequest

    capture = OutputCapture(1 << 20)
    path, code = write if write is not None else (None, "")
    ends = backend.run([RunRequest(0, argv, timeout, env[0], env[1], path, code)], [capture], Cancel())
    try:
        return next(ends), capture.text().strip()
    finally:
        ends.close()


def system_message(tags: list[str], work_dir: str, timeout: float, timeout_exit: int, functions: str | None) -> str:
    """The code writer's system message: languages, files, the work dir, limits, and the functions' prompt."""
    lines = [
        "You solve tasks by writing code that is run for you. Put each program in a fenced code block "
        f"tagged with its language; the languages you can use are: {', '.join(tags)}.",
        "Each block is saved to a file and run in a NEW process, in order, stopping at the first block "
        "that fails. Nothing is shared between blocks except files: to pass data on, write it to a file.",
        f"Every block runs with the working directory {work_dir}. To choose the file "
        "name of a block, make its first line a comment like `# filename: name.py`; the name must stay "
        "inside the working directory.",
        f"Each block may run for {timeout:g} seconds; then it is stopped (exit code "
        f"{timeout_exit}). Standard input is closed: do not ask for input. Print what you need to see; "
        "you will get the output and the exit code back.",
        "Write complete programs, not fragments to fill in; if a block fails, read the error and send a "
        "corrected block.",
    ]
    return "\n\n".join([*lines, functions] if functions else lines)
