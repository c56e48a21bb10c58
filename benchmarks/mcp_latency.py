"""MCP latency: ``run_code`` of one python block over ``python -m ccexec mcp`` vs the same block via the Python API.

The MCP side is a raw JSON-RPC client on the server's pipes (request written, response line
read); the API side is ``execute_code_blocks`` on an executor in this process. Both run
interleaved, round by round, locally and in Docker (the test image, hardened in both), after
a warm-up; medians and the MCP/API ratio are printed.

    python3 benchmarks/mcp_latency.py      # Docker needs the engine and the test image
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any, Callable

from _harness import IMAGE, PREFIX, ROOT, SCALE, docker_available

import ccexec

CODE = "print(6 * 7)"
ROUNDS = max(5, int(40 * SCALE))
WARMUP = 3


class McpPipe:
    """The server as a child; ``call`` sends one tools/call and waits for its response line."""

    def __init__(self, args: list[str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ccexec", "mcp", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
        )  # fmt: skip
        self._next = 0
        self.send("initialize", {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "b"}})

    def send(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self._next += 1
        message = {"jsonrpc": "2.0", "id": self._next, "method": method, "params": params}
        self.proc.stdin.write(json.dumps(message).encode() + b"\n")
        self.proc.stdin.flush()
        while True:
            reply: dict[str, Any] = json.loads(self.proc.stdout.readline())
            if reply.get("id") == self._next:
                return reply

    def call(self) -> None:
        reply = self.send("tools/call", {"name": "run_code", "arguments": {"code": CODE}})
        assert reply["result"]["content"][0]["text"] == "42\n", reply

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(30)


def compare(label: str, mcp_args: list[str], executor: ccexec.executor.BaseCommandLineExecutor) -> None:
    """Time both sides interleaved and print medians and the ratio."""
    pipe = McpPipe(mcp_args)
    block = [ccexec.CodeBlock(CODE, "python")]

    def api() -> None:
        assert executor.execute_code_blocks(block).output == "42\n"

    times: dict[str, list[float]] = {"mcp": [], "api": []}
    sides: dict[str, Callable[[], None]] = {"mcp": pipe.call, "api": api}
    with executor:
        for round_ in range(WARMUP + ROUNDS):
            for name, fn in sides.items():
                start = time.perf_counter()
                fn()
                if round_ >= WARMUP:
                    times[name].append(time.perf_counter() - start)
    pipe.close()
    mcp, direct = statistics.median(times["mcp"]), statistics.median(times["api"])
    print(
        f"{label:7} MCP run_code {mcp * 1000:7.1f} ms   Python API {direct * 1000:7.1f} ms   "
        f"ratio {mcp / direct:4.2f}   overhead {(mcp - direct) * 1000:+6.1f} ms   ({ROUNDS} rounds, medians)"
    )


def main() -> None:
    print(f"one python block ({CODE!r}); Python {sys.version.split()[0]}; {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as mcp_dir, tempfile.TemporaryDirectory() as api_dir:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            local = ccexec.LocalCommandLineCodeExecutor(timeout=60, work_dir=api_dir)
        compare("local", ["--local", "--work-dir", mcp_dir], local)
    problem = docker_available()
    if problem is not None:
        print(f"docker  skipped: {problem}")
        return
    with tempfile.TemporaryDirectory() as mcp_dir, tempfile.TemporaryDirectory() as api_dir:
        name = f"{PREFIX}mcp-{os.getpid()}"
        docker = ccexec.DockerCommandLineCodeExecutor(IMAGE, f"{name}-api", work_dir=api_dir, hardened=True, timeout=60)
        args = ["--docker", "--image", IMAGE, "--container-name", f"{name}-mcp", "--work-dir", mcp_dir]
        compare("docker", args, docker)


if __name__ == "__main__":
    main()
