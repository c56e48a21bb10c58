"""Run every benchmark, print one Markdown table per section and the targets, write RESULTS.md.

    python3 benchmarks/run_all.py            # or: nox -s bench (installs AutoGen to compare with)

Sections that need what is missing (the engine, AutoGen) say so and skip. Exit status 1 when
a benchmark crashed (its traceback is in RESULTS.md); missed targets do not fail the run.
CCEXEC_BENCH_SCALE multiplies every round count (e.g. 0.2 for a quick look).
"""

from __future__ import annotations

import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable

import docker_latency
import files
import footprint
import fork_server
import local_latency
import output_heavy
import sandbox_latency
import throughput
from _harness import SCALE, Section, environment_header, md_table, print_section, remove_bench_containers, targets_table

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
BENCHMARKS: list[tuple[str, Callable[[], list[Section]]]] = [
    ("footprint.py", footprint.run),
    ("local_latency.py", local_latency.run),
    ("sandbox_latency.py", sandbox_latency.run),
    ("docker_latency.py", docker_latency.run),
    ("throughput.py", throughput.run),
    ("output_heavy.py", output_heavy.run),
    ("files.py", files.run),
    ("fork_server.py", fork_server.run),
]


def main() -> int:
    """Run all, write RESULTS.md; return the exit status."""
    warnings.simplefilter("ignore")  # both executors warn that local execution is not a sandbox
    header = environment_header()
    print(header)
    sections: list[Section] = []
    timings = []
    failed = False
    started_all = time.perf_counter()
    for script, bench in BENCHMARKS:
        print(f"\n== {script} ...", flush=True)
        started = time.perf_counter()
        try:
            produced = bench()
        except Exception:  # noqa: BLE001 - report and go on with the other benchmarks
            failed = True
            text = traceback.format_exc()
            print(text, file=sys.stderr)
            produced = [Section(f"{script}: FAILED", f"```\n{text}```")]
            remove_bench_containers()
        elapsed = time.perf_counter() - started
        timings.append([script, f"{elapsed:.0f}"])
        for section in produced:
            print_section(section)
        sections += produced
    timings.append(["total", f"{time.perf_counter() - started_all:.0f}"])
    targets = [target for section in sections for target in section.targets]
    missed = [t.what for t in targets if t.verdict == "MISS"]
    document = "\n".join(
        [
            "# ccexec benchmark results",
            "",
            "Written by `benchmarks/run_all.py` (`nox -s bench`). Times are medians over interleaved rounds; "
            "lower is better; ratios are ccexec over the reference.",
            "",
            header,
            f"- round scale: {SCALE:g} (CCEXEC_BENCH_SCALE)",
            "",
            "## Targets",
            "",
            targets_table(targets),
            "",
            f"Missed: {', '.join(missed) if missed else 'none'}.",
            "",
            *[section.markdown() for section in sections],
            "## Run time (s)",
            "",
            md_table(["benchmark", "seconds"], timings),
            "",
        ]
    )
    RESULTS.write_text(document, encoding="utf-8")
    print("\n## Targets\n")
    print(targets_table(targets))
    print(f"\nwrote {RESULTS}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
