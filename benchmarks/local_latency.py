"""Per-call latency of ``execute_code_blocks`` on this host: ccexec vs AutoGen vs bare subprocess.run.

Cases: one python block ``print(1)``, one sh block ``echo 1``, ten python blocks in one call.
Contenders run in interleaved rounds after a warm-up. AutoGen's async API runs in one
persistent event loop (its creation is not timed). The floor is ``subprocess.run`` of the
same file(s) with output captured; for ten blocks, ten sequential calls.

    python3 benchmarks/local_latency.py      # works with ccexec alone; AutoGen is optional
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import warnings
from typing import Any, Callable

from _harness import (
    Contender,
    Extra,
    Section,
    Series,
    Target,
    autogen_available,
    interleaved,
    md_table,
    print_section,
    ratio,
    scaled,
)

#: case -> (blocks as (code, language), rounds)
CASES: dict[str, tuple[list[tuple[str, str]], int]] = {
    "one python block": ([("print(1)", "python")], 60),
    "one sh block": ([("echo 1", "sh")], 60),
    "ten python blocks": ([(f"print({i})", "python") for i in range(10)], 15),
}
CCEXEC, AUTOGEN, FLOOR = "ccexec Local", "AutoGen Local", "floor: subprocess.run"


def expected_output(blocks: list[tuple[str, str]]) -> str:
    """What the blocks print (each prints one number)."""
    return "".join(code.split("(")[-1].rstrip(")").replace("echo ", "") + "\n" for code, _ in blocks)


def _checker(run: Callable[[], str], want: str, who: str) -> Callable[[], None]:
    def check() -> None:
        got = run()
        if got.replace("\r", "") != want:
            raise AssertionError(f"{who}: expected {want!r}, got {got!r}")

    return check


def ccexec_contender(blocks: list[tuple[str, str]], work_dir: str) -> tuple[Contender, Callable[[], None]]:
    """ccexec's local executor, sync API."""
    import ccexec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        executor = ccexec.LocalCommandLineCodeExecutor(work_dir=work_dir)
    executor.start()
    code_blocks = [ccexec.CodeBlock(code, language) for code, language in blocks]

    def run() -> Extra:
        executor.execute_code_blocks(code_blocks)
        return None

    check = _checker(lambda: executor.execute_code_blocks(code_blocks).output, expected_output(blocks), CCEXEC)
    return Contender(CCEXEC, run, check=check), executor.stop


def autogen_contender(
    blocks: list[tuple[str, str]], work_dir: str, loop: asyncio.AbstractEventLoop
) -> tuple[Contender, Callable[[], None]]:
    """AutoGen's local executor, async API driven by one persistent event loop."""
    from autogen_core import CancellationToken
    from autogen_core.code_executor import CodeBlock
    from autogen_ext.code_executors.local import LocalCommandLineCodeExecutor

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        executor = LocalCommandLineCodeExecutor(work_dir=work_dir)
    loop.run_until_complete(executor.start())
    code_blocks = [CodeBlock(code=code, language=language) for code, language in blocks]

    def call() -> Any:
        return loop.run_until_complete(executor.execute_code_blocks(code_blocks, CancellationToken()))

    def run() -> Extra:
        call()
        return None

    check = _checker(lambda: call().output, expected_output(blocks), AUTOGEN)
    return Contender(AUTOGEN, run, check=check), lambda: loop.run_until_complete(executor.stop())


def floor_contender(blocks: list[tuple[str, str]], work_dir: str) -> Contender:
    """``subprocess.run([python or sh, file])`` per block, output captured as ccexec does."""
    argvs = []
    for index, (code, language) in enumerate(blocks):
        extension = "py" if language == "python" else "sh"
        path = os.path.join(work_dir, f"floor_{index}.{extension}")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(code)
        argvs.append([sys.executable if language == "python" else "sh", path])

    def call() -> str:
        out = []
        for argv in argvs:
            done = subprocess.run(argv, cwd=work_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)
            out.append(done.stdout.decode())
        return "".join(out)

    def run() -> Extra:
        call()
        return None

    return Contender(FLOOR, run, check=_checker(call, expected_output(blocks), FLOOR))


def measure_case(blocks: list[tuple[str, str]], rounds: int, with_autogen: bool) -> dict[str, Series]:
    """Time one case with every contender, interleaved."""
    loop = asyncio.new_event_loop()
    stops: list[Callable[[], None]] = []
    with tempfile.TemporaryDirectory(prefix="ccexec-bench-") as tmp:
        try:
            contender, stop = ccexec_contender(blocks, os.path.join(tmp, "ccexec"))
            contenders, stops = [contender], [stop]
            if with_autogen:
                os.makedirs(os.path.join(tmp, "autogen"))
                contender, stop = autogen_contender(blocks, os.path.join(tmp, "autogen"), loop)
                contenders.append(contender)
                stops.append(stop)
            contenders.append(floor_contender(blocks, tmp))
            return interleaved(contenders, scaled(rounds))
        finally:
            for stop in stops:
                stop()
            loop.close()


def run() -> list[Section]:
    """Measure every case; return the section for RESULTS.md."""
    with_autogen = autogen_available("autogen_ext.code_executors.local")
    results = {case: measure_case(blocks, rounds, with_autogen) for case, (blocks, rounds) in CASES.items()}
    headers = ["case", CCEXEC, *([AUTOGEN] if with_autogen else []), FLOOR, "ccexec / floor"]
    if with_autogen:
        headers.append("ccexec / AutoGen")
    rows = []
    for case, series in results.items():
        ours, floor = series[CCEXEC].median, series[FLOOR].median
        row = [case, series[CCEXEC].cell(), *([series[AUTOGEN].cell()] if with_autogen else [])]
        row += [series[FLOOR].cell(), ratio(ours, floor)]
        if with_autogen:
            row.append(ratio(ours, series[AUTOGEN].median))
        rows.append(row)
    one = results["one python block"]
    targets = [
        Target(
            "Local one python block: ccexec / floor",
            one[CCEXEC].median / one[FLOOR].median,
            1.05,
            "x",
            "local latency",
        ),
        Target(
            "Local one python block: ccexec / AutoGen",
            one[CCEXEC].median / one[AUTOGEN].median if with_autogen else None,
            1.0,
            "x",
            "local latency",
        ),
    ]
    notes = [
        "Cells: median (min..max) in ms per `execute_code_blocks` call, n = timed rounds, after 2 warm-up calls; "
        "contenders interleaved round by round.",
        "AutoGen: `await executor.execute_code_blocks(blocks, CancellationToken())` in one persistent event loop.",
        "Floor: `subprocess.run([sys.executable | 'sh', file], stdout=PIPE, stderr=STDOUT)` of pre-written "
        "files (ten sequential calls for ten blocks): no file writing, no timeout, no process-tree cleanup.",
    ]
    if not with_autogen:
        notes.append("AutoGen (autogen-ext) is not installed: its column is skipped.")
    return [Section("Local latency (per call)", md_table(headers, rows), notes, targets)]


def main() -> None:
    """Run alone: print the section."""
    for section in run():
        print_section(section)


if __name__ == "__main__":
    main()
