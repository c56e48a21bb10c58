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
