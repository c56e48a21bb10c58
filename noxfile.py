"""Development sessions: ``nox`` runs lint, typecheck, tests and package."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "tests", "versions", "package", "integrations"]
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
    shipped = ("_supervisor.py", "_protocol.py", "_tree.py", "_workdir.py", "backends/docker.py", "py.typed")
    for required in (*(f"ccexec/{name}" for name in shipped), "ccexec/integrations/autogen.py"):
        if required not in names:
            session.error(f"the wheel does not ship {required}")
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    if requires:
        session.error(f"the wheel declares runtime dependencies: {requires}")
    session.log(f"{wheel.name}: {len(names)} files, no dependencies, py.typed shipped")
    for name in os.listdir(dist):
        (dist / name).unlink()


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against AutoGen (needs the engine and test image): writes benchmarks/RESULTS.md."""
    session.install("autogen-ext[docker]==0.7.5")
    session.run("python", "benchmarks/run_all.py", env={"PYTHONPATH": str(ROOT)})


@nox.session
def integrations(session: nox.Session) -> None:
    """The AutoGen and AG2 adapters inside the pinned frameworks; a missing framework fails, not skips."""
    session.install(*_group("test"), *_group("integrations"))
    session.run(
        "pytest",
        "tests/test_integrations.py",
        *(session.posargs or ["-q"]),
        env={"CCEXEC_REQUIRE_FRAMEWORKS": "1", "PYTHONWARNDEFAULTENCODING": "1", "PYTHONDEVMODE": "1"},
    )


#: Every Python that ccexec claims besides the one running nox (pyproject's classifiers).
CLAIMED_PYTHONS = ("3.9", "3.10", "3.12", "3.13")
#: The tests that need no container engine: they prove the local executor and the package.
LOCAL_TESTS = [
    "tests/test_local.py",
    "tests/test_cli.py",
    "tests/test_functions.py",
    "tests/test_markdown.py",
    "tests/test_units.py",
    "tests/test_venv.py",
    "tests/test_vendoring.py",
    "tests/test_packaging.py",
]


def _find_python(version: str) -> str | None:
    """A working interpreter of ``version``: on PATH, pyenv's, or the system's."""
    candidates = [shutil.which(f"python{version}")]
    candidates += sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    candidates.append(f"/usr/bin/python{version}")
    for candidate in candidates:
        if candidate and os.path.exists(candidate):
            probe = subprocess.run([candidate, "--version"], capture_output=True, check=False)
            if probe.returncode == 0:
                return candidate
    return None


@nox.session(python=False)
def versions(session: nox.Session) -> None:
    """The engine-free tests on every other Python claimed (3.9 to 3.13), each in its own venv."""
    for version in CLAIMED_PYTHONS:
        python = _find_python(version)
        if python is None:
            session.error(f"no Python {version} found (PATH, ~/.pyenv/versions, /usr/bin); install one")
        venv = Path(session.cache_dir) / f"py{version}"
        if not (venv / "bin" / "pytest").exists():
            session.run(python, "-m", "venv", "--clear", str(venv), external=True)
            session.run(str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *_group("test"), external=True)
        session.log(f"Python {version}: {python}")
        session.run(
            str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", *LOCAL_TESTS,
            external=True, env={"PYTHONWARNDEFAULTENCODING": "1"},
        )  # fmt: skip
