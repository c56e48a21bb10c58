"""``python -m ccexec mcp`` over raw JSON-RPC: the real server process, local backend (Docker where marked).

The official SDK's client and an agent framework drive it in tests/test_mcp_sdk.py (`nox -s mcp`).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ccexec.mcp import MAX_LINE_BYTES, PROTOCOL_VERSIONS
from tests.conftest import TEST_PREFIX, Engine, pid_alive, read_pids, wait_for_file, wait_gone
from tests.mcp_raw import REPO, RawServer

#: A 1x1 PNG, made by the block itself in the image test (zlib and struct only).
MAKE_PNG = """
import struct, zlib
def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
png = b"\\x89PNG\\r\\n\\x1a\\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
png += chunk(b"IDAT", zlib.compress(b"\\x00\\xff\\x00\\x00")) + chunk(b"IEND", b"")
with open("plot.png", "wb") as handle:
    handle.write(png)
print(len(png))
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RawServer]:
    """An initialized local server with ``tmp_path`` as its work dir."""
    with RawServer(["--local", "--work-dir", str(tmp_path), "--timeout", "20"]) as raw:
        raw.initialize()
        yield raw
    assert raw.bad == []


def text_of(result: dict[str, Any]) -> str:
    return str(result["content"][0]["text"])


def test_initialize_negotiates_each_version_and_falls_back_to_the_newest(tmp_path: Path) -> None:
    """A supported protocolVersion is answered as asked; an unknown one gets the newest."""
    with RawServer(["--local", "--work-dir", str(tmp_path)]) as raw:
        for version in [*PROTOCOL_VERSIONS, "1999-01-01"]:
            result = raw.initialize(version)["result"]
            assert result["protocolVersion"] == (version if version in PROTOCOL_VERSIONS else PROTOCOL_VERSIONS[0])
            assert result["serverInfo"]["name"] == "ccexec"
            assert result["capabilities"]["tools"] == {"listChanged": False}
        assert raw.request("ping")["result"] == {}
        assert raw.close() == 0
    assert b"not a sandbox" in raw.stderr


def test_stateless_discovery_gets_method_not_found_so_clients_fall_back(tmp_path: Path) -> None:
    """server/discover (newer clients' first probe) is answered -32601, and initialize works after it."""
    with RawServer(["--local", "--work-dir", str(tmp_path)]) as raw:
        assert raw.request("server/discover", {})["error"]["code"] == -32601
        assert raw.initialize()["result"]["protocolVersion"] == "2025-06-18"


def test_tools_list_has_the_four_tools_and_the_rules(server: RawServer) -> None:
    """The tool names are fixed; run_code's description tells the model the rules; it has an outputSchema."""
    tools = {tool["name"]: tool for tool in server.request("tools/list")["result"]["tools"]}
    assert sorted(tools) == ["list_files", "read_file", "run_code", "write_file"]
    description = tools["run_code"]["description"]
    for rule in ("new process", "files do", "Stdin is closed", "20 seconds"):
        assert rule in description
    assert tools["run_code"]["outputSchema"]["required"] == ["exit_code", "timed_out", "truncated", "output"]
    assert tools["run_code"]["inputSchema"]["required"] == ["code"]


def test_old_protocol_gets_no_output_schema(tmp_path: Path) -> None:
    """A 2025-03-26 client sees neither outputSchema nor structuredContent (its protocol has none)."""
    with RawServer(["--local", "--work-dir", str(tmp_path)]) as raw:
        raw.initialize("2025-03-26")
        tools = raw.request("tools/list")["result"]["tools"]
        assert all("outputSchema" not in tool for tool in tools)
        assert "structuredContent" not in raw.tool("run_code", {"code": "print(1)"})


def test_run_code_returns_output_and_structured_content(server: RawServer) -> None:
    """Output as text; exit code, timed_out, truncated, the output and the files made as structuredContent."""
    result = server.tool("run_code", {"code": "import os; print('hi', os.getcwd())"})
    assert result["isError"] is False
    assert result["structuredContent"] == {
        "exit_code": 0, "timed_out": False, "truncated": False, "output": text_of(result), "files": [],
    }  # fmt: skip
    assert text_of(result).startswith("hi /")


def test_nonzero_exit_is_an_error_result(server: RawServer) -> None:
    """A block exiting 3 is isError with exit_code 3, and its stderr in the text."""
    result = server.tool("run_code", {"code": "import sys; print('bad', file=sys.stderr); sys.exit(3)"})
    assert result["isError"] is True
    assert result["structuredContent"]["exit_code"] == 3
    assert "bad" in text_of(result)


def test_shell_language_and_unknown_language(server: RawServer) -> None:
    """language selects the program; an unknown one is an error result naming it."""
    assert text_of(server.tool("run_code", {"code": "echo $((6 * 7))", "language": "sh"})) == "42\n"
    result = server.tool("run_code", {"code": "x", "language": "cobol"})
    assert result["isError"] is True
    assert "unknown language cobol" in text_of(result)


def test_timeout_kills_the_block_and_reports_124(server: RawServer) -> None:
    """A per-call timeout below the server's stops the block: exit 124, timed_out true."""
    start = time.monotonic()
    result = server.tool("run_code", {"code": "import time; time.sleep(30)", "timeout": 1})
    assert time.monotonic() - start < 10
    assert result["structuredContent"] | {"output": ""} == {
        "exit_code": 124, "timed_out": True, "truncated": False, "output": "", "files": [],
    }  # fmt: skip
    assert "Timeout" in text_of(result)


@pytest.mark.parametrize("timeout", [0.5, 21, "5", True])
def test_timeout_out_of_range_is_refused(server: RawServer, timeout: object) -> None:
    """timeout must be a number from 1 to the server's --timeout; otherwise an error result says so."""
    result = server.tool("run_code", {"code": "print(1)", "timeout": timeout})
    assert result["isError"] is True
    assert "from 1 to 20" in text_of(result)


def test_wrong_arguments_are_error_results(server: RawServer) -> None:
    """Missing or mistyped arguments come back as tool errors the model can read."""
    cases: list[tuple[str, dict[str, Any]]] = [
        ("run_code", {}),
        ("run_code", {"code": 5}),
        ("write_file", {"path": "a"}),
    ]
    for name, arguments in cases:
        result = server.tool(name, arguments)
        assert result["isError"] is True
        assert "must be a string" in text_of(result)


def test_progress_notifications_stream_output_before_the_result(server: RawServer) -> None:
    """With a progressToken, output arrives as notifications/progress while the block still runs."""
    code = "import time\nprint('first', flush=True)\ntime.sleep(1)\nprint('second')"
    ident = server.call("tools/call", {"name": "run_code", "arguments": {"code": code}, "_meta": {"progressToken": 7}})
    seen: list[dict[str, Any]] = []
    response = server.wait_for(ident, seen=seen)
    progress = [m["params"] for m in seen if m.get("method") == "notifications/progress"]
    assert "".join(p["message"] for p in progress) == "first\nsecond\n"
    assert all(p["progressToken"] == 7 for p in progress)
    values = [p["progress"] for p in progress]
    assert values == sorted(values)
    assert len(set(values)) == len(values)
    assert text_of(response["result"]) == "first\nsecond\n"


def test_cancellation_kills_the_process_tree_and_sends_no_result(server: RawServer, tmp_path: Path) -> None:
    """notifications/cancelled kills the block and its child; no response follows; the server goes on."""
    code = (
        "import os, subprocess, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        "open('pids.txt', 'w').write(f'{os.getpid()}\\n{child.pid}\\n')\n"
        "time.sleep(60)\n"
    )
    ident = server.call("tools/call", {"name": "run_code", "arguments": {"code": code}})
    wait_for_file(tmp_path / "pids.txt")
    pids = read_pids(tmp_path / "pids.txt")
    assert all(pid_alive(pid) for pid in pids)
    server.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": ident}})
    assert wait_gone(pids, within=10) == []
    seen: list[dict[str, Any]] = []
    server.wait_for(server.call("ping"), seen=seen)
    time.sleep(0.2)
    assert all(m.get("id") != ident for m in [*seen, *list(server.messages.queue)])


def test_concurrent_calls_each_get_their_own_result(server: RawServer) -> None:
    """A slow call does not hold up a quick one sent after it; both answer with their own output."""
    slow = server.call(
        "tools/call", {"name": "run_code", "arguments": {"code": "import time; time.sleep(2); print('slow')"}}
    )
    quick = server.call("tools/call", {"name": "run_code", "arguments": {"code": "print('quick')"}})
    seen: list[dict[str, Any]] = []
    assert text_of(server.wait_for(quick, seen=seen)["result"]) == "quick\n"
    assert all(m.get("id") != slow for m in seen)
    assert text_of(server.wait_for(slow)["result"]) == "slow\n"


def test_files_written_read_and_listed(server: RawServer, tmp_path: Path) -> None:
    """write_file makes parents; code sees the file; read_file and list_files show it; all in the work dir."""
    assert server.tool("write_file", {"path": "data/in.txt", "content": "héllo\n"})["isError"] is False
    assert (tmp_path / "data" / "in.txt").read_text(encoding="utf-8") == "héllo\n"
    code = "from pathlib import Path; print(Path('data/in.txt').read_text(encoding='utf-8').upper(), end='')"
    result = server.tool("run_code", {"code": code})
    assert text_of(result) == "HÉLLO\n"
    assert text_of(server.tool("read_file", {"path": "data/in.txt"})) == "héllo\n"
    assert text_of(server.tool("list_files", {})) == "data/"
    assert text_of(server.tool("list_files", {"path": "data"})) == "in.txt  7 bytes"


def test_read_file_returns_a_png_written_by_a_block_as_image_content(server: RawServer) -> None:
    """A PNG is recognised by its magic bytes and comes back base64 as image content."""
    size = int(text_of(server.tool("run_code", {"code": MAKE_PNG})))
    (content,) = server.tool("read_file", {"path": "plot.png"})["content"]
    assert content["type"] == "image"
    assert content["mimeType"] == "image/png"
    assert len(base64.b64decode(content["data"])) == size


def test_run_code_returns_the_images_it_made_when_asked(server: RawServer) -> None:
    """With images=true the call's new PNG comes back as image content after the output, from the
    call's own files listing; without it, only the listing names it."""
    result = server.tool("run_code", {"code": MAKE_PNG, "images": True})
    text, image = result["content"]
    assert (text["type"], image["type"], image["mimeType"]) == ("text", "image", "image/png")
    assert len(base64.b64decode(image["data"])) == int(text["text"])
    assert result["structuredContent"]["files"] == ["plot.png"]
    plain = server.tool("run_code", {"code": MAKE_PNG})
    assert [part["type"] for part in plain["content"]] == ["text"]
    assert plain["structuredContent"]["files"] == ["plot.png"]


def test_run_code_images_never_follow_a_link_out(server: RawServer, tmp_path: Path) -> None:
    """Attack: a block links `leak.png` to a PNG outside the work dir and asks for its images; the
    listing names the link, no image content comes back, nothing outside is read."""
    secret = tmp_path.parent / f"secret-{os.urandom(3).hex()}.png"
    secret.write_bytes(b"\x89PNG\r\n\x1a\n" + b"outside" * 10)
    try:
        code = f"import os; os.symlink({str(secret)!r}, 'leak.png'); print('linked')"
        result = server.tool("run_code", {"code": code, "images": True})
        assert [part["type"] for part in result["content"]] == ["text"]
        assert result["structuredContent"]["files"] == ["leak.png"]
    finally:
        secret.unlink()


def test_binary_and_oversized_files_are_refused_clearly(server: RawServer, tmp_path: Path) -> None:
    """Other binaries, directories and missing files give an error result that says what to do."""
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02\xff")
    (tmp_path / "big.txt").write_bytes(b"x" * (4 * 1024 * 1024 + 1))
    for path, expected in [
        ("blob.bin", "binary file"),
        ("big.txt", "over the"),
        (".", "outside the work dir"),
        ("nope.txt", "No such file"),
    ]:
        result = server.tool("read_file", {"path": path})
        assert result["isError"] is True
        assert expected in text_of(result), text_of(result)


@pytest.mark.parametrize("path", ["../escape.txt", "/etc/passwd", "a/../../escape.txt", "link/x.txt", "link"])
def test_paths_cannot_leave_the_work_dir(server: RawServer, tmp_path: Path, path: str) -> None:
    """.., absolute paths elsewhere and symlinks (made by a block) are refused by every file tool."""
    server.tool("run_code", {"code": "import os; os.path.lexists('link') or os.symlink('/etc', 'link')"})
    for name, arguments in [
        ("write_file", {"path": path, "content": "x"}),
        ("read_file", {"path": path}),
        ("list_files", {"path": path}),
    ]:
        result = server.tool(name, arguments)
        assert result["isError"] is True, (name, result)
        assert "outside the work dir" in text_of(result) or "symbolic link" in text_of(result)
    assert not (tmp_path.parent / "escape.txt").exists()


def test_absolute_path_inside_the_work_dir_is_accepted(server: RawServer, tmp_path: Path) -> None:
    """A path spelled from the work dir's root, as the code sees it, is the same file."""
    server.tool("write_file", {"path": str(tmp_path / "abs.txt"), "content": "ok"})
    assert text_of(server.tool("read_file", {"path": "abs.txt"})) == "ok"


def test_protocol_errors_get_their_codes_and_the_server_goes_on(server: RawServer) -> None:
    """-32700, -32600, -32601 and -32602 each as JSON-RPC says; a ping is answered afterwards."""
    cases: list[tuple[bytes, int, object]] = [
        (b"{not json", -32700, None),
        (b"\xff\xfe\x00", -32700, None),
        (b"[1, 2]", -32600, None),
        (b"42", -32600, None),
        (b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}', -32600, 1),
        (b'{"id": 2, "method": "ping"}', -32600, 2),
        (b'{"jsonrpc": "2.0", "id": [1], "method": "ping"}', -32600, None),
        (b'{"jsonrpc": "2.0", "id": 3, "method": 5}', -32600, 3),
        (b'{"jsonrpc": "2.0", "id": 4, "method": "resources/list"}', -32601, 4),
        (b'{"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": []}', -32602, 5),
        (b'{"jsonrpc": "2.0", "id": 6, "method": "initialize", "params": {}}', -32602, 6),
        (b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "rm_rf"}}', -32602, 7),
        (
            b'{"jsonrpc": "2.0", "id": 8, "method": "tools/call", "params": {"name": "run_code", "arguments": 1}}',
            -32602,
            8,
        ),
    ]
    for line, code, ident in cases:
        server.send_line(line)
        message = server.messages.get(timeout=10)
        assert message["error"]["code"] == code, (line, message)
        assert message["id"] == ident
        assert message["error"]["message"]
    server.send_line(b'{"jsonrpc": "2.0", "method": "no/such/notification"}')
    server.send_line(b'{"jsonrpc": "2.0", "result": {}, "id": 99}')
    assert server.request("ping")["result"] == {}


def test_a_line_over_the_bound_is_dropped_with_a_parse_error(server: RawServer) -> None:
    """A line longer than MAX_LINE_BYTES is skipped to its end; the next message is read normally."""
    server.send_line(b"x" * (MAX_LINE_BYTES + 10))
    assert server.messages.get(timeout=30)["error"]["code"] == -32700
    assert server.request("ping")["result"] == {}


def test_end_of_stdin_kills_running_code_and_exits_0(tmp_path: Path) -> None:
    """Closing stdin while a block runs: the block dies and the server exits 0, promptly."""
    with RawServer(["--local", "--work-dir", str(tmp_path)]) as raw:
        raw.initialize()
        code = "import os, time; open('pid', 'w').write(str(os.getpid())); time.sleep(60)"
        raw.call("tools/call", {"name": "run_code", "arguments": {"code": code}})
        pid = int(wait_for_file(tmp_path / "pid"))
        start = time.monotonic()
        assert raw.close() == 0
        assert time.monotonic() - start < 10
        assert not pid_alive(pid)


def test_no_engine_reachable_exits_at_once_with_the_doctor_advice(tmp_path: Path) -> None:
    """--docker with no engine: exit 1 within seconds, stderr says why and suggests doctor or --local."""
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock", "DOCKER_CONTEXT": ""}
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ccexec", "mcp", "--docker"],
        stdin=subprocess.PIPE,  # held open: the server must not wait for the client
        capture_output=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        timeout=60,
        check=False,
    )
    assert time.monotonic() - start < 30
    assert done.returncode == 1
    assert done.stdout == b""
    assert b"cannot start the docker backend" in done.stderr
    assert b"ccexec doctor" in done.stderr
    assert b"--local" in done.stderr


def test_run_takes_the_backend_flags(tmp_path: Path) -> None:
    """`ccexec run` shares the flags: --local is its default, --max-output-bytes caps the output."""
    script = tmp_path / "s.py"
    script.write_text("print('x' * 5000)", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "ccexec", "run", str(script), "--max-output-bytes", "100", "--json"],
        capture_output=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["truncated"] is True


# -- Docker ------------------------------------------------------------------------------------


def test_docker_run_code_files_and_container_removed_at_eof(docker_engine: str, tmp_path: Path) -> None:
    """The default backend: hardened container, /workspace mounted; EOF removes the container."""
    engine = Engine("docker", docker_engine)
    name = f"{TEST_PREFIX}mcp-raw"
    with RawServer(["--image", docker_engine, "--container-name", name, "--work-dir", str(tmp_path)]) as raw:
        raw.initialize()
        assert engine.state(name) == "running"
        result = raw.tool("run_code", {"code": "import os; print(os.getcwd(), os.getuid() != 0)"})
        assert text_of(result) == "/workspace True\n"
        raw.tool("write_file", {"path": "/workspace/in.txt", "content": "from host"})
        result = raw.tool("run_code", {"code": "print(open('in.txt').read()); open('in.txt', 'a').write('!')"})
        assert text_of(result) == "from host\n"
        assert text_of(raw.tool("read_file", {"path": "in.txt"})) == "from host!"
        net = raw.tool("run_code", {"code": "import socket; socket.create_connection(('1.1.1.1', 53), 2)"})
        assert net["isError"] is True
        assert raw.close() == 0
        assert raw.bad == []
    assert engine.wait_state(name, "gone", 15) == "gone"


def test_docker_without_a_mount_returns_images_and_reads_files(docker_engine: str, tmp_path: Path) -> None:
    """Nothing mounted (as with a remote engine): run_code's images and read_file come through copy_from,
    write_file through copy_to."""
    from ccexec import DockerCommandLineCodeExecutor
    from ccexec._client import Cancel
    from ccexec._mcp_tools import Tools

    executor = DockerCommandLineCodeExecutor(
        docker_engine, f"{TEST_PREFIX}mcp-nomount-{os.urandom(3).hex()}", work_dir=tmp_path, mount_work_dir=False
    )
    with executor:
        tools = Tools(executor, timeout=20, max_output_bytes=1 << 20, files=None, note="in a test container")
        result = tools.call("run_code", {"code": MAKE_PNG, "images": True}, Cancel(), None, structured=True)
        text, image = result["content"]
        assert len(base64.b64decode(image["data"])) == int(text["text"])
        assert not (tmp_path / "plot.png").exists()  # it lives in the container only
        read = tools.call("read_file", {"path": "plot.png"}, Cancel(), None, structured=True)
        assert read["content"][0]["mimeType"] == "image/png"
        wrote = tools.call("write_file", {"path": "in/notes.txt", "content": "héllo"}, Cancel(), None, structured=True)
        assert wrote["content"][0]["text"] == "wrote 6 bytes to in/notes.txt"
        code = "print(open('in/notes.txt', encoding='utf-8').read())"
        assert (
            tools.call("run_code", {"code": code}, Cancel(), None, structured=True)["content"][0]["text"] == "héllo\n"
        )
        assert not (tmp_path / "in").exists()


# -- fuzz --------------------------------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_METHODS = st.sampled_from(
    ["initialize", "ping", "tools/list", "tools/call", "notifications/cancelled", "server/discover", "x"]
)
_MESSAGES = st.fixed_dictionaries(
    {},
    optional={
        "jsonrpc": st.sampled_from(["2.0", "1.0", 2.0]) | _JSON,
        "id": st.integers() | st.text(max_size=8) | _JSON,
        "method": _METHODS | _JSON,
        "params": st.fixed_dictionaries(
            {}, optional={"name": st.sampled_from(["list_files", "read_file", "nope"]) | _JSON, "arguments": _JSON}
        )
        | _JSON,
    },
)
_LINES = st.one_of(
    st.binary(max_size=200).map(lambda data: data.replace(b"\n", b" ")),
    _JSON.map(lambda value: json.dumps(value).encode()),
    _MESSAGES.map(lambda value: json.dumps(value).encode()),
    st.integers(1, 5000).map(lambda depth: b"[" * depth + b"]" * depth),
)


def test_fuzz_never_crashes_and_never_writes_non_json(tmp_path: Path) -> None:
    """Malformed, wrongly typed and unknown messages: the server stays up, writes only JSON-RPC
    objects on stdout, and answers a valid request after each one."""
    with RawServer(["--local", "--work-dir", str(tmp_path)]) as raw:
        pings = iter(range(10**9))

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(line=_LINES)
        def one(line: bytes) -> None:
            raw.send_line(line)
            ident = f"ping-{next(pings)}"
            raw.send({"jsonrpc": "2.0", "id": ident, "method": "ping"})
            assert raw.wait_for(ident, within=20)["result"] == {}
            assert raw.proc.poll() is None
            assert raw.bad == []

        one()
        assert raw.close() == 0
