"""Run ccexec calls in a process of their own and write what happened to a JSON file.

tests/test_attacks.py uses it where the executor must not live in the test process: to read
the host's peak memory (this process's VmHWM), to run the local executor as an unprivileged
user, and to SIGKILL an executor's owner. Usage: ``python attack_driver.py SPEC.json``.

SPEC: ``{"executor": "local" | "docker", "options": {constructor keywords},
"calls": [{"code", "language", "after": path, "after_calls": [index...], "delay": seconds}],
"result": path, "hold": bool}`` (all but code and language optional). Each call runs on its
own thread once its ``after`` file exists, the calls listed in ``after_calls`` ended, and
``delay`` passed. The result file appears (atomically) once every call ended; with ``hold``
the process then waits for its stdin to close before it stops the executor, so that the test
can inspect the machine while the executor is still alive (or SIGKILL this process).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Union

import ccexec

Executor = Union[ccexec.LocalCommandLineCodeExecutor, ccexec.DockerCommandLineCodeExecutor]

#: Characters of a long output kept from each end in the report.
KEEP = 32768
#: Blocks read this variable to know the executor's own process, which they must not attack
#: (it stands for the test process, like the test process does in tests that run in-process).
HOST_PID_VARIABLE = "CCEXEC_ATTACK_HOST_PID"


def make_executor(spec: dict[str, Any]) -> Executor:
    """Build the executor the spec names."""
    options = dict(spec.get("options") or {})
    if spec["executor"] == "local":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return ccexec.LocalCommandLineCodeExecutor(**options)
    return ccexec.DockerCommandLineCodeExecutor(**options)


def run_call(
    executor: Executor,
    calls: list[dict[str, Any]],
    index: int,
    reports: list[dict[str, Any]],
    ended: list[threading.Event],
) -> None:
    """Run call ``index`` and record its result, or the exception it raised, and its duration."""
    call, report = calls[index], reports[index]
    try:
        after = call.get("after")
        end = time.monotonic() + 30
        while after is not None and not os.path.exists(after) and time.monotonic() < end:
            time.sleep(0.01)
        for earlier in call.get("after_calls", ()):
            ended[earlier].wait()
        time.sleep(float(call.get("delay", 0)))
        start = time.monotonic()
        try:
            result = executor.execute_code_blocks([ccexec.CodeBlock(call["code"], call["language"])])
        except ccexec.CcexecError as exc:
            report["error"] = f"{type(exc).__name__}: {exc}"
        except BaseException as exc:  # noqa: BLE001 - reported: the test fails on anything but CcexecError
            report["unexpected"] = repr(exc)
        else:
            output = result.output
            report.update(
                exit_code=result.exit_code,
                timed_out=result.timed_out,
                truncated=result.truncated,
                output_length=len(output),
                output=output if len(output) <= 2 * KEEP else output[:KEEP] + output[-KEEP:],
            )
        report["elapsed"] = time.monotonic() - start
    finally:
        ended[index].set()


def peak_memory_kib() -> int:
    """This process's peak resident memory (VmHWM), in KiB."""
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    os.environ[HOST_PID_VARIABLE] = str(os.getpid())
    executor = make_executor(spec)
    try:
        executor.start()
        calls: list[dict[str, Any]] = spec["calls"]
        reports: list[dict[str, Any]] = [{} for _ in calls]
        ended = [threading.Event() for _ in calls]
        threads = [
            threading.Thread(target=run_call, args=(executor, calls, index, reports, ended), daemon=True)
            for index in range(len(calls))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        done = {"pid": os.getpid(), "calls": reports, "vmhwm_kib": peak_memory_kib()}
        result = Path(spec["result"])
        partial = result.with_name(result.name + ".partial")
        partial.write_text(json.dumps(done), encoding="utf-8")
        partial.rename(result)
        if spec.get("hold"):
            sys.stdin.read()
    finally:
        executor.stop()


if __name__ == "__main__":
    main(sys.argv[1])
