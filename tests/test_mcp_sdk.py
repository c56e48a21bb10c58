"""``python -m ccexec mcp`` driven by the official MCP Python SDK's stdio client (``nox -s mcp``, 1.x and 2.x).

The `mcp` package is a test-only dependency: without it these tests skip, except under
CCEXEC_REQUIRE_MCP=1 (set by the nox session), where they fail.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Sequence

import pytest

from tests.conftest import TEST_PREFIX, Engine, pid_alive, read_pids, wait_gone
from tests.mcp_raw import REPO
from tests.test_mcp import MAKE_PNG

if os.environ.get("CCEXEC_REQUIRE_MCP") != "1":
    pytest.importorskip("mcp", reason="the MCP SDK is installed by `nox -s mcp` only")
    pytest.importorskip("anyio")

import anyio
from mcp import ClientSession, StdioServerParameters, types
from mcp.client.stdio import stdio_client

MAJOR = int(importlib.metadata.version("mcp").split(".")[0])
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def server_parameters(args: Sequence[str]) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "ccexec", "mcp", *args],
        env={"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]},
        cwd=str(REPO),
    )


@contextlib.asynccontextmanager
async def connect(args: Sequence[str]) -> AsyncIterator[ClientSession]:
    """A ClientSession over stdio to a new server process, initialized."""
    async with stdio_client(server_parameters(args)) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def local(tmp_path: Path) -> list[str]:
    return ["--local", "--work-dir", str(tmp_path), "--timeout", "30"]


def text(result: Any) -> str:
    content = result.content[0]
    assert isinstance(content, types.TextContent)
    return str(content.text)


async def test_handshake_and_tools_list(tmp_path: Path) -> None:
    """initialize negotiates the SDK's newest version; tools/list shows the four tools with schemas."""
    async with stdio_client(server_parameters(local(tmp_path))) as (read, write), ClientSession(read, write) as session:
        init = await session.initialize()
        assert init.serverInfo.name == "ccexec" if MAJOR == 1 else init.server_info.name == "ccexec"
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
    assert sorted(tools) == ["list_files", "read_file", "run_code", "write_file"]
    schema = tools["run_code"].outputSchema if MAJOR == 1 else tools["run_code"].output_schema
    assert schema is not None
    assert "new process" in (tools["run_code"].description or "")


@pytest.mark.skipif(MAJOR < 2, reason="the high-level Client with server/discover probing is new in 2.x")
async def test_sdk2_client_probes_discover_then_falls_back_to_initialize(tmp_path: Path) -> None:
    """mcp 2.x's Client first tries server/discover; our -32601 makes it fall back, and calls work."""
    from mcp import Client

    async with Client(server_parameters(local(tmp_path))) as client:
        result = await client.call_tool("run_code", {"code": "print(6 * 7)"})
        assert text(result) == "42\n"
        assert client.session.protocol_version == "2025-11-25"


async def test_run_code_locally(tmp_path: Path) -> None:
    """Output as text, structuredContent validated against the outputSchema by the SDK."""
    async with connect(local(tmp_path)) as session:
        result = await session.call_tool("run_code", {"code": "print('hello')"})
        failed = await session.call_tool("run_code", {"code": "import sys; sys.exit(2)"})
    assert text(result) == "hello\n"
    structured = result.structuredContent if MAJOR == 1 else result.structured_content
    assert structured == {"exit_code": 0, "timed_out": False, "truncated": False, "output": "hello\n", "files": []}
    assert (failed.isError if MAJOR == 1 else failed.is_error) is True


async def test_timeout(tmp_path: Path) -> None:
    """A block over its timeout: exit 124, timed_out, within a few seconds."""
    start = time.monotonic()
    async with connect(local(tmp_path)) as session:
        result = await session.call_tool("run_code", {"code": "import time; time.sleep(60)", "timeout": 1})
    structured = result.structuredContent if MAJOR == 1 else result.structured_content
    assert structured["exit_code"] == 124
    assert structured["timed_out"] is True
    assert time.monotonic() - start < 15


async def test_progress_arrives_before_the_result(tmp_path: Path) -> None:
    """The SDK's progress_callback sees the first line while the block still runs."""
    events: list[tuple[str, float]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        events.append((message or "", time.monotonic()))

    code = "import time\nprint('early', flush=True)\ntime.sleep(1.5)\nprint('late')"
    async with connect(local(tmp_path)) as session:
        result = await session.call_tool("run_code", {"code": code}, progress_callback=progress)
        done = time.monotonic()
    assert text(result) == "early\nlate\n"
    assert "".join(message for message, _ in events) == "early\nlate\n"
    assert done - events[0][1] > 1.0  # the first output came while the block slept


async def test_cancellation_kills_the_process(tmp_path: Path) -> None:
    """Cancelling the SDK call sends notifications/cancelled; the block and its child are gone."""
    code = (
        "import os, subprocess, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "open('pids.txt', 'w').write(f'{os.getpid()}\\n{child.pid}\\n')\n"
        "time.sleep(60)\n"
    )
    async with connect(local(tmp_path)) as session:
        async with anyio.create_task_group() as group:
            request_id = getattr(session, "_request_id", None)  # 1.x: the id its next request takes

            async def call() -> None:
                await session.call_tool("run_code", {"code": code})

            group.start_soon(call)
            with anyio.fail_after(30):
                while not (tmp_path / "pids.txt").exists() or not (tmp_path / "pids.txt").read_text("utf-8"):
                    await anyio.sleep(0.02)
            pids = read_pids(tmp_path / "pids.txt")
            assert all(pid_alive(pid) for pid in pids)
            if MAJOR == 1:  # 1.x does not send the notification itself when a call is abandoned
                params = types.CancelledNotificationParams(requestId=request_id, reason="test")
                await session.send_notification(types.ClientNotification(types.CancelledNotification(params=params)))
            group.cancel_scope.cancel()
        assert wait_gone(pids, within=10) == []
        assert text(await session.call_tool("run_code", {"code": "print('still here')"})) == "still here\n"


async def test_read_file_returns_png_as_image(tmp_path: Path) -> None:
    """A PNG written by a block comes back as image content."""
    async with connect(local(tmp_path)) as session:
        await session.call_tool("run_code", {"code": MAKE_PNG})
        result = await session.call_tool("read_file", {"path": "plot.png"})
    (content,) = result.content
    assert isinstance(content, types.ImageContent)
    assert (content.mimeType if MAJOR == 1 else content.mime_type) == "image/png"


async def test_path_escapes_are_refused(tmp_path: Path) -> None:
    """.. and absolute paths elsewhere are tool errors; nothing is written outside."""
    async with connect(local(tmp_path)) as session:
        for path in ("../out.txt", "/tmp/out-of-work-dir.txt"):
            result = await session.call_tool("write_file", {"path": path, "content": "x"})
            assert (result.isError if MAJOR == 1 else result.is_error) is True
            assert "outside the work dir" in text(result)
    assert not (tmp_path.parent / "out.txt").exists()


async def test_run_code_in_docker(docker_engine: str, tmp_path: Path) -> None:
    """The default backend through the SDK: a hardened container, removed when the session ends."""
    name = f"{TEST_PREFIX}mcp-sdk"
    args = ["--image", docker_engine, "--container-name", name, "--work-dir", str(tmp_path)]
    async with connect(args) as session:
        result = await session.call_tool("run_code", {"code": "import os; print(os.getcwd())"})
        await session.call_tool("run_code", {"code": MAKE_PNG})
        image = await session.call_tool("read_file", {"path": "plot.png"})
    assert text(result) == "/workspace\n"
    assert isinstance(image.content[0], types.ImageContent)
    assert Engine("docker", docker_engine).wait_state(name, "gone", 15) == "gone"
