"""Development sessions: ``nox`` runs lint, typecheck, tests and package."""

from __future__ import annotations

import glob
import json
import os
import sys
import tarfile
import zipfile
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PYPROJECT = nox.project.load_toml("pyproject.toml")

#: Every Python ccexec claims (pyproject's classifiers, 3.9 to 3.13).
CLAIMED_PYTHONS = nox.project.python_versions(PYPROJECT)
#: The claimed Pythons besides the one running nox, whose `tests` session runs the whole suite.
OTHER_PYTHONS = [version for version in CLAIMED_PYTHONS if version != "{}.{}".format(*sys.version_info)]
#: The oldest and the newest of them run by default; the middle ones on request (`nox -s versions`):
#: each costs as much as one end (see the versions session), and the ends bracket what changed.
DEFAULT_PYTHONS = sorted({OTHER_PYTHONS[0], OTHER_PYTHONS[-1]}, key=CLAIMED_PYTHONS.index)

nox.options.sessions = [
    "lint",
    "typecheck",
    "tests",
    "attacks",
    *(f"versions-{version}" for version in DEFAULT_PYTHONS),
    "package",
    "integrations",
    "mcp",
    "peers",  # after the others: AutoGen's own test files, against the adapters
]
nox.options.reuse_existing_virtualenvs = True
nox.options.error_on_missing_interpreters = True
nox.options.download_python = "never"  # a missing interpreter is an error here, not a download

# nox finds pythonX.Y on PATH. pyenv's shims answer only for the versions pyenv has selected, and
# look further down PATH for the others: put the bin of every pyenv-installed claimed version there.
_PYENV_BINS = [
    path
    for version in CLAIMED_PYTHONS
    for path in sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin")))[-1:]
]
os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", os.defpath), *_PYENV_BINS])


def _group(name: str) -> list[str]:
    return list(PYPROJECT["dependency-groups"][name])


#: pytest-xdist: two workers, each test to whichever is free (tests that must not overlap take locks,
#: see tests/conftest.py). `-- -n 0` in posargs runs serially, for debugging.
XDIST = ["-n", "2", "--dist", "load"]


@nox.session
def tests(session: nox.Session) -> None:
    """Run the test suite on two xdist workers (Docker tests fail instead of skipping when CI=true)."""
    session.install(*_group("test"))
    session.run(
        "pytest",
        *XDIST,
        "--ignore=tests/test_attacks.py",  # the attacks session runs them, one at a time
        "--ignore=tests/test_mcp_sdk.py",  # the mcp session runs these two, with the SDK installed
        "--ignore=tests/test_mcp_framework.py",
        *(session.posargs or ["-q"]),
        env={"PYTHONWARNDEFAULTENCODING": "1", "PYTHONDEVMODE": "1"},
    )


@nox.session
def attacks(session: nox.Session) -> None:
    """The attacker suite (tests/test_attacks.py), serially: its blocks race the pid counter and
    the clock, and share the machine with nothing else then."""
    session.install(*_group("test"))
    env = {"PYTHONWARNDEFAULTENCODING": "1", "PYTHONDEVMODE": "1"}
    session.run("pytest", "tests/test_attacks.py", *(session.posargs or ["-q"]), env=env)
    # Again with every python block forked from a fork server (exec mode has none).
    env["CCEXEC_ATTACK_FORK_SERVER"] = "1"
    session.run("pytest", "tests/test_attacks.py", "-k", "not exec", *(session.posargs or ["-q"]), env=env)


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
    shipped = (
        "_supervisor.py",
        "_protocol.py",
        "_tree.py",
        "_workdir.py",
        "_inotify.py",
        "_scrubber.py",
        "_forkserver.py",
        "_listing.py",
        "backends/docker.py",
        "backends/bwrap.py",
        "py.typed",
    )
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


#: autogen-ext's source distribution ships its executor tests; these run against ccexec's adapters.
AUTOGEN_PEER_FILES = [
    "code_executors/test_commandline_code_executor.py",
    "code_executors/test_docker_commandline_code_executor.py",
    "code_executors/test_user_defined_functions.py",
]
#: Tests where ccexec differs from the framework on purpose ("file::test" -> why); strict xfail.
AUTOGEN_EXPECTED_FAILURES = {
    "test_commandline_code_executor.py::test_local_commandline_code_executor_restart": (
        "expects the warning that restart() takes no action; ccexec's restart kills running code and starts afresh"
    ),
    "test_commandline_code_executor.py::test_cleanup_temp_files_oserror": (
        "mocks pathlib.Path.unlink in the test process; ccexec deletes code files in its supervisor process"
    ),
}
AG2_PEER_FILES = ["coding/test_commandline_code_executor.py", "coding/test_user_defined_functions.py"]
AG2_EXPECTED_FAILURES = {
    "test_commandline_code_executor.py::test_local_commandline_code_executor_restart": (
        "expects the warning that restart() takes no action; ccexec's restart kills running code and starts afresh"
    ),
    "test_commandline_code_executor.py::test_create_local": (
        "AG2's factory builds AG2's own executor from the string 'commandline-local'; ccexec does not patch AG2 "
        "(pass the instance: code_execution_config={'executor': LocalCommandLineCodeExecutor()})"
    ),
}
#: Tests that need more than this machine may offer ("file::test[params]" -> what); non-strict xfail.
AG2_ENVIRONMENT_FAILURES = {
    f"test_commandline_code_executor.py::test_silent_pip_install[{shell}-DockerCommandLineCodeExecutor]": (
        "pip-installs matplotlib inside the container: needs the package index there (not offline)"
    )
    for shell in ("bash", "sh", "shell")
}


@nox.session
def peers(session: nox.Session) -> None:
    """The frameworks' own executor test files, unmodified, against ccexec's adapters.

    AutoGen's come from autogen-ext's source distribution on the package index. AG2's source
    distribution ships no tests: pass the ``test`` directory of an AG2 checkout at the tag of
    the pinned version, ``nox -s peers -- --ag2 PATH/ag2/test``; without it only AutoGen's run.
    """
    args = list(session.posargs)
    ag2_tests = None
    if "--ag2" in args:
        at = args.index("--ag2")
        ag2_tests = Path(args[at + 1]).resolve()
        del args[at : at + 2]
    session.install(*_group("test"), *_group("peers"), str(ROOT))
    tmp = Path(session.create_tmp()).resolve()  # absolute: the tests run from another directory
    sdist_dir = tmp / "sdist"
    autogen_ext = next(r for r in _group("peers") if r.startswith("autogen-ext"))
    version = autogen_ext.split("==")[1]
    session.run(
        "python", "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
        "--dest", str(sdist_dir), f"autogen-ext=={version}",
    )  # fmt: skip
    (sdist,) = sdist_dir.glob("autogen_ext-*.tar.gz")
    tests_dir = _extract_tests(sdist, tmp / "autogen", f"autogen_ext-{version}/")
    _run_peer_tests(
        session, "autogen", rootdir=tests_dir, files=AUTOGEN_PEER_FILES, expected_failures=AUTOGEN_EXPECTED_FAILURES,
        args=args,
    )  # fmt: skip
    if ag2_tests is None:
        session.log("AG2's test files were not given (nox -s peers -- --ag2 PATH/ag2/test): only AutoGen's ran")
        return
    _run_peer_tests(
        session, "ag2", rootdir=ag2_tests.parent, files=AG2_PEER_FILES, expected_failures=AG2_EXPECTED_FAILURES,
        environment_failures=AG2_ENVIRONMENT_FAILURES, args=args, under="test/",
    )  # fmt: skip


def _run_peer_tests(
    session: nox.Session,
    framework: str,
    *,
    rootdir: Path,
    files: list[str],
    expected_failures: dict[str, str],
    environment_failures: dict[str, str] | None = None,
    args: list[str],
    under: str = "tests/",
) -> None:
    """pytest on a framework's test files with our plugin (tests/peers/ccexec_peers.py) rebinding them."""
    # asyncio_mode=auto: the frameworks' own pytest configuration (some async tests carry no marker).
    options = ["-p", "ccexec_peers", "-p", "no:cacheprovider", "-o", "addopts=", "-o", "asyncio_mode=auto"]
    env = {
        "PYTHONPATH": str(ROOT / "tests" / "peers"),
        "CCEXEC_PEERS_FRAMEWORK": framework,
        "CCEXEC_PEERS_EXPECTED_FAILURES": json.dumps(expected_failures),
        "CCEXEC_PEERS_ENVIRONMENT_FAILURES": json.dumps(environment_failures or {}),
    }
    paths = [str(rootdir / under / name) for name in files]
    session.chdir(rootdir)  # some tests run code with work_dir="." and keep its files: not in our checkout
    session.run("pytest", *options, "--rootdir", str(rootdir), *(args or ["-q", "-rxX"]), *paths, env=env)


def _extract_tests(sdist: Path, dest: Path, prefix: str) -> Path:
    """Extract the ``tests/`` tree of a source distribution (below ``prefix``) into ``dest``."""
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(prefix + "tests/") and m.isfile()]
        for member in members:
            target = dest / member.name[len(prefix) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            assert source is not None
            target.write_bytes(source.read())
    return dest


#: The official MCP SDK's releases whose stdio client drives `ccexec mcp`: the last 1.x and the current 2.x.
MCP_SDKS = ["1.30.0", "2.3.0"]


@nox.session
@nox.parametrize("sdk", MCP_SDKS)
def mcp(session: nox.Session, sdk: str) -> None:
    """`ccexec mcp` driven by the MCP SDK's stdio client (and an agent framework's); missing packages fail."""
    session.install(*_group("test"), f"mcp=={sdk}")
    files, env = ["tests/test_mcp_sdk.py"], {"CCEXEC_REQUIRE_MCP": "1", "PYTHONWARNDEFAULTENCODING": "1"}
    if sdk == MCP_SDKS[-1]:  # the framework's client is built on the current SDK
        session.install(*_group("mcp-framework"))
        files.append("tests/test_mcp_framework.py")
        env["CCEXEC_REQUIRE_FRAMEWORK"] = "1"
    session.run("pytest", *XDIST, *files, *(session.posargs or ["-q"]), env=env)


#: The tests that need no container engine: they prove the local executor and the package.
LOCAL_TESTS = [
    "tests/test_local.py",
    "tests/test_fork_server.py",  # its differential cases and the stdlib corpus differ by version
    "tests/test_fork_corpus.py",
    "tests/test_cli.py",
    "tests/test_functions.py",
    "tests/test_markdown.py",
    "tests/test_units.py",
    "tests/test_venv.py",
    "tests/test_vendoring.py",
    "tests/test_packaging.py",
    "tests/test_protocol.py",
    "tests/test_mcp.py",
]


@nox.session(python=OTHER_PYTHONS)
def versions(session: nox.Session) -> None:
    """The engine-free tests on another claimed Python, in its own venv."""
    session.install(*_group("test"))
    session.run(
        "pytest", *XDIST, "-q", "-p", "no:cacheprovider", *LOCAL_TESTS, *session.posargs,
        env={"PYTHONWARNDEFAULTENCODING": "1"},
    )  # fmt: skip
