"""What both framework adapters need: their arguments as given, and their function objects as ccexec's."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, Callable, Sequence

from ccexec import functions as ccexec_functions


def given_arguments(target: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments a caller passed to ``target``, by parameter name (a TypeError when they do not fit)."""
    return dict(inspect.signature(target).bind(*args, **kwargs).arguments)


def is_current_dir(work_dir: Any) -> bool:
    """Whether a work_dir argument names the current directory the way the frameworks deprecate (``"."``)."""
    return work_dir is not None and Path(work_dir) == Path(".")


def convert_functions(functions: Sequence[Any]) -> list[Any]:
    """Framework function objects as ccexec's, so their packages are installed and imports written.

    AutoGen's and AG2's ``FunctionWithRequirements`` (wrapping a callable or, from
    ``from_str``, source text) carry ``func``, ``python_packages`` and ``global_imports``;
    their ``Alias`` and ``ImportFromModule`` mirror ccexec's. Plain callables pass through.
    """
    return [_convert_function(function) for function in functions]


def _convert_function(function: Any) -> Any:
    if isinstance(function, (ccexec_functions.FunctionWithRequirements, ccexec_functions.FunctionWithRequirementsStr)):
        return function
    if not (hasattr(function, "python_packages") and hasattr(function, "global_imports") and hasattr(function, "func")):
        return function
    packages = tuple(function.python_packages or ())
    imports = tuple(_convert_import(item) for item in function.global_imports or ())
    if isinstance(function.func, str):
        return ccexec_functions.FunctionWithRequirementsStr(function.func, packages, imports)
    return ccexec_functions.FunctionWithRequirements.from_callable(function.func, packages, imports)


def _convert_import(item: Any) -> ccexec_functions.Import:
    if isinstance(item, (str, ccexec_functions.Alias, ccexec_functions.ImportFromModule)):
        return item
    if hasattr(item, "module") and hasattr(item, "imports"):
        names = [
            name if isinstance(name, str) else ccexec_functions.Alias(name.name, name.alias) for name in item.imports
        ]
        return ccexec_functions.ImportFromModule(item.module, names)
    if hasattr(item, "name") and hasattr(item, "alias"):
        return ccexec_functions.Alias(item.name, item.alias)
    raise TypeError(f"cannot read {item!r} as an import: expected a str, an Alias or an ImportFromModule")
