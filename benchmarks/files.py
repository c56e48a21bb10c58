"""Files in and out: ``copy_to`` + ``copy_from`` against plain ``docker cp`` of the same data, and
what listing ``result.files`` costs per call in a work dir of 10,000 files.

Copies: one 100 MB file, and a folder of 1,000 files of 1 KiB, into a container whose work dir
is not mounted (``mount_work_dir=False``: the path a remote engine takes) and back to a fresh
host folder; plain ``docker cp HOST CTR:/workspace/...`` then ``docker cp CTR:... HOST`` of the
same data into the same container is the floor. Rounds interleave (A, B, A, B...), each writes
a new host folder, removed after the round's timing.
Listing: a trivial block in a work dir holding 10,000 files, with ``list_files`` on and off
(local executor; Docker mounted, where the host lists; Docker without a mount, where the
supervisor walks, also with a nearly empty work dir), the bare host walk
(``_listing.changed``) and the host's listing from inotify events (``_changes.Changes``,
which a work dir that large gets).

    python3 benchmarks/files.py     # needs the engine and the test image
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

from _harness import (
    IMAGE,
    Contender,
    Section,
    Series,
    Target,
    container_name,
    docker,
    docker_available,
    interleaved,
    md_table,
    print_section,
    ratio,
    remove_bench_containers,
    scaled,
)

COPY_ROUNDS = 7
LIST_ROUNDS = 30
FILES_IN_WORK_DIR = 10_000


def _make_data(root: Path) -> dict[str, Path]:
    """One 100 MB file and a folder of 1,000 files of 1 KiB (random bytes)."""
    root.mkdir(parents=True)
    big = root / "big.bin"
    with open(big, "wb") as handle:
        for _ in range(100):
            handle.write(os.urandom(1_000_000))
    small = root / "small"
    small.mkdir()
    for index in range(1000):
        (small / f"f{index:04d}.bin").write_bytes(os.urandom(1024))
    return {"one 100 MB file": big, "1,000 files of 1 KiB": small}


def _same(left: Path, right: Path) -> None:
    """Assert two files or folders hold the same bytes."""
    if left.is_dir():
        assert sorted(os.listdir(left)) == sorted(os.listdir(right)), (left, right)
        for name in os.listdir(left):
            _same(left / name, right / name)
    else:
        assert left.read_bytes() == right.read_bytes(), (left, right)


def copy_section(tmp: Path) -> Section:
    """ccexec's copies vs plain docker cp, per data set."""
    import ccexec

    data = _make_data(tmp / "data")
    rows, targets = [], []
    executor = ccexec.DockerCommandLineCodeExecutor(
        IMAGE, container_name("files"), work_dir=tmp / "work", mount_work_dir=False
    )
    with executor:
        docker("exec", executor.container_name, "mkdir", "-p", "/workspace/plain")  # docker cp makes no folder
        counter = [0]

        def fresh() -> Path:
            counter[0] += 1
            return tmp / "out" / str(counter[0])

        for label, source in data.items():
            name = source.name

            def ours(source: Path = source, name: str = name) -> None:
                out = fresh()
                executor.copy_to(source, "ours/")
                executor.copy_from(f"ours/{name}", out)
                shutil.rmtree(out.parent, ignore_errors=True)

            def plain(source: Path = source, name: str = name) -> None:
                out = fresh()
                out.parent.mkdir(parents=True, exist_ok=True)
                docker("cp", str(source), f"{executor.container_name}:/workspace/plain/")
                docker("cp", f"{executor.container_name}:/workspace/plain/{name}", str(out))
                shutil.rmtree(out.parent, ignore_errors=True)

            def check(source: Path = source, name: str = name) -> None:
                out = tmp / "check" / name
                executor.copy_to(source, "ours/")
                executor.copy_from(f"ours/{name}", out)
                _same(source, out)
                shutil.rmtree(out.parent)

            results = interleaved(
                [Contender("ccexec", ours, check=check), Contender("docker cp", plain)], scaled(COPY_ROUNDS), warmup=1
            )
            ccexec_s, plain_s = results["ccexec"], results["docker cp"]
            rows.append([label, ccexec_s.cell(), plain_s.cell(), ratio(ccexec_s.median, plain_s.median)])
            targets.append(
                Target(f"copy_to + copy_from, {label}, vs docker cp", ccexec_s.median / plain_s.median, 1.2, "x",
                       "files.py")
            )  # fmt: skip
    table = md_table(["data (in, then out)", "ccexec copy_to + copy_from, ms", "plain docker cp, ms", "ratio"], rows)
    notes = [
        "Both go through the same engine API (`docker cp` streams a tar); ccexec writes and reads that tar "
        "itself (Python `tarfile`) so it can check every member before it touches the host disk.",
        "Plain `docker cp` copies into a folder made before the rounds (it makes no missing folder); "
        "ccexec makes its folder within its one call.",
    ]
    return Section("Files in and out (docker cp, no mount)", table, notes, targets)


def _fill(folder: Path) -> None:
    """FILES_IN_WORK_DIR small files in 100 folders."""
    for index in range(FILES_IN_WORK_DIR):
        sub = folder / f"d{index % 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{index}.txt").write_bytes(b"x")


def listing_section(tmp: Path) -> Section:
    """Per-call cost of result.files with 10,000 files in the work dir."""
    import ccexec
    from ccexec._changes import Changes
    from ccexec._listing import changed

    rows = []
    setups: list[tuple[str, Callable[[Path], Any]]] = [
        ("local", lambda work: ccexec.LocalCommandLineCodeExecutor(work_dir=work)),
        ("Docker, mounted (host lists)", lambda work: ccexec.DockerCommandLineCodeExecutor(
            IMAGE, container_name("list"), work_dir=work)),
        ("Docker, no mount (container walks)", lambda work: ccexec.DockerCommandLineCodeExecutor(
            IMAGE, container_name("list"), work_dir=work, mount_work_dir=False)),
        ("Docker, no mount, nearly empty work dir", lambda work: ccexec.DockerCommandLineCodeExecutor(
            IMAGE, container_name("list"), work_dir=work, mount_work_dir=False)),
    ]  # fmt: skip
    for label, make in setups:
        work = tmp / f"list-{len(rows)}"
        empty = "empty" in label
        if empty:
            work.mkdir()
        else:
            _fill(work)
        with make(work) as executor:
            if not getattr(executor, "mounts_work_dir", True) and not empty:
                executor.copy_to(work, ".")  # the same 10,000 files inside the container
                for entry in os.listdir(work):
                    shutil.rmtree(work / entry)
                run = executor.execute_code_blocks([ccexec.CodeBlock("find . -type f | wc -l", "sh")])
                assert int(run.output.split()[0]) >= FILES_IN_WORK_DIR, run.output
            off = ccexec_toggle(executor, False)
            on = ccexec_toggle(executor, True)
            results = interleaved([Contender("off", off), Contender("on", on)], scaled(LIST_ROUNDS))
        cost = results["on"].median - results["off"].median
        rows.append([label, results["off"].cell(), results["on"].cell(), f"{cost * 1000:.1f}"])
    walk = tmp / "walk"
    _fill(walk)
    series = Series()
    for _ in range(scaled(LIST_ROUNDS)):
        started = time.perf_counter()
        changed(str(walk), time.time_ns(), 1000)
        series.samples.append(time.perf_counter() - started)
    rows.append(["bare host walk (`_listing.changed`)", "", series.cell(), f"{series.median * 1000:.1f}"])
    changes, series = Changes(str(walk)), Series()
    changes.listing(changes.begin(), 1000, ())  # a walk, then watched
    for index in range(scaled(LIST_ROUNDS)):
        started = time.perf_counter()
        began = changes.begin()
        (walk / "new.txt").write_text(str(index))
        assert changes.listing(began, 1000, ()) == (["new.txt"], False)
        series.samples.append(time.perf_counter() - started)
    changes.close()
    rows.append(
        ["bare host listing from events (`_changes.Changes`)", "", series.cell(), f"{series.median * 1000:.2f}"]
    )
    table = md_table(["work dir of 10,000 files", "call, list_files off, ms", "call, list_files on, ms",
                      "listing cost per call, ms"], rows)  # fmt: skip
    return Section("Listing result.files", table, ["Each call runs `echo 1 > new.txt` (sh)."])


def ccexec_toggle(executor: Any, on: bool) -> Callable[[], None]:
    """One call of a trivial block with result.files listed (``on``) or not."""
    import ccexec

    def call() -> None:
        executor.list_files = on
        result = executor.execute_code_blocks([ccexec.CodeBlock("echo 1 > new.txt", "sh")])
        assert result.exit_code == 0, result.output
        assert bool(result.files) is on, result.files

    return call


def run() -> list[Section]:
    """Both sections (skipped without the engine)."""
    why = docker_available()
    if why is not None:
        print(f"files benchmark skipped: {why}")
        return [Section("Files in and out", f"Skipped: {why}")]
    warnings.simplefilter("ignore")
    with tempfile.TemporaryDirectory(prefix="ccexec-bench-files-") as tmp:
        try:
            return [copy_section(Path(tmp)), listing_section(Path(tmp))]
        finally:
            remove_bench_containers()


def main() -> None:
    for section in run():
        print_section(section)


if __name__ == "__main__":
    main()
