"""Per-block cost of the bubblewrap sandbox: ``LocalCommandLineCodeExecutor(sandbox=True)`` vs the plain one.

Cases: one python block ``print(1)``, one sh block ``echo 1``; both executors run interleaved
round by round in the same process after a warm-up. Also ``start()`` of each executor (a new
supervisor; for the sandbox, bwrap making its namespaces too), interleaved the same way.

    python3 benchmarks/sandbox_latency.py      # needs bwrap (apt-get install bubblewrap)
"""

from __future__ import annotations

import os
import tempfile
import warnings
from typing import Callable

from _harness import Contender, Extra, Section, Series, Target, interleaved, md_table, print_section, ratio, scaled

CASES: dict[str, tuple[str, str, int]] = {
    "one python block": ("print(1)", "python", 60),
    "one sh block": ("echo 1", "sh", 60),
}
PLAIN, SANDBOX = "Local", "Local sandbox=True"
#: Rounds of the start() measurement.
START_ROUNDS = 20


def executor(work_dir: str, sandbox: bool) -> object:
    """A started local executor, sandboxed or not."""
    import ccexec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = ccexec.LocalCommandLineCodeExecutor(work_dir=work_dir, sandbox=sandbox)
    made.start()
    return made


def block_contender(name: str, made: object, code: str, language: str) -> Contender:
    """One call of one block on ``made``; checked to print 1."""
    import ccexec

    blocks = [ccexec.CodeBlock(code, language)]
    assert isinstance(made, ccexec.LocalCommandLineCodeExecutor)

    def run() -> Extra:
        made.execute_code_blocks(blocks)
        return None

    def check() -> None:
        result = made.execute_code_blocks(blocks)
        if (result.exit_code, result.output) != (0, "1\n"):
            raise AssertionError(f"{name}: got {result.exit_code} {result.output!r}")

    return Contender(name, run, check=check)


def start_contender(name: str, work_dir: str, sandbox: bool) -> Contender:
    """start() then stop() of a fresh executor; only start() is timed (as the extra sample ``name``)."""
    import time

    def run() -> Extra:
        started = time.perf_counter()
        made = executor(work_dir, sandbox)
        elapsed = time.perf_counter() - started
        made.stop()  # type: ignore[attr-defined]
        return {f"start {name}": elapsed}

    return Contender(f"start+stop {name}", run)


def run() -> list[Section]:
    """Measure; return the section for RESULTS.md."""
    rows: list[list[object]] = []
    results: dict[str, dict[str, Series]] = {}
    with tempfile.TemporaryDirectory(prefix="ccexec-bench-") as tmp:
        plain_dir, sandbox_dir = os.path.join(tmp, "plain"), os.path.join(tmp, "sandbox")
        stops: list[Callable[[], None]] = []
        try:
            plain, sandboxed = executor(plain_dir, False), executor(sandbox_dir, True)
            stops += [plain.stop, sandboxed.stop]  # type: ignore[attr-defined]
            for case, (code, language, rounds) in CASES.items():
                contenders = [block_contender(PLAIN, plain, code, language),
                              block_contender(SANDBOX, sandboxed, code, language)]  # fmt: skip
                results[case] = interleaved(contenders, scaled(rounds))
        finally:
            for stop in stops:
                stop()
        starts = interleaved(
            [start_contender(PLAIN, plain_dir, False), start_contender(SANDBOX, sandbox_dir, True)],
            scaled(START_ROUNDS),
            warmup=1,
        )
    for case, series in results.items():
        rows.append(
            [case, series[PLAIN].cell(), series[SANDBOX].cell(), ratio(series[SANDBOX].median, series[PLAIN].median)]
        )
    plain_start, sandbox_start = starts[f"start {PLAIN}"], starts[f"start {SANDBOX}"]
    rows.append(["start()", plain_start.cell(), sandbox_start.cell(), ratio(sandbox_start.median, plain_start.median)])
    one = results["one python block"]
    targets = [
        Target(
            "Sandbox one python block: sandbox / plain local",
            one[SANDBOX].median / one[PLAIN].median,
            1.3,
            "x",
            "sandbox latency",
        ),
    ]
    notes = [
        "Cells: median (min..max) in ms, n = timed rounds, after 2 warm-up calls; both executors interleaved "
        "round by round in one process.",
        "One sandbox per executor: bwrap starts the supervisor once as PID 1 of new namespaces, and the "
        "supervisor spawns each block inside, as the plain local executor's does on the host.",
        f"The sandbox ran as {'root (blocks as nobody)' if os.geteuid() == 0 else 'an unprivileged user'}.",
    ]
    table = md_table(["case", PLAIN, SANDBOX, "sandbox / plain"], rows)
    return [Section("Sandbox latency (per call, and start)", table, notes, targets)]


def main() -> None:
    """Run alone: print the section."""
    for section in run():
        print_section(section)


if __name__ == "__main__":
    main()
