"""DockerCommandLineCodeExecutor against a real Docker engine and the offline test image."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import ccexec
from ccexec import CodeBlock, DockerCommandLineCodeExecutor
from ccexec.backends.docker import STOP_DEADLINE

from .conftest import (
    HELPERS,
    PROCESS_COUNT,
    TEST_PREFIX,
    Engine,
    orphan_label_args,
    wait_for_file,
)

ROOT = Path(__file__).resolve().parent.parent


def make(image: str, tmp_path: Path | None, **kwargs: Any) -> DockerCommandLineCodeExecutor:
    """An executor whose container name marks it as the tests'."""
    kwargs.setdefault("timeout", 10)
    return DockerCommandLineCodeExecutor(image, f"{TEST_PREFIX}{os.urandom(4).hex()}", work_dir=tmp_path, **kwargs)


@pytest.fixture
def executor(docker_engine: str, tmp_path: Path) -> Iterator[DockerCommandLineCodeExecutor]:
    """A started Docker executor with a tmp_path work dir."""
    with make(docker_engine, tmp_path) as started:
        yield started


DOCKER = Engine("docker", "")
container_state = DOCKER.state
wait_state = DOCKER.wait_state
#: stop() and restart() must not wait out STOP_DEADLINE, the bound for a container that ignores its
#: closed stdin (then removed by force): half of it still says so, with room for a loaded machine.
PROMPT = STOP_DEADLINE / 2


# -- AutoGen's scenarios ----------------------------------------------------------------------------


def test_two_blocks(executor: DockerCommandLineCodeExecutor) -> None:
    """Two python blocks run in order and their output is joined."""
    result = executor.execute_code_blocks([CodeBlock("print('one')", "python"), CodeBlock("print('two')", "python")])
    assert (result.exit_code, result.output) == (0, "one\ntwo\n")
    assert len(result.blocks) == 2


def test_shell_languages(executor: DockerCommandLineCodeExecutor) -> None:
    """sh and bash blocks run in the container, as in the work dir /workspace."""
    result = executor.execute_code_blocks(
        [CodeBlock("pwd; echo $0", "sh"), CodeBlock("echo ${BASH_VERSION%%.*}", "bash")]
    )
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0] == "/workspace"
    assert lines[2].isdigit()


def test_saved_file_equals_code_and_is_on_host(docker_engine: str, tmp_path: Path) -> None:
    """The code file is on the host (work dir mounted) and holds exactly the code."""
    code = "# filename: pkg/saved.py\nprint('saved')\n"
    with make(docker_engine, tmp_path) as executor:
        result = executor.execute_code_blocks([CodeBlock(code, "python")])
    assert result.exit_code == 0
    assert result.code_file == str(tmp_path / "pkg" / "saved.py")
    assert (tmp_path / "pkg" / "saved.py").read_text(encoding="utf-8") == code


def test_timeout_kills_and_marker_is_never_written(engine: Engine, tmp_path: Path) -> None:
    """At the deadline: exit 124, partial output, Timeout line; a late write never happens (each engine)."""
    code = "echo started; (sleep 1.5; touch late-marker) & sleep 30"
    with make(engine.image, tmp_path, timeout=1, docker=engine.client) as executor:
        start = time.monotonic()
        result = executor.execute_code_blocks([CodeBlock(code, "sh")])
        elapsed = time.monotonic() - start
        assert result.exit_code == 124
        assert result.timed_out
        assert result.output.startswith("started\n")
        assert "Timeout" in result.output
        assert elapsed < 3
        time.sleep(1.0)
        assert not (tmp_path / "late-marker").exists()
        leftover = executor.execute_code_blocks([CodeBlock(PROCESS_COUNT, "python")])
        assert leftover.output == "0\n"


def test_timeout_kills_stubborn_tree(docker_engine: str, tmp_path: Path) -> None:
    """TERM-ignoring children, grandchildren and setsid daemons in the container all die."""
    with make(docker_engine, tmp_path, timeout=2) as executor:
        result = executor.execute_code_blocks(
            [CodeBlock((HELPERS / "stubborn_tree.py").read_text(encoding="utf-8"), "python")]
        )
        assert result.exit_code == 124, result.output
        assert len((tmp_path / "pids.txt").read_text(encoding="utf-8").split()) == 5
        assert executor.execute_code_blocks([CodeBlock(PROCESS_COUNT, "python")]).output == "0\n"


def test_async_cancellation_kills_the_block(engine: Engine, tmp_path: Path) -> None:
    """Cancelling the awaiting task stops the block in the container before it propagates (each engine)."""

    # Started, the block waits for `go`, then writes `late`: only a block that outlived its
    # cancellation can write it.
    code = textwrap.dedent(
        """
        import os, pathlib, time
        pathlib.Path("started").touch()
        while not os.path.exists("go"):
            time.sleep(0.02)
        pathlib.Path("late").touch()
        """
    )

    async def main() -> None:
        async with make(engine.image, tmp_path, timeout=30, docker=engine.client) as executor:
            task = asyncio.ensure_future(executor.aexecute_code_blocks([CodeBlock(code, "python")]))
            while not (tmp_path / "started").exists():
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            count = await executor.aexecute_code_blocks([CodeBlock(PROCESS_COUNT, "python")])
            assert count.output == "0\n"
            (tmp_path / "go").touch()
            # A survivor polling every 20 ms would write `late` before this block's Python has started.
            seen = await executor.aexecute_code_blocks([CodeBlock("import os; print(os.path.exists('go'))", "python")])
            assert seen.output == "True\n"
            assert not (tmp_path / "late").exists()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("name", "inside"),
    [("sub/ok.py", True), ("/workspace/abs.py", True), ("../out.py", False), ("/etc/out.py", False)],
)
def test_filename_workspace_check(executor: DockerCommandLineCodeExecutor, name: str, inside: bool) -> None:
    """Names inside /workspace are used; names outside give exit 1 and the workspace message."""
    result = executor.execute_code_blocks(
        [CodeBlock("print('a')", "python"), CodeBlock(f"# filename: {name}\nprint('b')", "python")]
    )
    if inside:
        assert (result.exit_code, result.output) == (0, "a\nb\n")
    else:
        assert result.exit_code == 1
        assert result.output.startswith("a\n")
        assert "Filename is not in the workspace" in result.output


def test_symlink_escape_is_refused(executor: DockerCommandLineCodeExecutor, tmp_path: Path) -> None:
    """A symlink in the work dir pointing out of it is refused by the runner inside the container."""
    (tmp_path / "link").symlink_to("/etc")
    result = executor.execute_code_blocks([CodeBlock("# filename: link/evil.py\nprint(1)", "python")])
    assert result.exit_code == 1
    assert "Filename is not in the workspace" in result.output


def test_unknown_language(executor: DockerCommandLineCodeExecutor) -> None:
    """An unknown language is a result, not an exception."""
    result = executor.execute_code_blocks([CodeBlock("x", "brainfuck")])
    assert (result.exit_code, result.output) == (1, "unknown language brainfuck\n")


def test_wrong_path_error_text(executor: DockerCommandLineCodeExecutor) -> None:
    """Running a file that does not exist reports the interpreter's own error."""
    result = executor.execute_code_blocks([CodeBlock("python3 /workspace/missing.py", "sh")])
    assert result.exit_code == 2
    assert "No such file or directory" in result.output


def test_start_stop_and_context_managers(docker_engine: str, tmp_path: Path) -> None:
    """start() runs a container; stop() ends it without waiting out its deadline, and it is removed."""
    executor = make(docker_engine, tmp_path)
    executor.start()
    assert container_state(executor.container_name) == "running"
    start = time.monotonic()
    executor.stop()
    assert time.monotonic() - start < PROMPT
    assert wait_state(executor.container_name, "gone", 5) == "gone"
    with make(docker_engine, tmp_path) as inside:
        assert container_state(inside.container_name) == "running"
    assert wait_state(inside.container_name, "gone", 5) == "gone"


def test_async_context_manager(docker_engine: str, tmp_path: Path) -> None:
    """async with starts and stops the container."""

    async def main() -> str:
        async with make(docker_engine, tmp_path) as executor:
            result = await executor.aexecute_code_blocks([CodeBlock("print('async')", "python")])
            assert result.output == "async\n"
            return executor.container_name

    name = asyncio.run(main())
    assert wait_state(name, "gone", 5) == "gone"


def test_restart_gives_a_fresh_container(docker_engine: str, tmp_path: Path) -> None:
    """restart() replaces the container (its /tmp is new) without waiting out a deadline, and keeps the work dir."""
    with make(docker_engine, tmp_path) as executor:
        executor.execute_code_blocks([CodeBlock("# filename: keep.txt\nkept", "sh")])
        executor.execute_code_blocks([CodeBlock("touch /tmp/old-container", "sh")])
        start = time.monotonic()
        executor.restart()
        assert time.monotonic() - start < PROMPT
        result = executor.execute_code_blocks([CodeBlock("cat keep.txt; ls /tmp/old-container 2>/dev/null", "sh")])
        assert result.output == "# filename: keep.txt\nkept"


def test_execution_without_start(docker_engine: str, tmp_path: Path) -> None:
    """The first execution starts the container; stop() removes it."""
    executor = make(docker_engine, tmp_path)
    assert executor.execute_code_blocks([CodeBlock("print(7)", "python")]).output == "7\n"
    executor.stop()
    assert wait_state(executor.container_name, "gone", 5) == "gone"


def test_extra_volumes_init_command_extra_hosts(docker_engine: str, tmp_path: Path) -> None:
    """Both volume forms mount, init_command ran once before blocks, extra_hosts resolve."""
    (tmp_path / "data1").mkdir()
    (tmp_path / "data1" / "a.txt").write_text("from dict", encoding="utf-8")
    (tmp_path / "data2").mkdir()
    (tmp_path / "data2" / "b.txt").write_text("from string", encoding="utf-8")
    work = tmp_path / "work"
    code = textwrap.dedent(
        """
        import socket
        print(open('/data1/a.txt').read(), open('/data2/b.txt').read())
        print(open('/workspace/init.txt').read().strip())
        print(socket.gethostbyname('ccexec.test'))
        """
    )
    executor = make(
        docker_engine,
        work,
        extra_volumes={str(tmp_path / "data1"): {"bind": "/data1", "mode": "ro"}},
        run_args=["--volume", f"{tmp_path / 'data2'}:/data2:ro"],
        init_command="echo initialised >> /workspace/init.txt",
        extra_hosts={"ccexec.test": "10.1.2.3"},
    )
    with executor:
        result = executor.execute_code_blocks([CodeBlock(code, "python")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["from dict from string", "initialised", "10.1.2.3"]


def test_extra_volumes_string_form(docker_engine: str, tmp_path: Path) -> None:
    """extra_volumes also takes 'src:dst:mode' strings."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("plain", encoding="utf-8")
    with make(docker_engine, tmp_path / "w", extra_volumes=[f"{tmp_path / 'd'}:/d:ro"]) as executor:
        assert executor.execute_code_blocks([CodeBlock("cat /d/f.txt", "sh")]).output == "plain"


def test_failing_init_command_raises(docker_engine: str, tmp_path: Path) -> None:
    """An init_command that fails makes start() raise with its output; no container stays."""
    executor = make(docker_engine, tmp_path, init_command="echo nope; exit 3")
    with pytest.raises(ccexec.DockerError, match="nope"):
        executor.start()
    assert wait_state(executor.container_name, "gone", 5) == "gone"


@pytest.mark.parametrize("mode", ["runner", "exec"])
def test_delete_tmp_files(docker_engine: str, tmp_path: Path, mode: str) -> None:
    """delete_tmp_files: generated files are gone when the call returns; named ones stay."""
    with make(docker_engine, tmp_path, delete_tmp_files=True, mode=mode) as executor:
        result = executor.execute_code_blocks(
            [CodeBlock("print(1)", "python"), CodeBlock("# filename: named.py\nprint(2)", "python")]
        )
        assert result.exit_code == 0
        assert sorted(p.name for p in tmp_path.iterdir()) == ["named.py"]  # at once, not later


def test_block_replacing_its_own_file_still_gets_its_result(docker_engine: str, tmp_path: Path) -> None:
    """A block that turns its own generated file into a directory: the result comes back, nothing raises."""
    code = "import os, sys; os.remove(sys.argv[0]); os.mkdir(sys.argv[0]); print('swapped')"
    with make(docker_engine, tmp_path, delete_tmp_files=True) as executor:
        result = executor.execute_code_blocks([CodeBlock(code, "python")])
    assert (result.exit_code, result.output) == (0, "swapped\n")


def test_keeps_tmp_files_by_default(executor: DockerCommandLineCodeExecutor) -> None:
    """By default (AutoGen's delete_tmp_files=False) the generated file stays."""
    result = executor.execute_code_blocks([CodeBlock("print(1)", "python")])
    assert result.code_file is not None
    assert Path(result.code_file).read_text(encoding="utf-8") == "print(1)"


# -- output ---------------------------------------------------------------------------------


def test_non_utf8_and_interleaved_output(executor: DockerCommandLineCodeExecutor) -> None:
    """Bad bytes become U+FFFD and stdout/stderr keep their order."""
    code = "import sys\nsys.stdout.buffer.write(b'a\\xff\\n')\nprint('err', file=sys.stderr)\nprint('out')"
    result = executor.execute_code_blocks([CodeBlock(code, "python")])
    assert result.output == "a\ufffd\nerr\nout\n"


def test_output_cap(docker_engine: str, tmp_path: Path) -> None:
    """A block printing 50 MB is cut to the cap with its head and tail."""
    code = "import sys\nfor _ in range(50): sys.stdout.write('y' * 1_000_000)\nprint('END')"
    with make(docker_engine, tmp_path, max_output_bytes=4096) as executor:
        result = executor.execute_code_blocks([CodeBlock(code, "python")])
    assert result.truncated
    assert result.output.endswith("END\n")
    assert len(result.output) < 5000


def test_threads_share_one_executor(executor: DockerCommandLineCodeExecutor) -> None:
    """Eight threads using one executor each get their own output, and their blocks run at the same time."""
    results: dict[int, str] = {}
    # Each block waits until all eight have started: run one after another, the first would time out.
    barrier = textwrap.dedent(
        """
        import os, pathlib, time
        pathlib.Path("ready-{n}").touch()
        while sum(name.startswith("ready-") for name in os.listdir(".")) < 8:
            time.sleep(0.01)
        print({n})
        """
    )

    def work(n: int) -> None:
        results[n] = executor.execute_code_blocks([CodeBlock(barrier.format(n=n), "python")]).output

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == {n: f"{n}\n" for n in range(8)}


# -- modes, errors, lifecycle -------------------------------------------------------------------


def test_no_mount_mode(docker_engine: str, tmp_path: Path) -> None:
    """mount_work_dir=False sends code through the CLI: code_file is in the container."""
    with make(docker_engine, tmp_path, mount_work_dir=False) as executor:
        result = executor.execute_code_blocks([CodeBlock("# filename: x.py\nprint(open('x.py').read())", "python")])
    assert result.exit_code == 0
    assert result.code_file == "/workspace/x.py"
    assert "print(open" in result.output
    assert list(tmp_path.iterdir()) == []


def test_missing_image_error(docker_engine: str, tmp_path: Path) -> None:
    """A missing image that cannot be pulled names the image and says how to provide one."""
    executor = make("ccexec-test/does-not-exist:1", tmp_path)
    with pytest.raises(ccexec.ImageNotFoundError, match="does-not-exist") as caught:
        executor.start()
    assert "docker load" in str(caught.value)


def test_missing_docker_binary(tmp_path: Path) -> None:
    """A client that is not on PATH raises DockerNotFoundError saying how to point docker= elsewhere."""
    with pytest.raises(ccexec.DockerNotFoundError, match="docker="):
        DockerCommandLineCodeExecutor(docker="ccexec-no-such-docker", work_dir=tmp_path)


def test_unreachable_engine_names_docker_host(
    docker_engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bogus DOCKER_HOST gives EngineUnavailableError naming what was tried."""
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/ccexec.sock")
    executor = make(docker_engine, tmp_path)
    with pytest.raises(ccexec.EngineUnavailableError, match=r"DOCKER_HOST=unix:///nonexistent/ccexec\.sock"):
        executor.start()


def test_container_killed_from_outside(docker_engine: str, tmp_path: Path) -> None:
    """A container killed mid-block raises ContainerGoneError; the next call gets a new container."""
    with make(docker_engine, tmp_path, timeout=30) as executor:

        def kill_once_started() -> None:
            try:
                wait_for_file(tmp_path / "started")
            finally:
                subprocess.run(["docker", "kill", executor.container_name], check=False, capture_output=True)

        killer = threading.Thread(target=kill_once_started)
        killer.start()
        code = "import pathlib, time\npathlib.Path('started').write_text('yes', 'ascii')\ntime.sleep(20)"
        with pytest.raises(ccexec.ContainerGoneError, match="next call starts a new container"):
            executor.execute_code_blocks([CodeBlock(code, "python")])
        killer.join()
        assert executor.execute_code_blocks([CodeBlock("print('again')", "python")]).output == "again\n"


def test_labels(executor: DockerCommandLineCodeExecutor) -> None:
    """The container carries ccexec's labels with this process as owner."""
    out = subprocess.run(
        ["docker", "inspect", "--format", '{{index .Config.Labels "org.ccexec.owner-pid"}}', executor.container_name],
        capture_output=True,
        encoding="utf-8",
        check=True,
    )
    assert out.stdout.strip() == str(os.getpid())


def test_sigkill_of_host_process_removes_container(engine: Engine, tmp_path: Path) -> None:
    """A host process SIGKILLed mid-block leaves no container behind within 10 s (each engine)."""
    script = textwrap.dedent(
        f"""
        from ccexec import DockerCommandLineCodeExecutor, CodeBlock
        name = {TEST_PREFIX + "killed-" + os.urandom(3).hex()!r}
        ex = DockerCommandLineCodeExecutor({engine.image!r}, name, docker={engine.client!r}, work_dir={str(tmp_path)!r})
        ex.start()
        print(ex.container_name, flush=True)
        code = "import pathlib, time\\npathlib.Path('started').write_text('yes', 'ascii')\\ntime.sleep(60)"
        ex.execute_code_blocks([CodeBlock(code, "python")])
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, encoding="utf-8", cwd=ROOT)
    assert child.stdout is not None
    try:
        name = child.stdout.readline().strip()
        assert engine.state(name) == "running"
        wait_for_file(tmp_path / "started")  # mid-block
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    start = time.monotonic()
    assert engine.wait_state(name, "gone", 10) == "gone"
    print(f"{engine.client} container gone {time.monotonic() - start:.2f} s after SIGKILL")


@pytest.mark.engine_gc
def test_gc_removes_only_orphans(docker_engine: str, tmp_path: Path) -> None:
    """gc removes a ccexec container whose owner is gone and leaves live ones alone."""
    orphan = f"{TEST_PREFIX}orphan-{os.urandom(3).hex()}"
    subprocess.run(
        [
            "docker",
            "run",
            "-d",
            "--name",
            orphan,
            *orphan_label_args(),
            docker_engine,
            "sleep",
            "60",
        ],
        check=True,
        capture_output=True,
    )
    with make(docker_engine, tmp_path) as live:
        out = subprocess.run(
            [sys.executable, "-m", "ccexec", "gc"], capture_output=True, encoding="utf-8", cwd=ROOT, check=True
        )
        assert orphan in out.stdout
        assert live.container_name not in out.stdout
        assert container_state(live.container_name) == "running"
    assert wait_state(orphan, "gone", 5) == "gone"


# -- exec mode and kept containers ------------------------------------------------------------


def test_exec_mode_runs_blocks_and_kills_on_timeout(docker_engine: str, tmp_path: Path) -> None:
    """mode='exec' (one docker exec per block) gives the same results and kills the block's group."""
    with make(docker_engine, tmp_path, mode="exec", timeout=1) as executor:
        result = executor.execute_code_blocks([CodeBlock("print('a')", "python"), CodeBlock("echo b >&2", "sh")])
        assert (result.exit_code, result.output) == (0, "a\nb\n")
        result = executor.execute_code_blocks([CodeBlock("echo s; (sleep 1.5; touch late) & sleep 30", "sh")])
        assert result.exit_code == 124
        assert result.output.startswith("s\n")
        outside = executor.execute_code_blocks([CodeBlock("# filename: ../x.py\nprint(1)", "python")])
        assert "Filename is not in the workspace" in outside.output
        time.sleep(1.0)
        assert not (tmp_path / "late").exists()


def test_exec_mode_without_mount(docker_engine: str, tmp_path: Path) -> None:
    """mode='exec' without the mount writes files through `docker exec -i`."""
    with make(docker_engine, tmp_path, mode="exec", mount_work_dir=False) as executor:
        result = executor.execute_code_blocks([CodeBlock("# filename: d/x.sh\necho from $0", "sh")])
    assert (result.exit_code, result.output, result.code_file) == (0, "from /workspace/d/x.sh\n", "/workspace/d/x.sh")


@pytest.mark.parametrize("mode", ["runner", "exec"])
def test_stop_container_false_keeps_it_running(docker_engine: str, tmp_path: Path, mode: str) -> None:
    """stop_container=False leaves the container running after stop(), as AutoGen documents."""
    executor = make(docker_engine, tmp_path, stop_container=False, mode=mode, init_command="touch /tmp/init-ran")
    try:
        with executor:
            result = executor.execute_code_blocks([CodeBlock("ls /tmp/init-ran && echo ok", "sh")])
            assert result.output.endswith("ok\n")
        assert container_state(executor.container_name) == "running"
    finally:
        subprocess.run(["docker", "rm", "-f", executor.container_name], capture_output=True, check=False)


def test_auto_remove_false_keeps_stopped_container(docker_engine: str, tmp_path: Path) -> None:
    """auto_remove=False leaves the stopped container for inspection."""
    executor = make(docker_engine, tmp_path, auto_remove=False)
    try:
        with executor:
            executor.execute_code_blocks([CodeBlock("print(1)", "python")])
        assert wait_state(executor.container_name, "exited", 5) == "exited"
    finally:
        subprocess.run(["docker", "rm", "-f", executor.container_name], capture_output=True, check=False)


def test_invalid_mode(tmp_path: Path) -> None:
    """An unknown mode raises ValueError before anything starts."""
    with pytest.raises(ValueError, match="mode"):
        DockerCommandLineCodeExecutor(mode="ssh", work_dir=tmp_path)


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.path.exists("/usr/bin/python3"),
    reason="needs root and a system Python to run a child as an unprivileged user",
)
def test_socket_permission_denied(docker_engine: str) -> None:
    """A user who may not use the engine's socket gets EnginePermissionError saying what to do."""
    # A copy of the package that the unprivileged user can read, wherever the checkout is.
    readable = Path(tempfile.mkdtemp(prefix="ccexec-perm-"))
    shutil.copytree(ROOT / "ccexec", readable / "ccexec")
    for path in [readable, *readable.rglob("*")]:
        path.chmod(0o755)
    script = textwrap.dedent(
        f"""
        import ccexec
        try:
            ccexec.DockerCommandLineCodeExecutor({docker_engine!r}).start()
        except ccexec.EnginePermissionError as exc:
            print("permission:", exc)
        """
    )
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(readable), "HOME": "/tmp"}
    done = subprocess.run(
        ["/usr/bin/python3", "-c", script], user=65534, group=65534, env=env, capture_output=True, encoding="utf-8",
        cwd="/", timeout=60, check=False,
    )  # fmt: skip
    shutil.rmtree(readable)
    assert done.stdout.startswith("permission:"), done.stdout + done.stderr
    assert "docker' group" in done.stdout


# -- user functions in the container ----------------------------------------------------------

PIP_CA = "/ccexec-ca.crt"


def add_two_numbers(a: int, b: int) -> int:
    """Add two numbers together."""
    return a + b


def test_functions_in_container(docker_engine: str, tmp_path: Path) -> None:
    """A plain function is importable in the container; the output is exactly the print."""
    broken = ccexec.FunctionWithRequirements.from_str("def boom(x):\n    return x + 1\n")
    with make(docker_engine, tmp_path, functions=[add_two_numbers, broken]) as executor:
        code = "from functions import add_two_numbers\nprint(add_two_numbers(1, 2))"
        assert executor.execute_code_blocks([CodeBlock(code, "python")]).output == "3\n"
        failing = executor.execute_code_blocks([CodeBlock("from functions import boom\nboom('a')", "python")])
        assert failing.exit_code == 1
        assert "TypeError" in failing.output
        assert "/workspace" in executor.code_writer_system_message()
        assert "pwsh" not in executor.code_writer_system_message()


def test_function_package_installed_in_container(docker_engine: str, tmp_path: Path) -> None:
    """A function's package is pip-installed inside the container, reaching the index through the proxy CA."""
    ca = os.environ.get("SSL_CERT_FILE") or os.environ.get("PIP_CERT")
    func = ccexec.FunctionWithRequirements.from_str(
        "def six_version():\n    return six.__version__\n", python_packages=["six==1.16.0"], global_imports=["six"]
    )
    options: dict[str, Any] = {}
    if ca:
        options = {"extra_volumes": [f"{ca}:{PIP_CA}:ro"], "env": {"PIP_CERT": PIP_CA, "SSL_CERT_FILE": PIP_CA}}
    with make(docker_engine, tmp_path, functions=[func], setup_timeout=180, **options) as executor:
        code = "from functions import six_version\nprint(six_version())"
        result = executor.execute_code_blocks([CodeBlock(code, "python")])
    assert (result.exit_code, result.output) == (0, "1.16.0\n")


def test_missing_import_in_container(docker_engine: str, tmp_path: Path) -> None:
    """A function whose import does not exist in the image fails setup with ValueError."""
    func = ccexec.FunctionWithRequirements.from_str("def f():\n    return 1\n", global_imports=["ccexec_nope"])
    with make(docker_engine, tmp_path, functions=[func]) as executor, pytest.raises(ValueError, match="ccexec_nope"):
        executor.execute_code_blocks([CodeBlock("print(1)", "python")])


@pytest.fixture
def image_without_pip(docker_engine: str) -> Iterator[str]:
    """The test image with pip removed (made here, removed afterwards)."""
    name = f"{TEST_PREFIX}nopip-{os.urandom(3).hex()}"
    image = f"ccexec-test/nopip:{os.urandom(3).hex()}"
    subprocess.run(
        ["docker", "run", "--name", name, docker_engine, "sh", "-c", "rm -rf /usr/lib/python3/dist-packages/pip"],
        check=True,
        capture_output=True,
    )
    subprocess.run(["docker", "commit", name, image], check=True, capture_output=True)
    subprocess.run(["docker", "rm", name], check=True, capture_output=True)
    yield image
    subprocess.run(["docker", "rmi", image], check=False, capture_output=True)


def test_image_without_pip_says_so(image_without_pip: str, tmp_path: Path) -> None:
    """Packages requested in an image without pip give a clear error saying so."""
    func = ccexec.FunctionWithRequirements.from_str("def f():\n    return 1\n", python_packages=["six"])
    executor = make(image_without_pip, tmp_path, functions=[func])
    with executor, pytest.raises(ccexec.FunctionSetupError, match="has no pip"):
        executor.execute_code_blocks([CodeBlock("print(1)", "python")])


# -- hardened preset -----------------------------------------------------------------------------

HARDENED_PROBE = r"""
import os, subprocess
status = dict(line.split(":\t", 1) for line in open("/proc/self/status").read().splitlines() if ":\t" in line)
print("uid", os.getuid())
print("interfaces", sorted(os.listdir("/sys/class/net")))
print("cap_eff", status["CapEff"].strip())
print("no_new_privs", status["NoNewPrivs"].strip())
for path in ("/usr/ccexec-probe", "/tmp/ccexec-probe", "/workspace/probe.txt"):
    try:
        open(path, "w").close()
        print(path, "writable")
    except OSError as exc:
        print(path, exc.strerror)
children = []
try:
    for _ in range(400):
        children.append(subprocess.Popen(["sleep", "5"]))
except OSError:
    pass
print("forks", len(children))
for child in children:
    child.kill()
"""


def test_hardened_defaults_hold(docker_engine: str, tmp_path: Path) -> None:
    """hardened=True: no network, read-only root, writable /tmp, no capabilities, pids limit, non-root files."""
    # Also no new privileges, and the non-root user's files in the work dir are not root's.
    with make(docker_engine, tmp_path, hardened=True, timeout=20) as executor:
        result = executor.execute_code_blocks([CodeBlock(HARDENED_PROBE, "python")])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(" ", 1) for line in result.output.splitlines())
    assert lines["uid"] != "0"
    assert lines["interfaces"] == "['lo']"
    assert lines["cap_eff"] == "0000000000000000"
    assert lines["no_new_privs"] == "1"
    assert lines["/usr/ccexec-probe"] == "Read-only file system"
    assert lines["/tmp/ccexec-probe"] == "writable"
    assert lines["/workspace/probe.txt"] == "writable"
    assert (tmp_path / "probe.txt").stat().st_uid != 0
    assert int(lines["forks"]) < 256


def test_memory_limit_reports_oom(docker_engine: str, tmp_path: Path) -> None:
    """A block allocating far past its memory limit is killed: exit 137 and a line saying why."""
    with make(docker_engine, tmp_path, memory="128m") as executor:
        result = executor.execute_code_blocks(
            [CodeBlock("x = bytearray(1024 * 1024 * 1024)\nprint('survived')", "python")]
        )
        assert result.exit_code == 137
        assert "out of memory" in result.output
        assert executor.execute_code_blocks([CodeBlock("print('still here')", "python")]).output == "still here\n"


def test_chained_blocks_stop_at_first_failure(executor: DockerCommandLineCodeExecutor, tmp_path: Path) -> None:
    """A call's blocks go to the runner at once, yet a block after a failure never runs."""
    blocks = [
        CodeBlock("print('one')", "python"),
        CodeBlock("echo two; exit 4", "sh"),
        CodeBlock("# filename: never.py\nopen('ran', 'w').close()", "python"),
    ]
    result = executor.execute_code_blocks(blocks)
    assert (result.exit_code, result.output) == (4, "one\ntwo\n")
    assert len(result.blocks) == 2
    # The next call's first block does what the third would have done, sent after the third would have
    # started: once it has, the third would have too.
    late = executor.execute_code_blocks(
        [CodeBlock("open('late-ran', 'w').close()\nprint(1)", "python"), CodeBlock("x", "cobol")]
    )
    assert (late.exit_code, late.output) == (1, "1\nunknown language cobol\n")
    assert (tmp_path / "late-ran").exists()
    assert not (tmp_path / "ran").exists()


def test_exec_mode_ends_background_jobs(docker_engine: str, tmp_path: Path) -> None:
    """In exec mode a block's background job neither outlives it nor delays the call; the exit code is the block's."""
    with make(docker_engine, tmp_path, mode="exec") as executor:
        idle = executor.execute_code_blocks([CodeBlock(PROCESS_COUNT, "python")]).output  # the probe's own exec
        # The job ignores SIGTERM and waits for `go`, which comes only after the call returned: a call
        # that waited for it would end at the timeout (exit 124).
        code = "(trap '' TERM; until [ -e go ]; do sleep 0.05; done; touch late) & echo bg; exit 3"
        result = executor.execute_code_blocks([CodeBlock(code, "sh")])
        assert (result.exit_code, result.output, result.timed_out) == (3, "bg\n", False)
        assert executor.execute_code_blocks([CodeBlock(PROCESS_COUNT, "python")]).output == idle
        (tmp_path / "go").touch()
        # A surviving job polling every 50 ms would write `late` before this exec has even started.
        seen = executor.execute_code_blocks([CodeBlock("test -e go && echo go", "sh")])
        assert seen.output == "go\n"
        assert not (tmp_path / "late").exists()


@pytest.mark.parametrize("mode", ["runner", "exec"])
@pytest.mark.parametrize("mount", [True, False])
def test_unwritable_filename_is_a_result(docker_engine: str, tmp_path: Path, mode: str, mount: bool) -> None:
    """A name that is an existing directory gives exit 1 and says it cannot be written, in every mode."""
    with make(docker_engine, tmp_path, mode=mode, mount_work_dir=mount) as executor:
        executor.execute_code_blocks([CodeBlock("mkdir -p adir", "sh")])
        result = executor.execute_code_blocks([CodeBlock("# filename: adir\nprint(1)", "python")])
    assert result.exit_code == 1
    assert "Is a directory" in result.output
    last = result.output.splitlines()[-1]
    assert last.startswith("ccexec: cannot write ")
    assert "adir" in last


@pytest.fixture
def image_without_python(docker_engine: str) -> Iterator[str]:
    """The test image with its Python removed (made here, removed afterwards)."""
    name = f"{TEST_PREFIX}nopy-{os.urandom(3).hex()}"
    image = f"ccexec-test/nopython:{os.urandom(3).hex()}"
    remove = "rm -f /usr/bin/python /usr/bin/python3 /usr/bin/python3.*"
    subprocess.run(
        ["docker", "run", "--name", name, docker_engine, "sh", "-c", remove], check=True, capture_output=True
    )
    subprocess.run(["docker", "commit", name, image], check=True, capture_output=True)
    subprocess.run(["docker", "rm", name], check=True, capture_output=True)
    yield image
    subprocess.run(["docker", "rmi", image], check=False, capture_output=True)


def test_image_without_python(image_without_python: str, tmp_path: Path) -> None:
    """Runner mode says the image lacks Python and points to exec mode, where sh blocks still run."""
    with pytest.raises(ccexec.DockerError, match="mode='exec'"):
        make(image_without_python, tmp_path).start()
    with make(image_without_python, tmp_path, mode="exec") as executor:
        assert executor.execute_code_blocks([CodeBlock("echo sh only", "sh")]).output == "sh only\n"


# -- the socket channel ---------------------------------------------------------------------------------


@pytest.mark.parametrize("hardened", [False, True], ids=["default", "hardened"])
def test_socket_channel_is_used_and_leaves_nothing_to_reach(engine: Engine, tmp_path: Path, hardened: bool) -> None:
    """A local engine: the supervisor talks over the mounted socket, whose folder is empty and read-only by then."""
    with make(engine.image, tmp_path, docker=engine.client, hardened=hardened) as executor:
        assert executor.channel == "socket"
        code = (
            "import os\ntry:\n    print(os.listdir('/run/ccexec-channel'))\nexcept PermissionError:\n    print('[]')\n"
            "try:\n    open('/run/ccexec-channel/x', 'w')\nexcept OSError:\n    print('cannot write')"
        )
        result = executor.execute_code_blocks([CodeBlock(code, "python")])
        assert (result.exit_code, result.output) == (0, "[]\ncannot write\n")
        name = executor._container_name
    assert engine.wait_state(name, "gone", PROMPT) == "gone"


def test_socket_channel_can_be_turned_off(docker_engine: str, tmp_path: Path) -> None:
    """socket_channel=False: the attached client's stdio, and nothing mounted for a channel."""
    with make(docker_engine, tmp_path, socket_channel=False) as executor:
        assert executor.channel == "client"
        result = executor.execute_code_blocks([CodeBlock("test -e /run/ccexec-channel || echo none", "sh")])
        assert result.output == "none\n"
    assert make(docker_engine, tmp_path).channel is None  # not started


def test_supervisor_that_cannot_connect_speaks_on_stdio(
    docker_engine: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket the supervisor cannot reach (here: removed before it starts): blocks run over the client."""
    from ccexec.backends import channel, docker

    class Unreachable(channel.SocketChannel):
        def __init__(self) -> None:
            super().__init__()
            os.unlink(os.path.join(self.folder, "s"))

    monkeypatch.setattr(docker, "SocketChannel", Unreachable)
    with make(docker_engine, tmp_path) as executor:
        assert executor.channel == "client"
        assert executor.execute_code_blocks([CodeBlock("print('over stdio')", "python")]).output == "over stdio\n"


def test_socket_channel_closes_each_descriptor_once(docker_engine: str, tmp_path: Path) -> None:
    """After stop(), the client's unused stdio is closed, and its finalizer closes nothing again
    (descriptors reused since, by pipes of ours here, stay open)."""
    import gc

    executor = make(docker_engine, tmp_path)
    executor.start()
    attached = executor._backend._attached  # type: ignore[union-attr]
    kept = list(attached._stdio)
    assert len(kept) == 2
    executor.stop()
    assert attached._stdio == []
    pipes = [os.pipe() for _ in range(8)]  # the lowest free numbers: the ones just closed among them
    try:
        reused = {fd for pair in pipes for fd in pair} & set(kept)
        assert reused
        del attached, executor
        gc.collect()
        for fd in reused:
            os.fstat(fd)  # EBADF if the finalizer closed it
    finally:
        for pair in pipes:
            for fd in pair:
                os.close(fd)
