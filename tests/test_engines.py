"""The Docker executor against other engines: Podman, this engine reached over SSH, and
Docker-out-of-Docker (ccexec inside a container, its blocks in sibling containers).

scripts/test-engine.sh --podman --sshd provides all of them (scripts/test passes both flags).
A missing part skips these tests, except with CI=true or --require-docker, where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ccexec import CodeBlock, DockerCommandLineCodeExecutor

from .conftest import (
    PROCESS_COUNT,
    TEST_IMAGE,
    TEST_PREFIX,
    Engine,
    machine_lock,
    orphan_label_args,
    unavailable,
)

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parent.parent
#: The docker context scripts/test-engine.sh --sshd creates: this host's engine over its test sshd.
SSH_CONTEXT = "ccexec-test-ssh"
#: A block that would write a marker 3 s after it starts, unless its deadline killed it first.
LATE_MARKER = "echo started; (sleep 3; touch late-marker) & sleep 30"


def cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command from the checkout's root (so `-m ccexec` is this ccexec); never raises for its status."""
    return subprocess.run(argv, capture_output=True, encoding="utf-8", timeout=timeout, cwd=ROOT, check=False)


def state(client: str, name: str) -> str:
    """`running`, `exited`... or `gone`."""
    return Engine(client, TEST_IMAGE).state(name)


def wait_state(client: str, name: str, wanted: str, within: float) -> str:
    """Poll the container's state until it is ``wanted`` or ``within`` seconds passed."""
    return Engine(client, TEST_IMAGE).wait_state(name, wanted, within)


def unique_name(kind: str) -> str:
    """A container name the suite's leak checks cover."""
    return f"{TEST_PREFIX}{kind}-{os.urandom(4).hex()}"


# -- Podman ------------------------------------------------------------------------------------


def podman(image: str, work_dir: Path, **kwargs: Any) -> DockerCommandLineCodeExecutor:
    """A podman executor whose container name marks it as the tests'."""
    kwargs.setdefault("timeout", 10)
    return DockerCommandLineCodeExecutor(image, unique_name("podman"), docker="podman", work_dir=work_dir, **kwargs)


@pytest.mark.parametrize("qualified", [False, True], ids=["short-name", "localhost-name"])
def test_podman_two_blocks(podman_engine: str, tmp_path: Path, qualified: bool) -> None:
    """Podman runs two blocks in order, under the short image name and podman's localhost/ one."""
    image = f"localhost/{podman_engine}" if qualified else podman_engine
    with podman(image, tmp_path) as executor:
        result = executor.execute_code_blocks([CodeBlock("print('one')", "python"), CodeBlock("echo two; pwd", "sh")])
    assert (result.exit_code, result.output) == (0, "one\ntwo\n/workspace\n")
    assert result.code_file is not None
    assert Path(result.code_file).parent == tmp_path


@pytest.mark.engine_gc
def test_podman_labels_and_gc_removes_only_orphans(podman_engine: str, tmp_path: Path) -> None:
    """Podman containers carry ccexec's labels; `ccexec gc --docker podman` removes an orphan, not a live one."""
    orphan = unique_name("podman-orphan")
    keepalive = "exec sleep 600"  # PID 1 without a TERM handler: only SIGKILL ends it
    label_args = orphan_label_args()
    created = cli("podman", "run", "-d", "--name", orphan, *label_args, podman_engine, "sh", "-c", keepalive)
    assert created.returncode == 0, created.stderr
    try:
        with podman(podman_engine, tmp_path) as live:
            template = '{{index .Config.Labels "org.ccexec"}} {{index .Config.Labels "org.ccexec.owner-pid"}}'
            inspected = cli("podman", "inspect", "--format", template, live.container_name)
            assert inspected.stdout.split() == ["1", str(os.getpid())]
            started = time.monotonic()
            gc = cli(sys.executable, "-m", "ccexec", "gc", "--docker", "podman")
            assert gc.returncode == 0, gc.stderr
            assert time.monotonic() - started < 5  # no 10 s grace period (rm --time 0)
            assert orphan in gc.stdout
            assert live.container_name not in gc.stdout
            assert state("podman", live.container_name) == "running"
            assert live.execute_code_blocks([CodeBlock("print('alive')", "python")]).output == "alive\n"
        assert wait_state("podman", orphan, "gone", 5) == "gone"
    finally:
        cli("podman", "rm", "--force", "--time", "0", orphan)


# -- a remote engine over SSH ------------------------------------------------------------------


@pytest.fixture(scope="session")
def ssh_endpoint(request: pytest.FixtureRequest, docker_engine: str) -> str:
    """`ssh://root@127.0.0.1:PORT`, this engine behind the test sshd; skip (or fail in CI) without it."""
    out = cli("docker", "context", "inspect", "--format", "{{.Endpoints.docker.Host}}", SSH_CONTEXT)
    endpoint = out.stdout.strip()
    if out.returncode != 0 or not endpoint.startswith("ssh://"):
        unavailable(request, f"no docker context {SSH_CONTEXT} over ssh (run scripts/test-engine.sh --sshd)")
    with machine_lock("engine", exclusive=False):  # session fixtures run before a test takes its lock
        reached = cli("docker", "--context", SSH_CONTEXT, "image", "inspect", "--format", "{{.Id}}", docker_engine)
    if reached.returncode != 0:
        unavailable(request, f"the engine over {endpoint} did not answer: {reached.stderr.strip()[:300]}")
    return endpoint


@pytest.fixture
def clean_engine_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No engine selection inherited from the environment."""
    for variable in ("DOCKER_HOST", "DOCKER_CONTEXT", "CONTAINER_HOST"):
        monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def check_remote_executor(executor: DockerCommandLineCodeExecutor, work_dir: Path) -> None:
    """The no-mount mode at work: files live in the container, they carry over, the deadline holds."""
    assert executor.mounts_work_dir is False
    shared = "# filename: lib/shared.py\nVALUE = 42\nif __name__ == '__main__':\n    print('wrote lib/shared.py')\n"
    result = executor.execute_code_blocks(
        [CodeBlock(shared, "python"), CodeBlock("from lib.shared import VALUE\nprint(VALUE * 2)", "python")]
    )
    assert (result.exit_code, result.output) == (0, "wrote lib/shared.py\n84\n")
    assert result.blocks[0].code_file == "/workspace/lib/shared.py"
    assert (result.blocks[1].code_file or "").startswith("/workspace/tmp_code_")
    assert executor.execute_code_blocks([CodeBlock("cat lib/shared.py", "sh")]).output == shared
    assert list(work_dir.iterdir()) == []  # nothing came to this side
    start = time.monotonic()
    timed_out = executor.execute_code_blocks([CodeBlock(LATE_MARKER, "sh")])
    assert (timed_out.exit_code, timed_out.timed_out) == (124, True)
    assert timed_out.output.startswith("started\n")
    assert time.monotonic() - start < 4
    time.sleep(max(0.0, start + 3.5 - time.monotonic()))
    probe = executor.execute_code_blocks([CodeBlock("test -e late-marker && echo written || echo absent", "sh")])
    assert probe.output == "absent\n"
    assert executor.execute_code_blocks([CodeBlock(PROCESS_COUNT, "python")]).output == "0\n"


def test_docker_host_ssh_picks_no_mount_mode(
    ssh_endpoint: str, clean_engine_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """DOCKER_HOST=ssh://... : the executor sends code over the CLI by itself; blocks, files and timeouts work."""
    clean_engine_env.setenv("DOCKER_HOST", ssh_endpoint)
    executor = DockerCommandLineCodeExecutor(TEST_IMAGE, unique_name("ssh"), timeout=2, work_dir=tmp_path)
    with executor:
        assert executor.channel == "client"  # a remote engine: no socket of ours can reach it
        check_remote_executor(executor, tmp_path)
    assert wait_state("docker", executor.container_name, "gone", 5) == "gone"


def test_docker_context_ssh_picks_no_mount_mode(
    ssh_endpoint: str, clean_engine_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """docker=["docker", "--context", NAME] with an ssh:// context: no mount chosen by itself; blocks work."""
    docker = ["docker", "--context", SSH_CONTEXT]
    executor = DockerCommandLineCodeExecutor(
        TEST_IMAGE, unique_name("ctx"), timeout=2, work_dir=tmp_path, docker=docker
    )
    with executor:
        check_remote_executor(executor, tmp_path)
    assert wait_state("docker", executor.container_name, "gone", 5) == "gone"


def test_context_detection_forms(ssh_endpoint: str, clean_engine_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An ssh context is seen as remote as --context=NAME, as DOCKER_CONTEXT and after `docker context use`."""

    def mounts(**kwargs: Any) -> bool:
        return DockerCommandLineCodeExecutor(TEST_IMAGE, work_dir=tmp_path, **kwargs).mounts_work_dir

    assert mounts(docker=f"docker --context={SSH_CONTEXT}") is False
    assert mounts(docker="docker --context=default") is True
    assert mounts() is True
    clean_engine_env.setenv("DOCKER_CONTEXT", SSH_CONTEXT)
    assert mounts() is False
    clean_engine_env.delenv("DOCKER_CONTEXT")
    config = tmp_path / "docker-config"  # `docker context use` changes the current context in config.json
    clean_engine_env.setenv("DOCKER_CONFIG", str(config))
    created = cli("docker", "context", "create", SSH_CONTEXT, "--docker", f"host={ssh_endpoint}")
    assert created.returncode == 0, created.stderr
    assert cli("docker", "context", "use", SSH_CONTEXT).returncode == 0
    assert mounts() is False
    assert mounts(mount_work_dir=True) is True


def test_ssh_engine_with_forced_mount(ssh_endpoint: str, clean_engine_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """mount_work_dir=True overrides the detection (this "remote" engine shares our disk): files land here."""
    clean_engine_env.setenv("DOCKER_HOST", ssh_endpoint)
    executor = DockerCommandLineCodeExecutor(
        TEST_IMAGE, unique_name("ssh-mount"), timeout=5, work_dir=tmp_path, mount_work_dir=True
    )
    with executor:
        assert executor.mounts_work_dir is True
        assert executor.channel == "client"
        result = executor.execute_code_blocks([CodeBlock("# filename: here.py\nprint('mounted')", "python")])
    assert (result.exit_code, result.output, result.code_file) == (0, "mounted\n", str(tmp_path / "here.py"))
    assert (tmp_path / "here.py").exists()


# -- Docker-out-of-Docker ----------------------------------------------------------------------

#: Runs inside the outer container: ccexec with the host's engine, its work dir a host folder.
DOOD_SCRIPT = """
import json, os, socket, sys
from ccexec import CodeBlock, DockerCommandLineCodeExecutor

image, name, host_dir = sys.argv[1:4]
probe = "# filename: out/probe.py\\nimport socket\\nopen('from-sibling.txt', 'w').write(socket.gethostname())\\n"
with DockerCommandLineCodeExecutor(image, name, work_dir="/app/work", bind_dir=host_dir, timeout=20) as ex:
    result = ex.execute_code_blocks([CodeBlock(probe + "print(socket.gethostname())", "python")])
    report = {
        "mounts": ex.mounts_work_dir,
        "channel": ex.channel,
        "exit_code": result.exit_code,
        "output": result.output,
        "code_file": result.code_file,
        "seen_inside": open("/app/work/from-sibling.txt").read(),
        "outer_hostname": socket.gethostname(),
    }
print(json.dumps(report))
"""


def dood_clients() -> list[str]:
    """The docker clients to copy into the outer container: Debian's and the one first in PATH."""
    found = {os.path.realpath(path) for path in ("/usr/bin/docker", shutil.which("docker")) if path}
    return sorted(path for path in found if os.path.exists(path)) or ["/usr/bin/docker"]


@pytest.mark.parametrize("client", dood_clients())
def test_docker_out_of_docker(docker_engine: str, request: pytest.FixtureRequest, tmp_path: Path, client: str) -> None:
    """ccexec in a container with the host's socket runs blocks in siblings; bind_dir makes their files shared."""
    # bind_dir is the host path of the inner work dir: a file a block writes appears on the host and inside.
    if not os.path.exists(client):
        unavailable(request, f"no docker client at {client} to copy into the container")
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        unavailable(request, f"Docker-out-of-Docker needs a local socket, DOCKER_HOST is {host}")
    socket_path = host[len("unix://") :]
    work = tmp_path / "work"
    work.mkdir()
    outer, sibling = unique_name("dood-outer"), unique_name("dood-sibling")
    argv = [
        "docker", "run", "--rm", "--name", outer,
        "--volume", f"{socket_path}:/var/run/docker.sock",
        "--volume", f"{client}:/usr/local/bin/docker:ro",
        "--volume", f"{ROOT / 'ccexec'}:/opt/ccexec/ccexec:ro",
        "--env", "PYTHONPATH=/opt/ccexec",
        "--volume", f"{work}:/app/work",
        "--workdir", "/app",
        docker_engine, "python3", "-c", DOOD_SCRIPT, docker_engine, sibling, str(work),
    ]  # fmt: skip
    try:
        done = cli(*argv, timeout=120)
    finally:
        cli("docker", "rm", "--force", outer)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    sibling_hostname = report["output"].strip()
    assert report["mounts"] is True
    assert report["channel"] == "client"  # bind_dir: the engine sees other paths than ours
    assert report["exit_code"] == 0
    assert report["code_file"] == "/app/work/out/probe.py"
    assert sibling_hostname
    assert sibling_hostname != report["outer_hostname"]  # a sibling, not the outer container
    assert (work / "from-sibling.txt").read_text(encoding="utf-8") == sibling_hostname
    assert report["seen_inside"] == sibling_hostname
    assert (work / "out" / "probe.py").exists()
    assert wait_state("docker", sibling, "gone", 5) == "gone"
    assert wait_state("docker", outer, "gone", 5) == "gone"
