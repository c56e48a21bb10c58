"""Microsoft Agent Framework drives ``ccexec mcp`` through its own MCP client (MCPStdioTool), with a
scripted chat client in place of a model: no network, the same answer every run (``nox -s mcp``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Awaitable, Mapping, Sequence

import pytest

from tests.mcp_raw import REPO

if os.environ.get("CCEXEC_REQUIRE_FRAMEWORK") != "1":
    pytest.importorskip("agent_framework", reason="Microsoft Agent Framework is installed by `nox -s mcp` only")

from agent_framework import (
    Agent,
    BaseChatClient,
    ChatResponse,
    Content,
    FunctionInvocationLayer,
    MCPStdioTool,
    Message,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class ScriptedModel(FunctionInvocationLayer, BaseChatClient):  # type: ignore[misc]
    """A model that first asks for run_code, then repeats what the tool returned."""

    def _inner_get_response(
        self, *, messages: Sequence[Any], stream: bool, options: Mapping[str, Any], **kwargs: Any
    ) -> Awaitable[Any]:
        async def respond() -> Any:
            results = [c for m in messages for c in m.contents if c.type == "function_result"]
            if not results:
                code = "import os; print('sum', 6 * 7, 'in', os.getcwd())"
                call = Content.from_function_call("call-1", "run_code", arguments={"code": code})
                return ChatResponse(messages=[Message(role="assistant", contents=[call])])
            return ChatResponse(messages=[Message(role="assistant", contents=[f"tool said: {results[-1].result}"])])

        return respond()


async def test_agent_runs_code_through_its_mcp_client(tmp_path: Path) -> None:
    """The agent lists ccexec's tools, calls run_code, and the model sees the block's output."""
    tool = MCPStdioTool(
        name="ccexec",
        command=sys.executable,
        args=["-m", "ccexec", "mcp", "--local", "--work-dir", str(tmp_path)],
        env={"PYTHONPATH": str(REPO), "PATH": os.environ["PATH"]},
    )
    async with tool:
        assert {f.name for f in tool.functions} >= {"run_code", "write_file", "read_file", "list_files"}
        response = await Agent(client=ScriptedModel(), name="coder", tools=tool).run("What is 6 * 7?")
    assert f"sum 42 in {tmp_path}" in response.text
