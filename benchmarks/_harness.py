"""Shared benchmark helpers: interleaved rounds, statistics, Markdown tables, environment header.

Every script in this folder runs from a fresh clone (``python3 benchmarks/NAME.py``): this
module puts the repository root on ``sys.path`` so ``import ccexec`` finds the working tree.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Optional, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: The offline image the tests use (scripts/test-engine.sh builds it); never pulled.
IMAGE = os.environ.get("CCEXEC_TEST_IMAGE", "ccexec-test/python:3-slim")
#: Every container a benchmark creates is named with this prefix (and only those are removed).
PREFIX = "ccexec-bench-"
#: Multiplies every round count (CCEXEC_BENCH_SCALE=0.2 for a quick look; results then mean less).
SCALE = float(os.environ.get("CCEXEC_BENCH_SCALE", "1"))
#: What a contender may return: None, or extra named samples (seconds) it measured itself.
Extra = Optional[Mapping[str, float]]


@dataclass
class Contender:
    """One thing to time: ``fn`` is called once per round; ``rounds`` caps its rounds (None: all)."""

    name: str
    fn: Callable[[], Extra]
    rounds: int | None = None
    check: Callable[[], None] | None = None  # run once before the warm-up: asserts the output is right


@dataclass
class Series:
    """Samples of one measurement, in seconds."""

    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        """The median sample."""
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        """The fastest sample."""
        return min(self.samples)

    @property
    def max(self) -> float:
        """The slowest sample."""
        return max(self.samples)

    def cell(self, unit: str = "ms") -> str:
        """``median (min..max)`` in ``unit`` (``ms`` or ``s``)."""
        scale = 1000.0 if unit == "ms" else 1.0
        digits = 1 if unit == "ms" else 2
        return (
            f"{self.median * scale:.{digits}f} ({self.min * scale:.{digits}f}..{self.max * scale:.{digits}f}) "
            f"n={len(self.samples)}"
        )


def scaled(rounds: int) -> int:
    """A round count times CCEXEC_BENCH_SCALE, at least 1."""
    return max(1, round(rounds * SCALE))


def interleaved(contenders: Sequence[Contender], rounds: int, warmup: int = 2) -> dict[str, Series]:
    """Check each contender, warm each up, then time rounds A, B, C, A, B, C, ...

    Returns one Series per contender name (wall time of ``fn``) plus one per extra name a
    contender returned. A contender with ``rounds`` set takes part in that many rounds only.
    """
    for contender in contenders:
        if contender.check is not None:
            contender.check()
    for _ in range(warmup):
        for contender in contenders:
            contender.fn()
    results: dict[str, Series] = {c.name: Series() for c in contenders}
    for index in range(rounds):
        for contender in contenders:
            if contender.rounds is not None and index >= contender.rounds:
                continue
            started = time.perf_counter()
            extra = contender.fn()
            results[contender.name].samples.append(time.perf_counter() - started)
            for key, value in (extra or {}).items():
                results.setdefault(key, Series()).samples.append(value)
    return results


def ratio(value: float, reference: float) -> str:
    """Format ``value / reference`` as ``0.31x``."""
    if reference <= 0:
        return "n/a"
    return f"{value / reference:.2f}x"


def md_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render a GitHub Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Target:
    """A goal: ``value`` (measured) must be at most ``limit``; ``what`` says what is compared."""

    what: str
    value: float | None
    limit: float
    unit: str  # "x" for ratios, "ms", "MiB"
    detail: str = ""

    @property
    def verdict(self) -> str:
        """PASS, MISS, or SKIP when the measurement is missing."""
        if self.value is None:
            return "SKIP"
        return "PASS" if self.value <= self.limit else "MISS"

    def row(self) -> list[str]:
        """The row of the targets table."""
        digits = 3 if self.unit == "x" else 2
        measured = "n/a" if self.value is None else f"{self.value:.{digits}f}{self.unit}"
        limit = f"{'<' if self.unit != 'x' else '≤'} {self.limit:g}{self.unit}"
        return [self.what, measured, limit, self.verdict, self.detail]


@dataclass
class Section:
    """One section of RESULTS.md: a title, a table, notes, and the targets it measured."""

    title: str
    table: str
    notes: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def markdown(self) -> str:
        """The section as Markdown."""
        parts = [f"## {self.title}", "", self.table]
        if self.notes:
            parts += ["", *[f"- {note}" for note in self.notes]]
        return "\n".join(parts) + "\n"


def targets_table(targets: Sequence[Target]) -> str:
    """The targets table."""
    return md_table(["target", "measured", "limit", "verdict", "from"], [t.row() for t in targets])


def _command_output(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    return (done.stdout.strip() or done.stderr.strip() or "?").splitlines()[0]


def environment_header() -> str:
    """Machine, Python, engine and repository versions, and the date, as a Markdown list."""
    engine = _command_output(
        ["docker", "version", "--format", "client {{.Client.Version}}, server {{.Server.Version}} ({{.Server.Os}})"]
    )
    driver = _command_output(["docker", "info", "--format", "{{.Driver}}, cgroup {{.CgroupVersion}}"])
    commit = _command_output(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = _command_output(["git", "-C", str(ROOT), "status", "--porcelain", "--", "ccexec"])
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        cpu = platform.processor() or "?"
    memory = "?"
    with contextlib.suppress(OSError, StopIteration, ValueError):
        kib = next(line for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        memory = f"{int(kib.split()[1]) / 2**20:.1f} GiB"
    lines = [
        f"- date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- machine: {platform.platform()}, {os.cpu_count()} CPUs (nproc {_command_output(['nproc'])}), {cpu}, "
        f"{memory} RAM",
        f"- Python: {platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        f"- docker: {engine} via {shutil.which('docker')}; storage {driver}; image {IMAGE}",
        f"- ccexec: commit {commit}{' + uncommitted changes in ccexec/' if dirty not in ('?', '') else ''}",
    ]
    try:
        from importlib.metadata import version

        lines.append(f"- autogen-ext: {version('autogen-ext')}")
    except Exception:  # noqa: BLE001 - any failure means "not installed"
        lines.append("- autogen-ext: not installed (AutoGen columns skipped)")
    return "\n".join(lines)


# -- optional AutoGen ---------------------------------------------------------------------------


def autogen_available(module: str = "autogen_ext.code_executors.local") -> bool:
    """Whether AutoGen's executors import; prints why not when they don't."""
    try:
        __import__(module)
        __import__("autogen_core")
    except ImportError as exc:
        print(f"AutoGen is not available ({exc}); its column is skipped. `pip install autogen-ext[docker]==0.7.5`")
        return False
    return True


# -- docker ---------------------------------------------------------------------------------------


def docker_available() -> str | None:
    """None when the engine answers and the image is present, else why not."""
    if shutil.which("docker") is None:
        return "no docker client on PATH"
    done = subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return f"docker image inspect {IMAGE} failed: {done.stderr.strip()} (run scripts/test-engine.sh)"
    return None


def container_name(kind: str) -> str:
    """A fresh container name carrying the benchmark prefix."""
    return f"{PREFIX}{kind}-{uuid.uuid4().hex[:8]}"


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run one docker CLI command, capturing its output."""
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout, check=check)


def remove_bench_containers() -> None:
    """Remove every container whose name starts with the benchmark prefix (ours only)."""
    done = docker("ps", "--all", "--filter", f"name=^/{PREFIX}", "--format", "{{.Names}}", check=False)
    names = [n for n in done.stdout.split() if n.startswith(PREFIX)]
    if names:
        docker("rm", "--force", *names, check=False)


@contextlib.contextmanager
def sleeper_container(work_dir: str) -> Iterator[str]:
    """A detached container of IMAGE that sleeps, with ``work_dir`` mounted at /workspace."""
    name = container_name("floor")
    docker(
        "run", "-d", "--name", name, "--label", "ccexec-bench=1",
        "-v", f"{work_dir}:/workspace", "-w", "/workspace", IMAGE, "sleep", "3600",
    )  # fmt: skip
    try:
        yield name
    finally:
        docker("rm", "--force", name, check=False)


# -- memory ---------------------------------------------------------------------------------------


def rss_kib(pid: int | str = "self") -> int:
    """Current resident set size of a process, KiB (0 when unknown)."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path(f"/proc/{pid}/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmRSS:")).split()[1])
    return 0


def peak_rss_kib() -> int:
    """Peak resident set size of this process since the last ``reset_peak_rss()``, KiB."""
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text()
        return int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux clear_refs); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def child_pids(pid: int | None = None) -> list[int]:
    """Direct children of a process (Linux /proc)."""
    pid = os.getpid() if pid is None else pid
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                children += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return children


def parse_size(text: str) -> float:
    """``12.5MiB`` (docker stats) -> bytes."""
    units = {"B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "KB": 1e3, "MB": 1e6, "GB": 1e9}
    text = text.strip()
    number = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
    return float(number) * units.get(text[len(number) :].upper(), 1)


def container_memory(names: Sequence[str]) -> dict[str, float]:
    """Memory use of containers from ``docker stats --no-stream``, bytes by name."""
    if not names:
        return {}
    done = docker("stats", "--no-stream", "--format", "{{json .}}", *names, check=False)
    usage = {}
    for line in done.stdout.splitlines():
        with contextlib.suppress(ValueError, KeyError):
            row = json.loads(line)
            usage[row["Name"]] = parse_size(row["MemUsage"].split("/")[0])
    return usage


def mib(kib_or_bytes: float, *, from_bytes: bool = False) -> float:
    """KiB (or bytes) -> MiB."""
    return kib_or_bytes / (2**20 if from_bytes else 2**10)


def print_section(section: Section) -> None:
    """Print a section to stdout (what a script run alone shows)."""
    print()
    print(section.markdown())
    if section.targets:
        print(targets_table(section.targets))
    sys.stdout.flush()
