"""fork_server=True against the normal spawn: one python block locally and in Docker, and throughput.

One python block ``print(1)`` per call, ccexec with and without the fork server, interleaved
rounds after a warm-up. Throughput: the configurations of ``throughput.py`` (Docker runner
mode), both modes, blocks per second.

    python3 benchmarks/fork_server.py        # Docker parts need the engine and the test image
"""

from __future__ import annotations

import os
import statistics
import tempfile
import warnings

from _harness import (
    IMAGE,
    Contender,
    Section,
    Target,
    container_name,
    docker_available,
    interleaved,
    md_table,
    print_section,
    ratio,
    remove_bench_containers,
    scaled,
)
from throughput import CONFIGS, DURATION, drive


def _one_block(executors: dict[str, object], rounds: int) -> dict[str, float]:
    import ccexec

    blocks = [ccexec.CodeBlock("print(1)", "python")]
    contenders = [Contender(name, lambda e=e: e.execute_code_blocks(blocks) and None) for name, e in executors.items()]
    return {name: series.median for name, series in interleaved(contenders, rounds).items()}


def run() -> list[Section]:
    """Latency and throughput sections, with the targets (≤ 0.3x; ≥ 4x)."""
    import ccexec

    warnings.simplefilter("ignore")
    rows, targets = [], []
    with tempfile.TemporaryDirectory(prefix="ccexec-bench-") as tmp:
        local = {
            "spawn": ccexec.LocalCommandLineCodeExecutor(work_dir=os.path.join(tmp, "a")),
            "fork": ccexec.LocalCommandLineCodeExecutor(work_dir=os.path.join(tmp, "b"), fork_server=True),
        }
        medians = _one_block(local, scaled(60))
        for e in local.values():
            e.stop()
        rows.append(
            [
                "local",
                f"{medians['spawn'] * 1e3:.1f}",
                f"{medians['fork'] * 1e3:.1f}",
                ratio(medians["fork"], medians["spawn"]),
            ]
        )
        targets.append(
            Target("Local one python block: fork server / spawn", medians["fork"] / medians["spawn"], 0.3, "x")
        )
        why = docker_available()
        sections = []
        if why is None:
            docker = {
                "spawn": ccexec.DockerCommandLineCodeExecutor(
                    IMAGE, container_name("fs"), work_dir=os.path.join(tmp, "c")
                ),
                "fork": ccexec.DockerCommandLineCodeExecutor(
                    IMAGE, container_name("ff"), work_dir=os.path.join(tmp, "d"), fork_server=True
                ),
            }
            try:
                for e in docker.values():
                    e.start()
                medians = _one_block(docker, scaled(40))
                rows.append(
                    [
                        "docker (runner)",
                        f"{medians['spawn'] * 1e3:.1f}",
                        f"{medians['fork'] * 1e3:.1f}",
                        ratio(medians["fork"], medians["spawn"]),
                    ]
                )
                targets.append(
                    Target(
                        "Docker one python block: fork server / in-container spawn (runner)",
                        medians["fork"] / medians["spawn"],
                        0.3,
                        "x",
                    )
                )
                sections.append(_throughput(tmp, targets))
            finally:
                for e in docker.values():
                    e.stop()
                remove_bench_containers()
    latency = Section(
        "Fork server: one python block (per call)",
        md_table(["where", "spawn (ms)", "fork server (ms)", "fork / spawn"], rows),
        [
            "Medians of interleaved rounds after 2 warm-up calls; the spawn column is ccexec's normal path "
            "(in Docker: the supervisor's in-container spawn, round trip from the host)."
        ],
        targets,
    )
    return [latency, *sections]


def _throughput(tmp: str, targets: list[Target]) -> Section:
    import ccexec

    count = max(e for _, e, _ in CONFIGS)
    rates: dict[tuple[str, bool], list[float]] = {}
    pools = {
        fork: [
            ccexec.DockerCommandLineCodeExecutor(
                IMAGE, container_name("tp"), work_dir=os.path.join(tmp, f"t{fork}{i}"), fork_server=fork
            )
            for i in range(count)
        ]
        for fork in (False, True)
    }
    try:
        for pool in pools.values():
            for e in pool:
                e.start()
            drive(pool, 1, 1.0)
        for _ in range(scaled(3)):
            for label, n, threads in CONFIGS:
                for fork, pool in pools.items():
                    done, bad, elapsed = drive(pool[:n], threads, DURATION)
                    assert bad == 0, f"{bad} wrong results"
                    rates.setdefault((label, fork), []).append(done / elapsed)
    finally:
        for pool in pools.values():
            for e in pool:
                e.stop()
    rows = []
    for label, _, _ in CONFIGS:
        spawn, fork = statistics.median(rates[label, False]), statistics.median(rates[label, True])
        rows.append([label, f"{spawn:.0f}", f"{fork:.0f}", f"{fork / spawn:.2f}x"])
    best = max(statistics.median(v) for (_, f), v in rates.items() if f)
    base = max(statistics.median(v) for (_, f), v in rates.items() if not f)
    targets.append(
        Target("Docker saturation throughput: spawn / fork server (inverse of the gain)", base / best, 0.25, "x")
    )
    return Section(
        "Fork server: Docker throughput (`print(i)` blocks, blocks per second)",
        md_table(["configuration", "spawn", "fork server", "gain"], rows),
        [f"{scaled(3)} interleaved rounds of {DURATION:g} s per configuration and mode; every result checked."],
    )


def main() -> None:
    """Run alone: print the sections."""
    for section in run():
        print_section(section)


if __name__ == "__main__":
    main()
