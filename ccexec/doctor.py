"""``python -m ccexec doctor``: what the configured container engine (or the sandbox) can and cannot do here."""

from __future__ import annotations

import os
import tempfile

from .backends.docker_cli import DockerCLI
from .errors import CcexecError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from typing import Callable, Sequence, Union

    ClientCommand = Union[str, Sequence[str]]


class Check:
    """One line of the report: what was checked, what was found, and advice when it failed."""

    def __init__(self, name: str, ok: bool, found: str, advice: str = "") -> None:
        self.name, self.ok, self.found, self.advice = name, ok, found, advice

    def render(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        line = f"[{mark}] {self.name}: {self.found}"
        return line + (f"\n       -> {self.advice}" if not self.ok and self.advice else "")


def diagnose(docker: ClientCommand = "docker", image: str = "python:3-slim") -> list[Check]:
    """Run the checks in order; later checks are skipped when an earlier one makes them moot."""
    try:
        cli = DockerCLI(docker)
    except CcexecError as exc:
        return [Check("client", False, str(exc), "install the client or pass --docker PATH")]
    checks = [_client(cli)]
    server = _server(cli)
    checks.append(server)
    if not server.ok:
        return checks
    checks.append(_rootless(cli))
    present = _image(cli, image)
    checks.append(present)
    if present.ok:
        checks.append(_bind_mount(cli, image))
    return checks


def _run(cli: DockerCLI, *args: str, deadline: float = 30.0) -> tuple[bool, str]:
    try:
        done = cli.run(*args, deadline=deadline, check=False)
    except CcexecError as exc:
        return False, str(exc)
    text = (done.stdout if done.returncode == 0 else done.stderr).decode("utf-8", "replace").strip()
    return done.returncode == 0, text


def _client(cli: DockerCLI) -> Check:
    ok, version = _run(cli, "--version")
    return Check("client", ok, f"{cli.argv[0]} ({version})" if ok else version, "check the client binary runs")


def _server(cli: DockerCLI) -> Check:
    ok, found = _run(cli, *cli.server_version_args())
    target = cli.target()
    if ok:
        return Check("engine", True, f"{found} via {target}")
    advice = (
        "start the engine (e.g. `sudo systemctl start docker`, or scripts/test-engine.sh here), or point "
        "DOCKER_HOST / --context at a running one"
    )
    if "permission denied" in found.lower():
        advice = "add this user to the 'docker' group (then log in again), or use rootless Docker or Podman"
    return Check("engine", False, f"not reachable via {target}: {found.splitlines()[-1] if found else ''}", advice)


def _rootless(cli: DockerCLI) -> Check:
    ok, found = _run(cli, *cli.rootless_args())
    rootless = found == "true" if cli.is_podman else "rootless" in found
    mode = "rootless" if rootless else "rootful (containers' root maps to the host's root)"
    return Check("rootless", ok, mode if ok else found)


def _image(cli: DockerCLI, image: str) -> Check:
    ok, found = _run(cli, *cli.image_id_args(image))
    if ok:
        return Check("image", True, f"{image} present ({found[:19]})")
    return Check(
        "image",
        False,
        f"{image} not present",
        f"`{cli.name} pull {image}`, or on a host without a registry `{cli.name} load -i image.tar` / "
        f"`{cli.name} import`; or pass --image naming one `{cli.name} images` lists",
    )


def _bind_mount(cli: DockerCLI, image: str) -> Check:
    """Write a probe file here and read it from a container through a bind mount."""
    with tempfile.TemporaryDirectory(prefix="ccexec-doctor-") as folder:
        token = os.urandom(8).hex()
        with open(os.path.join(folder, "probe"), "w", encoding="utf-8") as handle:
            handle.write(token)
        os.chmod(folder, 0o755)
        ok, found = _run(cli, *cli.mount_probe_args(folder, image), deadline=120.0)
    if ok and found == token:
        return Check("bind mounts", True, "the engine sees this host's paths: the work dir will be mounted")
    return Check(
        "bind mounts",
        False,
        "the engine does not see this host's paths (a remote engine, or a container without the mount)",
        "ccexec then sends code through the CLI (mount_work_dir=False, the default for remote engines); "
        "in Docker-out-of-Docker pass bind_dir= the host path of the work dir",
    )


def diagnose_sandbox() -> list[Check]:
    """Check bubblewrap: the binary, user namespaces for this user, and a block run inside a sandbox."""
    import shutil
    import subprocess

    from .backends import bwrap

    path = shutil.which("bwrap")
    if path is None:
        return [Check("bwrap", False, "not on PATH", bwrap.INSTALL_FIX)]
    try:
        version = subprocess.run([path, "--version"], capture_output=True, timeout=10, check=False).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Check("bwrap", False, f"{path} does not run: {exc}", bwrap.INSTALL_FIX)]
    checks = [Check("bwrap", True, f"{path} ({version.decode('utf-8', 'replace').strip()})")]
    who = "root: blocks run as nobody, without a user namespace" if os.geteuid() == 0 else "unprivileged"
    try:
        bwrap.check_available()
    except CcexecError as exc:
        return [*checks, Check("namespaces", False, f"{who}; {getattr(exc, 'cause', exc)}", getattr(exc, "fix", ""))]
    checks.append(Check("namespaces", True, who))
    checks.append(_sandbox_run())
    return checks


def _sandbox_run() -> Check:
    """Run a block in a sandbox: it must see no host process and no network."""
    import warnings

    from .blocks import CodeBlock
    from .local import LocalCommandLineCodeExecutor

    code = "import os, socket\nprint(len([p for p in os.listdir('/proc') if p.isdigit()]), socket.if_nameindex())"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            with LocalCommandLineCodeExecutor(timeout=30, sandbox=True) as executor:
                result = executor.execute_code_blocks([CodeBlock(code, "python")])
    except CcexecError as exc:
        return Check("run", False, str(exc), getattr(exc, "fix", "") or "see the message")
    if result.exit_code != 0:
        return Check("run", False, f"a block failed inside: {result.output.strip()[-300:]}", "report this as a bug")
    return Check("run", True, f"a block ran inside (processes it sees, network interfaces): {result.output.strip()}")


def report_sandbox(write: Callable[[str], object] = print) -> int:
    """Print the sandbox checks; return 0 when all passed, else 1."""
    checks = diagnose_sandbox()
    for check in checks:
        write(check.render())
    return 0 if all(check.ok for check in checks) else 1


def report(docker: ClientCommand, image: str, write: Callable[[str], object] = print) -> int:
    """Print the checks; return 0 when all passed, else 1."""
    checks = diagnose(docker, image)
    for check in checks:
        write(check.render())
    return 0 if all(check.ok for check in checks) else 1
