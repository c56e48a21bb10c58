"""A block that prints 100 MiB: time, and the host process's peak RSS above its baseline.

Every sample runs in a fresh child process (``output_heavy.py --child KIND``) so the baseline
is clean: the child imports, starts its executor and runs a small block, then resets its peak
RSS (``/proc/self/clear_refs``), runs the 100 MiB block, and reports the time and its VmHWM
minus the RSS at the reset. ccexec keeps at most ``max_output_bytes`` (1 MiB by default);
AutoGen keeps everything. Floors: the same file with stdout to /dev/null, locally and through
``docker exec`` (the output crosses the docker stream, and is dropped on the host).

    python3 benchmarks/output_heavy.py
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Any, Callable

from _harness import (
    IMAGE,
    Section,
    Target,
    autogen_available,
    container_name,
    docker,
    docker_available,
    md_table,
    peak_rss_kib,
    print_section,
    remove_bench_containers,
    reset_peak_rss,
    rss_kib,
    scaled,
    sleeper_container,
)

SIZE = 100 * 2**20
CODE = 'import sys\nchunk = ("x" * 1023 + "\\n") * 64\nfor _ in range(1600):\n    sys.stdout.write(chunk)\n'
ROUNDS = 3
LOCAL_KINDS = ["ccexec Local", "AutoGen Local", "floor: local, stdout to /dev/null"]
DOCKER_KINDS = [
    "ccexec Docker (runner)",
    'ccexec Docker mode="exec"',
    "AutoGen Docker",
    "floor: docker exec, stdout to /dev/null",
]


def _measure(call: Callable[[], Any]) -> tuple[dict[str, float], Any]:
    """Reset the peak RSS, time ``call``; return the report and what ``call`` returned."""
    reset_peak_rss()
    baseline = rss_kib()
    started = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - started
    peak_above = peak_rss_kib() - baseline
    kept = len(getattr(result, "output", ""))  # characters of output the executor returned
    return {"seconds": seconds, "baseline_kib": baseline, "peak_above_kib": peak_above, "kept": kept}, result


def child(kind: str, tmp: str) -> dict[str, float]:
    """Inside the child: set up ``kind``, run the small then the big block, measure the big one."""
    warnings.simplefilter("ignore")
    path = os.path.join(tmp, "big.py")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(CODE)
    if kind.startswith("floor: local"):
        return _floor_child([sys.executable, path], [sys.executable, "-c", "pass"])
    if kind.startswith("floor: docker"):
        with sleeper_container(tmp) as name:
            exec_argv = ["docker", "exec", name]
            return _floor_child([*exec_argv, "python3", "/workspace/big.py"], [*exec_argv, "true"])
    if kind.startswith("ccexec"):
        return _ccexec_child(kind, tmp)
    return _autogen_child(kind, tmp)


def _floor_child(argv: list[str], warm: list[str]) -> dict[str, float]:
    subprocess.run(warm, check=True)

    return _measure(lambda: subprocess.run(argv, stdout=subprocess.DEVNULL, check=True))[0]


def _ccexec_child(kind: str, tmp: str) -> dict[str, float]:
    import ccexec

    executor: Any
    if kind == "ccexec Local":
        executor = ccexec.LocalCommandLineCodeExecutor(work_dir=os.path.join(tmp, "w"))
    else:
        executor = ccexec.DockerCommandLineCodeExecutor(
            IMAGE,
            container_name("heavy"),
            work_dir=os.path.join(tmp, "w"),
            mode="exec" if 'mode="exec"' in kind else "runner",
        )
    with executor:
        executor.execute_code_blocks([ccexec.CodeBlock("print(1)", "python")])
        big = [ccexec.CodeBlock(CODE, "python")]
        stats, result = _measure(lambda: executor.execute_code_blocks(big))
    if result.exit_code != 0 or not result.truncated:
        raise AssertionError(f"{kind}: exit {result.exit_code}, truncated={result.truncated}")
    return stats


def _autogen_child(kind: str, tmp: str) -> dict[str, float]:
    from autogen_core import CancellationToken
    from autogen_core.code_executor import CodeBlock

    loop = asyncio.new_event_loop()
    executor: Any
    name = container_name("heavy-autogen")
    os.makedirs(os.path.join(tmp, "w"))
    if kind == "AutoGen Local":
        from autogen_ext.code_executors.local import LocalCommandLineCodeExecutor

        executor = LocalCommandLineCodeExecutor(work_dir=os.path.join(tmp, "w"))
    else:
        from autogen_ext.code_executors.docker import DockerCommandLineCodeExecutor

        executor = DockerCommandLineCodeExecutor(image=IMAGE, container_name=name, work_dir=os.path.join(tmp, "w"))
    loop.run_until_complete(executor.start())
    try:

        def call(code: str) -> Any:
            return loop.run_until_complete(
                executor.execute_code_blocks([CodeBlock(code=code, language="python")], CancellationToken())
            )

        call("print(1)")
        stats, result = _measure(lambda: call(CODE))
    finally:
        if kind != "AutoGen Local":
            docker("rm", "--force", name, check=False)  # so stop() need not wait out docker stop's 10 s
        loop.run_until_complete(executor.stop())
        loop.close()
    if result.exit_code != 0:
        raise AssertionError(f"{kind}: exit {result.exit_code}: {result.output[-300:]}")
    return stats


def spawn_child(kind: str) -> dict[str, float]:
    """Run one sample in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind], capture_output=True, text=True, check=False, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"{kind} child failed: {done.stderr[-2000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def run() -> list[Section]:
    """The output-heavy section with its targets."""
    kinds = list(LOCAL_KINDS)
    why = docker_available()
    if why is None:
        kinds += DOCKER_KINDS
    else:
        print(f"Docker part skipped: {why}")
    if not autogen_available("autogen_ext.code_executors.docker"):
        kinds = [k for k in kinds if not k.startswith("AutoGen")]
    samples: dict[str, list[dict[str, float]]] = {k: [] for k in kinds}
    try:
        for _ in range(scaled(ROUNDS)):
            for kind in kinds:
                samples[kind].append(spawn_child(kind))
    finally:
        remove_bench_containers()
    rows = []
    med: dict[str, dict[str, float]] = {}
    for kind, runs in samples.items():
        med[kind] = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        seconds = [r["seconds"] for r in runs]
        peaks = [r["peak_above_kib"] / 1024 for r in runs]
        rows.append(
            [
                kind,
                f"{med[kind]['seconds']:.2f} ({min(seconds):.2f}..{max(seconds):.2f})",
                f"{SIZE / 2**20 / med[kind]['seconds']:.0f}",
                f"{statistics.median(peaks):.1f} ({min(peaks):.1f}..{max(peaks):.1f})",
                f"{med[kind]['baseline_kib'] / 1024:.1f}",
                f"{med[kind]['kept'] / 2**20:.2f}" if not kind.startswith("floor") else "—",
            ]
        )
    headers = [
        "contender",
        "seconds",
        "MiB/s",
        "peak RSS above baseline (MiB)",
        "baseline RSS (MiB)",
        "output kept (MiB)",
    ]
    notes = [
        f"The block writes {SIZE // 2**20} MiB in 64 KiB writes. {scaled(ROUNDS)} rounds, each contender in a fresh "
        "child process per round (interleaved); cells: median (min..max).",
        "RSS is the Python host process only; the attached `docker` client of the Docker executors is a separate "
        "process (streamed, not buffered).",
        "ccexec starts its containers with `--log-driver none`: the runner's stdout is the protocol, and the "
        "engine's default json-file driver would also copy every byte of block output to the host's disk.",
    ]
    targets = [
        Target(
            f"100 MiB output, {kind}: host peak RSS above baseline",
            med[kind]["peak_above_kib"] / 1024 if kind in med else None,
            64,
            " MiB",
            "output heavy",
        )
        for kind in ("ccexec Local", "ccexec Docker (runner)")
    ]
    return [Section("100 MiB of output from one block", md_table(headers, rows), notes, targets)]


def main() -> None:
    """Run alone (or, with --child KIND, one sample)."""
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        with tempfile.TemporaryDirectory(prefix="ccexec-bench-") as tmp:
            print(json.dumps(child(sys.argv[2], tmp)))
        return
    for section in run():
        print_section(section)


if __name__ == "__main__":
    main()
