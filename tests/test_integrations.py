"""The AutoGen and AG2 adapters, driven by the real frameworks (no model calls: replayed replies).

Skipped when the frameworks are missing, except with CCEXEC_REQUIRE_FRAMEWORKS=1 (the
`integrations` nox session), where a missing framework fails the run.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

from .conftest import TEST_PREFIX, pid_alive


def _framework(name: str) -> None:
    if os.environ.get("CCEXEC_REQUIRE_FRAMEWORKS") == "1":
        importlib.import_module(name)
    else:
        pytest.importorskip(name)


for _name in ("autogen_agentchat", "autogen_ext.models.replay", "autogen.coding"):
    _framework(_name)

from autogen import ConversableAgent  # noqa: E402
from autogen_agentchat.agents import CodeExecutorAgent  # noqa: E402
from autogen_agentchat.base import TaskResult  # noqa: E402
from autogen_agentchat.messages import CodeExecutionEvent, TextMessage  # noqa: E402
from autogen_core import CancellationToken  # noqa: E402
from autogen_core.code_executor import CodeBlock  # noqa: E402
from autogen_ext.code_executors._common import CommandLineCodeResult  # noqa: E402
from autogen_ext.models.replay import ReplayChatCompletionClient  # noqa: E402

from ccexec.errors import InvalidArgumentError  # noqa: E402
from ccexec.integrations import ag2, autogen  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [
    pytest.mark.filterwarnings("ignore:No approval function set:UserWarning"),
    pytest.mark.filterwarnings("ignore:LocalCommandLineCodeExecutor runs code:UserWarning"),
]
BLOCK = "```python\nprint(6 * 7)\n```"


def _local_autogen(tmp_path: Path) -> autogen.LocalCommandLineCodeExecutor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return autogen.LocalCommandLineCodeExecutor(timeout=10, work_dir=tmp_path)


async def _run_code_executor_agent(
    executor: autogen.LocalCommandLineCodeExecutor | autogen.DockerCommandLineCodeExecutor,
) -> None:
    """A CodeExecutorAgent whose (replayed) model writes a block runs it with ``executor``."""
    client = ReplayChatCompletionClient([f"Here you go:\n{BLOCK}", "The code printed 42."])
    async with executor:
        agent = CodeExecutorAgent("runner", code_executor=executor, model_client=client)
        # run() keeps only the final reply; run_stream() also yields the execution event.
        messages = [message async for message in agent.run_stream(task="What is 6 * 7? Use Python.")]
    (event,) = [m for m in messages if isinstance(m, CodeExecutionEvent)]
    assert isinstance(event.result, CommandLineCodeResult)
    assert (event.result.exit_code, event.result.output) == (0, "42\n")
    assert isinstance(messages[-1], TaskResult)
    reply = messages[-1].messages[-1]
    assert isinstance(reply, TextMessage)
    assert reply.content == "The code printed 42."


def test_autogen_code_executor_agent_runs_block_locally(tmp_path: Path) -> None:
    """AutoGen's CodeExecutorAgent runs a model's block through ccexec's local executor."""
    asyncio.run(_run_code_executor_agent(_local_autogen(tmp_path)))


def test_autogen_code_executor_agent_runs_block_in_docker(docker_engine: str, tmp_path: Path) -> None:
    """AutoGen's CodeExecutorAgent runs a model's block through ccexec's Docker executor."""
    name = f"{TEST_PREFIX}{os.urandom(4).hex()}"
    executor = autogen.DockerCommandLineCodeExecutor(docker_engine, name, timeout=10, work_dir=tmp_path)
    asyncio.run(_run_code_executor_agent(executor))


@pytest.mark.parametrize("from_thread", [False, True], ids=["in-loop", "other-thread"])
def test_autogen_cancellation_token_kills_running_block(tmp_path: Path, from_thread: bool) -> None:
    """Cancelling the token mid-run (from the loop or another thread) kills the block at once;
    the call returns AutoGen's cancellation result."""
    pid_file = tmp_path / "pid"
    code = f"import os, time\nopen({str(pid_file)!r}, 'w', encoding='ascii').write(str(os.getpid()))\ntime.sleep(60)"

    async def main() -> tuple[CommandLineCodeResult, float]:
        token = CancellationToken()
        async with _local_autogen(tmp_path) as executor:
            run = asyncio.ensure_future(executor.execute_code_blocks([CodeBlock(code, "python")], token))
            while not pid_file.exists() or not pid_file.read_text(encoding="ascii"):
                await asyncio.sleep(0.02)
            started = time.monotonic()
            # Later, so the loop is idle, waiting for the block, when the token is cancelled.
            if from_thread:
                threading.Timer(0.1, token.cancel).start()
            else:
                asyncio.get_running_loop().call_later(0.1, token.cancel)
            result = await run
            return result, time.monotonic() - started

    result, seconds = asyncio.run(main())
    assert (result.exit_code, result.output) == (125, "\nCancelled")
    assert seconds < 2
    assert not pid_alive(int(pid_file.read_text(encoding="ascii")))


def test_autogen_adapter_exposes_the_ccexec_executor(tmp_path: Path) -> None:
    """The adapter passes work_dir, timeout and the system message through from `.executor`."""
    executor = _local_autogen(tmp_path)
    assert (executor.work_dir, executor.timeout) == (tmp_path, 10)
    assert executor.code_writer_system_message() == executor.executor.code_writer_system_message()
    assert str(tmp_path) in executor.code_writer_system_message()


def _ag2_reply(executor: ag2.LocalCommandLineCodeExecutor | ag2.DockerCommandLineCodeExecutor) -> object:
    agent = ConversableAgent(
        "runner", llm_config=False, human_input_mode="NEVER", code_execution_config={"executor": executor}
    )
    with executor:
        return agent.generate_reply(messages=[{"role": "user", "content": BLOCK}])


def test_ag2_conversable_agent_runs_block_locally(tmp_path: Path) -> None:
    """AG2's ConversableAgent runs a message's block through ccexec's local executor."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        executor = ag2.LocalCommandLineCodeExecutor(timeout=10, work_dir=tmp_path)
    assert _ag2_reply(executor) == "exitcode: 0 (execution succeeded)\nCode output: 42\n"


def test_ag2_conversable_agent_runs_block_in_docker(docker_engine: str, tmp_path: Path) -> None:
    """AG2's ConversableAgent runs a message's block through ccexec's Docker executor."""
    name = f"{TEST_PREFIX}{os.urandom(4).hex()}"
    executor = ag2.DockerCommandLineCodeExecutor(docker_engine, name, timeout=10, work_dir=tmp_path)
    assert _ag2_reply(executor) == "exitcode: 0 (execution succeeded)\nCode output: 42\n"


def test_ag2_code_extractor_reads_content_parts() -> None:
    """The AG2 extractor finds blocks in multimodal content parts, with ccexec's fence rules."""
    message = [{"type": "text", "text": "Run:\n~~~sh\necho hi\n~~~\n```python\nprint('cut off"}]
    (block,) = ag2.CodeExtractor().extract_code_blocks(message)
    assert (block.language, block.code) == ("sh", "echo hi")


@pytest.mark.parametrize(
    ("module", "advice"),
    [("autogen", "pip install autogen-agentchat autogen-ext"), ("ag2", "pip install ag2")],
)
def test_import_without_framework_names_the_package(module: str, advice: str) -> None:
    """Importing an adapter where its framework is missing raises an ImportError naming the package."""
    # -S leaves site-packages (where the frameworks live) off sys.path; ccexec comes from ROOT.
    code = f"import ccexec.integrations; import ccexec.integrations.{module}"
    done = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=ROOT, capture_output=True, encoding="utf-8", check=False
    )
    assert done.returncode == 1
    last_line = done.stderr.strip().splitlines()[-1]
    assert last_line.startswith(f"ImportError: ccexec.integrations.{module} needs")
    assert last_line.endswith(advice)


def test_autogen_functions_with_requirements_write_their_imports(tmp_path: Path) -> None:
    """AutoGen's own FunctionWithRequirements (a callable's and from_str's) reach the functions module with
    their global imports, and blocks import them."""
    from autogen_core.code_executor import Alias, FunctionWithRequirements, ImportFromModule

    source = "def joined(parts):\n    return sep.join(sorted(parts)) + str(pi_module.pi > 3)\n"
    func = FunctionWithRequirements.from_str(
        source, global_imports=[ImportFromModule("os", [Alias("sep", "sep")]), Alias("math", "pi_module")]
    )

    async def main() -> CommandLineCodeResult:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            executor = autogen.LocalCommandLineCodeExecutor(timeout=10, work_dir=tmp_path, functions=[func])
        async with executor:
            assert "def joined(parts):" in executor.format_functions_for_prompt()
            code = f"from {executor.functions_module} import joined\nprint(joined(['b', 'a']))"
            return await executor.execute_code_blocks([CodeBlock(code, "python")], CancellationToken())

    result = asyncio.run(main())
    assert (result.exit_code, result.output) == (0, "a/bTrue\n")


def test_autogen_component_round_trip_keeps_ccexec_options(tmp_path: Path) -> None:
    """dump_component() / load_component() keep AutoGen's fields and ccexec's own options."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        executor = autogen.LocalCommandLineCodeExecutor(
            timeout=7, work_dir=tmp_path, cleanup_temp_files=False, max_output_bytes=4096, env={"A": "1"}
        )
        loaded = autogen.LocalCommandLineCodeExecutor.load_component(executor.dump_component())
    assert isinstance(loaded, autogen.LocalCommandLineCodeExecutor)
    assert (loaded.work_dir, loaded.timeout, loaded.executor.cleanup_temp_files) == (tmp_path, 7, False)
    config = executor.dump_component().config
    assert config["ccexec_options"] == {"max_output_bytes": 4096, "env": {"A": "1"}}


def test_autogen_docker_work_dir_before_start(docker_engine: str) -> None:
    """As AutoGen's: the Docker adapter's temporary work dir is a RuntimeError before start(), and
    exists from start() to stop()."""
    executor = autogen.DockerCommandLineCodeExecutor(docker_engine, f"{TEST_PREFIX}{os.urandom(4).hex()}")
    with pytest.raises(RuntimeError, match="Working directory not properly initialized"):
        _ = executor.work_dir

    async def main() -> Path:
        async with executor:
            assert executor.work_dir.is_dir()
            return executor.work_dir

    assert not asyncio.run(main()).exists()


def _local_ag2(work_dir: Path | str, **kwargs: Any) -> ag2.LocalCommandLineCodeExecutor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ag2.LocalCommandLineCodeExecutor(timeout=10, work_dir=work_dir, **kwargs)


def _ag2_block(code: str, language: str) -> Any:
    from autogen.coding.base import CodeBlock as AG2CodeBlock

    return AG2CodeBlock(code=code, language=language)


def test_ag2_execution_policy_saves_without_running(tmp_path: Path) -> None:
    """A language whose policy is False is saved, not run, and the output says where; the blocks
    around it run in order (javascript is saved by default, as in AG2)."""
    marker = tmp_path / "ran"
    executor = _local_ag2(tmp_path, execution_policies={"python": False})
    saved_code = f"open({str(marker)!r}, 'w').close()\nprint('never')"
    blocks = [_ag2_block("echo before", "sh"), _ag2_block(saved_code, "python"), _ag2_block("console.log(1)", "js")]
    result = executor.execute_code_blocks(blocks[:2])
    assert result.exit_code == 0
    (saved,) = [path for path in tmp_path.iterdir() if path.suffix == ".py"]
    assert result.output == f"before\nCode saved to {saved}\n"
    assert saved.read_text(encoding="utf-8") == saved_code
    assert not marker.exists()
    assert executor.execution_policies["python"] is False
    assert executor.DEFAULT_EXECUTION_POLICY["javascript"] is False
    # `js` is not one of AG2's local languages: nothing after it is planned, the call says so.
    refused = executor.execute_code_blocks([_ag2_block("echo again", "bash"), blocks[2]])
    assert (refused.exit_code, refused.output) == (1, "again\nunknown language js\n")
    page = executor.execute_code_blocks([_ag2_block("<!-- page.html -->\n<h1>hi</h1>", "html")])
    assert (page.exit_code, page.output) == (0, f"Code saved to {tmp_path / 'page.html'}\n")


def test_ag2_bare_first_line_names_the_file(tmp_path: Path) -> None:
    """A first line that is only a commented file name names the file, as in AG2; a comment of
    several words does not."""
    executor = _local_ag2(tmp_path)
    named = executor.execute_code_blocks([_ag2_block("# test.py\nprint('named')", "python")])
    assert (named.exit_code, named.output, named.code_file) == (0, "named\n", str(tmp_path / "test.py"))
    assert (tmp_path / "test.py").read_text(encoding="utf-8") == "# filename: test.py\nprint('named')"
    prose = executor.execute_code_blocks([_ag2_block("# print the total\nprint(1 + 2)", "python")])
    assert prose.output == "3\n"
    assert prose.code_file is not None
    assert Path(prose.code_file).name.startswith("tmp_code_")
    assert ag2.name_bare_filename("/* style.css */\nh1 {}") == "/* filename: style.css */\nh1 {}"
    assert ag2.name_bare_filename("/* style.css\nh1 {}") == "/* style.css\nh1 {}"  # unclosed: a comment


def test_ag2_generated_files_kept_and_work_dir_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As AG2's: the work dir keeps the form it was given (the current directory by default), is
    made at once (its parent must exist), and generated files stay after the call."""
    monkeypatch.chdir(tmp_path)
    executor = _local_ag2(".")
    assert str(executor.work_dir) == "."
    result = executor.execute_code_blocks([_ag2_block("print('kept')", "python")])
    assert result.code_file is not None
    assert Path(result.code_file).parent == tmp_path
    assert Path(result.code_file).exists()
    with pytest.raises(FileNotFoundError):
        _local_ag2(tmp_path / "missing" / "work")


def test_ag2_quiet_pip() -> None:
    """pip install lines of shell blocks (and `!pip install` in Python ones) get -qqq; others are left alone."""
    code = "pip install six\n  pip3 install -q six\npython -m pip install six\necho pip install six"
    assert ag2.quiet_pip(code, "bash") == (
        "pip install -qqq six\n  pip3 install -q six\npython -m pip install -qqq six\necho pip install six"
    )
    assert ag2.quiet_pip("!pip install six\npip install six", "python") == "!pip install -qqq six\npip install six"
    assert ag2.quiet_pip("pip install six", "javascript") == "pip install six"


def test_ag2_sanitize_command_refuses_before_anything_runs(tmp_path: Path) -> None:
    """The local adapter checks every shell block with sanitize_command before the first one runs."""
    marker = tmp_path / "ran"
    executor = _local_ag2(tmp_path)
    blocks = [_ag2_block(f"touch {marker}", "sh"), _ag2_block("rm -fr ./build", "bash")]
    with pytest.raises(ValueError, match=r"Use of 'rm -rf' command is not allowed\."):
        executor.execute_code_blocks(blocks)
    assert not marker.exists()
    ag2.LocalCommandLineCodeExecutor.sanitize_command("python", "import os; os.system('rm -rf x')")  # shells only
    ag2.LocalCommandLineCodeExecutor.sanitize_command("sh", "echo add; rm -r ./x")


def test_ag2_functions_as_given_and_in_the_prompt(tmp_path: Path) -> None:
    """AG2's FunctionWithRequirements objects are installed and importable; `functions` returns them as given."""
    from autogen.coding.func_with_reqs import FunctionWithRequirements

    func = FunctionWithRequirements.from_str("def twice(x: int) -> int:\n    return 2 * x\n")
    executor = _local_ag2(tmp_path, functions=[func], functions_module="tools")
    assert executor.functions == [func]
    assert "`tools`" in executor.format_functions_for_prompt()
    assert "def twice(x: int) -> int:" in executor.format_functions_for_prompt()
    result = executor.execute_code_blocks([_ag2_block("from tools import twice\nprint(twice(21))", "python")])
    assert (result.exit_code, result.output) == (0, "42\n")


def test_ag2_container_create_kwargs_map_onto_run_options() -> None:
    """docker-py create arguments that have a `docker run` equivalent map onto ccexec's options;
    those ccexec's supervisor owns, and unknown ones, are refused by name."""
    options = ag2.docker_run_options(
        {"environment": ["A=1", "B=x=y"], "mem_limit": "256m", "nano_cpus": 500_000_000, "labels": {"k": "v"}}
    )
    assert options == {"env": {"A": "1", "B": "x=y"}, "memory": "256m", "cpus": 0.5, "run_args": ["--label", "k=v"]}
    with pytest.raises(InvalidArgumentError, match=r"'entrypoint'.*supervisor"):
        ag2.docker_run_options({"entrypoint": "/bin/sh"})
    with pytest.raises(InvalidArgumentError, match=r"\['ports'\] has no ccexec equivalent.*run_args"):
        ag2.docker_run_options({"ports": {"80/tcp": 8080}})


def test_ag2_docker_container_create_kwargs_environment(docker_engine: str, tmp_path: Path) -> None:
    """container_create_kwargs' environment reaches the blocks; AG2's positional order holds."""
    name = f"{TEST_PREFIX}{os.urandom(4).hex()}"
    executor = ag2.DockerCommandLineCodeExecutor(
        docker_engine, name, 10, tmp_path, container_create_kwargs={"environment": {"GREETING": "hi"}}
    )
    with executor:
        result = executor.execute_code_blocks([_ag2_block("echo $GREETING", "sh"), _ag2_block("x", "css")])
    assert (result.exit_code, executor.timeout, executor.bind_dir) == (0, 10, tmp_path)
    assert result.output.startswith("hi\nCode saved to ")
