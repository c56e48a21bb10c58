"""Footprint of ``import ccexec``: import time and peak RSS, vs a bare interpreter and AutoGen.

Each sample is a fresh interpreter (this one, ``sys.executable``, with the repository on
PYTHONPATH):
  - ``python -X importtime -c "import ccexec"``: the cumulative time of the ``ccexec`` line;
  - wall time of ``python -c "import ccexec"`` minus that of ``python -c pass`` (medians);
  - peak RSS of ``pass``, ``import ccexec`` and ``import autogen_ext.code_executors.docker``:
    the child's own VmHWM, which it prints from /proc/self/status as it ends. Not ``ru_maxrss``
    from ``wait4``/RUSAGE_CHILDREN: on Linux a child's ru_maxrss starts at the peak of the
    address space it was forked with (this benchmark's process), so it would report ours.

    python3 benchmarks/footprint.py
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import time

from _harness import ROOT, Contender, Extra, Section, Target, autogen_available, md_table, print_section, scaled

ROUNDS = 25
AUTOGEN_MODULE = "autogen_ext.code_executors.docker"
_IMPORTTIME = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)\s*$")


def child_env() -> dict[str, str]:
    """Our environment with the repository first on PYTHONPATH."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


# Appended to every child's code (the same for all, so it cancels out of the differences).
_REPORT_PEAK = "\nimport sys; sys.stdout.write(open('/proc/self/status').read())"


def spawn(code: str, *flags: str) -> tuple[float, int, str]:
    """Run ``python [flags] -c code``; return (wall seconds, peak RSS KiB, stderr)."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, *flags, "-c", code + _REPORT_PEAK], env=child_env(), capture_output=True, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"python -c {code!r} failed: {done.stderr.decode()}")
    peak = re.search(rb"^VmHWM:\s+(\d+) kB", done.stdout, re.MULTILINE)
    return wall, int(peak.group(1)) if peak else 0, done.stderr.decode()


def importtime(stderr: str, module: str) -> tuple[float, list[tuple[float, str]]]:
    """The cumulative microseconds of ``module``'s line, and the (self µs, name) of all lines."""
    total = 0.0
    lines = []
    for line in stderr.splitlines():
        match = _IMPORTTIME.match(line)
        if match:
            lines.append((float(match.group(1)), match.group(4)))
            if match.group(4) == module:
                total = float(match.group(2))
    return total, lines


def measure(with_autogen: bool) -> dict[str, list[float]]:
    """Interleaved fresh interpreters; returns named samples (seconds, KiB, µs)."""
    samples: dict[str, list[float]] = {}

    def record(key: str, value: float) -> None:
        samples.setdefault(key, []).append(value)

    def bare() -> Extra:
        wall, rss, _ = spawn("pass")
        record("wall pass", wall)
        record("rss pass", rss)
        return None

    def ccexec() -> Extra:
        wall, rss, _ = spawn("import ccexec")
        record("wall ccexec", wall)
        record("rss ccexec", rss)
        _, _, stderr = spawn("import ccexec", "-X", "importtime")
        record("importtime ccexec", importtime(stderr, "ccexec")[0])
        return None

    def autogen() -> Extra:
        wall, rss, _ = spawn(f"import {AUTOGEN_MODULE}")
        record("wall autogen", wall)
        record("rss autogen", rss)
        _, _, stderr = spawn(f"import {AUTOGEN_MODULE}", "-X", "importtime")
        record("importtime autogen", importtime(stderr, AUTOGEN_MODULE)[0])
        return None

    contenders = [Contender("bare", bare), Contender("ccexec", ccexec)]
    if with_autogen:
        contenders.append(Contender("autogen", autogen, rounds=max(3, scaled(ROUNDS) // 3)))
    for contender in contenders:  # warm-up: writes bytecode caches
        contender.fn()
    samples.clear()
    for index in range(scaled(ROUNDS)):
        for contender in contenders:
            if contender.rounds is None or index < contender.rounds:
                contender.fn()
    return samples


def slowest_imports(count: int = 8) -> str:
    """The modules with the largest self time under ``import ccexec`` (one run)."""
    _, _, stderr = spawn("import ccexec", "-X", "importtime")
    _, lines = importtime(stderr, "ccexec")
    top = sorted(lines, reverse=True)[:count]
    return ", ".join(f"{name} {micro / 1000:.2f}" for micro, name in top)


def run() -> list[Section]:
    """The footprint section with its targets."""
    with_autogen = autogen_available(AUTOGEN_MODULE)
    s = measure(with_autogen)
    med = {key: statistics.median(values) for key, values in s.items()}

    def spread(key: str, scale: float, digits: int = 1) -> str:
        values = s[key]
        return (
            f"{med[key] * scale:.{digits}f} ({min(values) * scale:.{digits}f}..{max(values) * scale:.{digits}f}) "
            f"n={len(values)}"
        )

    rows = [
        ["python -c pass", "—", spread("wall pass", 1000), "—", spread("rss pass", 1 / 1024), "—"],
        [
            "import ccexec",
            spread("importtime ccexec", 1 / 1000, 2),
            spread("wall ccexec", 1000),
            f"{(med['wall ccexec'] - med['wall pass']) * 1000:.1f}",
            spread("rss ccexec", 1 / 1024),
            f"{(med['rss ccexec'] - med['rss pass']) / 1024:.2f}",
        ],
    ]
    if with_autogen:
        rows.append(
            [
                f"import {AUTOGEN_MODULE}",
                spread("importtime autogen", 1 / 1000, 2),
                spread("wall autogen", 1000),
                f"{(med['wall autogen'] - med['wall pass']) * 1000:.1f}",
                spread("rss autogen", 1 / 1024),
                f"{(med['rss autogen'] - med['rss pass']) / 1024:.2f}",
            ]
        )
    headers = [
        "interpreter runs",
        "-X importtime (ms)",
        "wall (ms)",
        "wall - bare (ms)",
        "peak RSS (MiB)",
        "RSS - bare",
    ]
    notes = [
        f"Fresh interpreters ({sys.executable}), interleaved, after one warm-up each (bytecode cached); "
        "cells: median (min..max). importtime: the `ccexec` line's cumulative time. RSS: the child's VmHWM.",
        f"Largest self times under `import ccexec`, ms (one run): {slowest_imports()}.",
    ]
    targets = [
        Target("import ccexec: -X importtime cumulative", med["importtime ccexec"] / 1000, 15, " ms", "footprint"),
        Target(
            "import ccexec: wall - bare interpreter",
            (med["wall ccexec"] - med["wall pass"]) * 1000,
            15,
            " ms",
            "footprint",
        ),
        Target(
            "import ccexec: peak RSS - bare interpreter",
            (med["rss ccexec"] - med["rss pass"]) / 1024,
            3,
            " MiB",
            "footprint",
        ),
    ]
    return [Section("Footprint of `import ccexec`", md_table(headers, rows), notes, targets)]


def main() -> None:
    """Run alone: print the section."""
    for section in run():
        print_section(section)


if __name__ == "__main__":
    main()
