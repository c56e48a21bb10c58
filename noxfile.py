"""Development sessions: ``nox`` runs lint, typecheck, tests and package."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "package"]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml("pyproject.toml")


def _group(name: str) -> list[str]:
    return list(PYPROJECT["dependency-groups"][name])


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite (Docker tests fail instead of skipping when CI=true)."""
    session.install(*_group("test"))
    session.run(
        "pytest",
        *(session.posargs or ["-q"]),
        env={"PYTHONWARNDEFAULTENCODING": "1", "PYTHONDEVMODE": "1"},
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and format; vermin proves the package runs on the oldest Python claimed."""
    session.install(*_group("lint"))
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("vermin", "--target=3.9-", "--no-tips", "--violations", "--eval-annotations", "ccexec")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over the package, the tests and this file."""
    session.install(*_group("typecheck"), *_group("test"))
    session.run("mypy", "ccexec", "tests", "noxfile.py")


@nox.session
def package(session: nox.Session) -> None:
    """Build the wheel; assert it declares no dependencies and ships py.typed."""
    session.install("build")
    dist = Path(session.create_tmp()) / "dist"
    session.run("python", "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT))
    (wheel,) = dist.glob("ccexec-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    if "ccexec/py.typed" not in names:
        session.error("the wheel does not ship ccexec/py.typed")
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    if requires:
        session.error(f"the wheel declares runtime dependencies: {requires}")
    session.log(f"{wheel.name}: {len(names)} files, no dependencies, py.typed shipped")
    for name in os.listdir(dist):
        (dist / name).unlink()
