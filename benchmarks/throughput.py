"""Docker throughput: blocks per second with threads sharing one executor, and with several executors.

Each worker thread calls ``execute_code_blocks([print(i)])`` in a loop for a fixed time and
checks every result (a wrong output or exit code counts as an error). Configurations run in
interleaved rounds. Then the memory each executor costs: this process's RSS growth, the RSS
of the attached ``docker`` client processes, and the container's memory (``docker stats``).

    python3 benchmarks/throughput.py         # needs the engine and the test image
"""

from __future__ import annotations

import os
import statistics
import tempfile
import threading
import time
from typing import Any

from _harness import (
    IMAGE,
    Section,
    child_pids,
    container_memory,
    container_name,
    docker_available,
    md_table,
    mib,
    print_section,
    remove_bench_containers,
    rss_kib,
    scaled,
)

DURATION = 4.0  # seconds per configuration and round
ROUNDS = 3
#: (label, executors, threads per executor)
CONFIGS = [
    ("1 executor, 1 thread", 1, 1),
    ("1 executor, 2 threads", 1, 2),
    ("1 executor, 8 threads", 1, 8),
    ("2 executors, 1 thread each", 2, 1),
    ("4 executors, 1 thread each", 4, 1),
]


def drive(executors: list[Any], threads: int, duration: float) -> tuple[int, int, float]:
    """Run worker threads for ``duration``; return (blocks done, errors, elapsed seconds)."""
    import ccexec

    done = [0]
    errors = [0]
    lock = threading.Lock()
    end = time.monotonic() + duration

    def work(executor: Any, worker: int) -> None:
        count = bad = 0
        while time.monotonic() < end:
            value = worker * 1_000_000 + count
            result = executor.execute_code_blocks([ccexec.CodeBlock(f"print({value})", "python")])
            count += 1
            if result.exit_code != 0 or result.output != f"{value}\n":
                bad += 1
        with lock:
            done[0] += count
            errors[0] += bad

    workers = [
        threading.Thread(target=work, args=(executor, index * threads + t))
        for index, executor in enumerate(executors)
        for t in range(threads)
    ]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return done[0], errors[0], time.perf_counter() - started


def docker_client_rss_kib() -> list[int]:
    """RSS of this process's ``docker`` client children (the attached runners)."""
    sizes = []
    for pid in child_pids():
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8") as handle:
                if handle.read().strip() != "docker":
                    continue
        except OSError:
            continue
        sizes.append(rss_kib(pid))
    return sizes


def run() -> list[Section]:
    """Throughput and memory sections."""
    why = docker_available()
    if why is not None:
        print(f"Throughput benchmark skipped: {why}")
        return [Section("Docker throughput", f"Skipped: {why}")]
    import ccexec

    count = max(e for _, e, _ in CONFIGS)
    baseline_kib = rss_kib()
    rates: dict[str, list[float]] = {label: [] for label, _, _ in CONFIGS}
    errors: dict[str, int] = dict.fromkeys(rates, 0)
    with tempfile.TemporaryDirectory(prefix="ccexec-bench-") as tmp:
        executors = [
            ccexec.DockerCommandLineCodeExecutor(IMAGE, container_name("tput"), work_dir=os.path.join(tmp, str(i)))
            for i in range(count)
        ]
        try:
            for executor in executors:
                executor.start()
            drive(executors, 1, 1.0)  # warm-up
            for _ in range(scaled(ROUNDS)):
                for label, n_executors, threads in CONFIGS:
                    blocks, bad, elapsed = drive(executors[:n_executors], threads, DURATION)
                    rates[label].append(blocks / elapsed)
                    errors[label] += bad
            host_kib = rss_kib() - baseline_kib
            clients = docker_client_rss_kib()
            containers = container_memory([e.container_name for e in executors])
        finally:
            for executor in executors:
                executor.stop()
            remove_bench_containers()
    single = statistics.median(rates[CONFIGS[0][0]])
    rows = []
    for label, _, _ in CONFIGS:
        values = rates[label]
        rows.append(
            [
                label,
                f"{statistics.median(values):.1f} ({min(values):.1f}..{max(values):.1f})",
                f"{statistics.median(values) / single:.2f}x",
                errors[label],
            ]
        )
    throughput = Section(
        "Docker throughput (default runner mode, `print(i)` blocks)",
        md_table(["configuration", "blocks/s median (min..max)", "vs 1 executor, 1 thread", "wrong results"], rows),
        [
            f"{scaled(ROUNDS)} interleaved rounds of {DURATION:g} s per configuration, after a 1 s warm-up; "
            f"{os.cpu_count()} CPUs, so more than 2 busy workers only queue.",
        ],
    )
    container_mib = [mib(v, from_bytes=True) for v in containers.values()]
    memory_rows = [
        [
            "this process's RSS growth (Python side)",
            f"{mib(host_kib) / count:.1f}",
            f"{mib(host_kib):.1f} for {count} executors, after all rounds",
        ],
        [
            "attached `docker` client process (RSS)",
            f"{mib(statistics.mean(clients)):.1f}" if clients else "n/a",
            f"{len(clients)} client processes, {mib(sum(clients)):.1f} MiB in all",
        ],
        [
            "container memory (`docker stats`)",
            f"{statistics.mean(container_mib):.1f}" if container_mib else "n/a",
            ", ".join(f"{v:.1f}" for v in container_mib),
        ],
    ]
    memory = Section(
        "Memory per Docker executor (default mode, idle after the throughput rounds)",
        md_table(["what", "MiB per executor", "detail"], memory_rows),
    )
    return [throughput, memory]


def main() -> None:
    """Run alone: print the sections."""
    for section in run():
        print_section(section)


if __name__ == "__main__":
    main()
