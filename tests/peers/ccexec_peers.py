"""A pytest plugin that runs a framework's own executor test files against ccexec's adapters.

Loaded with ``-p ccexec_peers`` (``tests/peers`` on PYTHONPATH) by the ``peers`` nox session. Nothing in the test bodies
changes: after collection, each test module's executor names are rebound to ccexec's adapters
(``CCEXEC_PEERS_FRAMEWORK`` = ``autogen`` or ``ag2``), with the default image pointed at the
offline test image; so are the parameters that hold the framework's classes themselves (AG2's
tests parametrize over a ``classes_to_test`` list built at import time).
``CCEXEC_PEERS_EXPECTED_FAILURES`` names the tests where ccexec differs on purpose; they are
marked ``xfail(strict=True)`` with the reason, so a fix there is noticed too.
``CCEXEC_PEERS_ENVIRONMENT_FAILURES`` names tests that need what the machine may lack (a package
index inside the container); ``xfail(strict=False)``: they pass where it is there.
"""

from __future__ import annotations

import functools
import json
import os
from types import ModuleType
from typing import Any

import pytest

#: module attribute -> ``module:attribute`` of the replacement, per framework.
REBINDINGS = {
    "autogen": {
        "LocalCommandLineCodeExecutor": "ccexec.integrations.autogen:LocalCommandLineCodeExecutor",
        "DockerCommandLineCodeExecutor": "ccexec.integrations.autogen:DockerCommandLineCodeExecutor",
    },
    "ag2": {
        "LocalCommandLineCodeExecutor": "ccexec.integrations.ag2:LocalCommandLineCodeExecutor",
        "DockerCommandLineCodeExecutor": "ccexec.integrations.ag2:DockerCommandLineCodeExecutor",
    },
}


def _load(target: str) -> Any:
    module_name, _, name = target.partition(":")
    module = __import__(module_name, fromlist=[name])
    return getattr(module, name)


def _use_default_image(cls: type, image: str) -> None:
    """Make a Docker adapter default to ``image`` (the tests pass none); in place, so that
    ``load_component`` still finds the class it dumped."""
    original = getattr(cls, "__init__")  # noqa: B009 - mypy refuses cls.__init__ on a type

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if not args:
            kwargs.setdefault("image", image)
        original(self, *args, **kwargs)

    setattr(cls, "__init__", __init__)  # noqa: B010


def _replacements(framework: str) -> dict[str, Any]:
    image = os.environ.get("CCEXEC_TEST_IMAGE", "ccexec-test/python:3-slim")
    found = {}
    for name, target in REBINDINGS[framework].items():
        replacement = _load(target)
        if name.startswith("Docker"):
            _use_default_image(replacement, image)
        found[name] = replacement
    return found


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Rebind each collected test module's executor names; mark the expected failures."""
    framework = os.environ.get("CCEXEC_PEERS_FRAMEWORK", "")
    if framework not in REBINDINGS:
        raise pytest.UsageError(f"CCEXEC_PEERS_FRAMEWORK must be one of {sorted(REBINDINGS)}, not {framework!r}")
    replacements = _replacements(framework)
    expected: dict[str, str] = json.loads(os.environ.get("CCEXEC_PEERS_EXPECTED_FAILURES", "{}"))
    environment: dict[str, str] = json.loads(os.environ.get("CCEXEC_PEERS_ENVIRONMENT_FAILURES", "{}"))
    seen: set[int] = set()
    swapped: dict[int, tuple[Any, Any]] = {}  # id(framework class) -> (it, kept alive; our adapter)
    for item in items:
        module = getattr(item, "module", None)
        if isinstance(module, ModuleType) and id(module) not in seen:
            seen.add(id(module))
            for name, replacement in replacements.items():
                if hasattr(module, name):
                    original = getattr(module, name)
                    swapped.setdefault(id(original), (original, replacement))
                    setattr(module, name, replacement)
        _swap_parameters(item, swapped)
        key = f"{item.path.name}::{item.originalname if isinstance(item, pytest.Function) else item.name}"
        if key in expected:
            item.add_marker(pytest.mark.xfail(reason=expected[key], strict=True))
        elif (named := f"{item.path.name}::{item.name}") in environment:  # one parametrization
            item.add_marker(pytest.mark.xfail(reason=environment[named], strict=False))


def _swap_parameters(item: pytest.Item, swapped: dict[int, tuple[Any, Any]]) -> None:
    """Replace a framework class given as a parametrize value (``cls``) by our adapter."""
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return
    for key, value in callspec.params.items():
        if id(value) in swapped:
            callspec.params[key] = swapped[id(value)][1]
