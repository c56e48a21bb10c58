"""Docker latency: per-call ``execute_code_blocks`` and executor ``start()``/``stop()``.

Contenders (same image, work dir bind-mounted at /workspace for all):
  ccexec default mode (one attached runner that spawns a process per block), ccexec
  ``mode="exec"`` (one ``docker exec`` per block), AutoGen's DockerCommandLineCodeExecutor;
  floors: a bare ``docker exec CTR python3 -c pass`` (``sh -c 'echo 1'`` for sh), and a
  process already running in the container that spawns ``python3 FILE`` (``sh FILE``) per
  request, read over a long-lived ``docker exec -i`` (its in-container time is reported too).
Lifecycle: ``start()`` and ``stop()`` of each executor vs ``docker run -d IMAGE sleep 300``
and ``docker rm -f``. AutoGen's stop() takes ~10 s (``docker stop`` of a shell that ignores
SIGTERM), so it gets 3 rounds and no warm-up.

    python3 benchmarks/docker_latency.py     # needs the engine and the test image
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
import time
import warnings
from typing import Any, Callable, Iterator

from _harness import (
    IMAGE,
    Contender,
    Extra,
    Section,
    Series,
    Target,
    autogen_available,
    container_name,
    docker,
    docker_available,
    interleaved,
    md_table,
    print_section,
    ratio,
    remove_bench_containers,
    scaled,
    sleeper_container,
)

#: case -> (blocks as (code, language), rounds)
CASES: dict[str, tuple[list[tuple[str, str]], int]] = {
    "one python block": ([("print(1)", "python")], 30),
    "one sh block": ([("echo 1", "sh")], 25),
    "ten python blocks": ([(f"print({i})", "python") for i in range(10)], 12),
}
LIFECYCLE_ROUNDS = 12
AUTOGEN_LIFECYCLE_ROUNDS = 3
RUNNER, EXEC, AUTOGEN = "ccexec (runner)", 'ccexec mode="exec"', "AutoGen Docker"
BARE_EXEC = "floor: docker exec"
SPAWN_RT = "floor: in-container spawn, round trip"
SPAWN_IN = "floor: in-container spawn, inside"

# Runs in the container: one JSON list of argvs per line; runs them in turn; prints the time.
SPAWN_LOOP = """
import json, subprocess, sys, time
for line in sys.stdin:
    argvs = json.loads(line)
    start = time.perf_counter()
    out = b""
    for argv in argvs:
        out += subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout
    print(json.dumps([time.perf_counter() - start, out.decode()]), flush=True)
"""


def expected_output(blocks: list[tuple[str, str]]) -> str:
    """What the blocks print (each prints the number at its end)."""
    return "".join(code.rstrip(")").split("(")[-1].replace("echo ", "") + "\n" for code, _ in blocks)


def _check(got: str, want: str, who: str) -> None:
    if got.replace("\r", "") != want:
        raise AssertionError(f"{who}: expected {want!r}, got {got!r}")


class Fixtures:
    """The executors and floor processes shared by every case (started once)."""

    def __init__(self, tmp: str, with_autogen: bool) -> None:
        import ccexec

        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self.runner = ccexec.DockerCommandLineCodeExecutor(
            IMAGE, container_name("runner"), work_dir=os.path.join(tmp, "runner")
        )
        self.exec = ccexec.DockerCommandLineCodeExecutor(
            IMAGE, container_name("exec"), work_dir=os.path.join(tmp, "exec"), mode="exec"
        )
        self.runner.start()
        self.exec.start()
        self.autogen: Any = None
        if with_autogen:
            from autogen_ext.code_executors.docker import DockerCommandLineCodeExecutor

            self.autogen = DockerCommandLineCodeExecutor(
                image=IMAGE, container_name=container_name("autogen"), work_dir=os.path.join(tmp, "autogen")
            )
            self.loop.run_until_complete(self.autogen.start())
        self._floor_cm = sleeper_container(tmp)
        self.floor = self._floor_cm.__enter__()
        self.spawner = subprocess.Popen(
            ["docker", "exec", "-i", self.floor, "python3", "-u", "-c", SPAWN_LOOP],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def spawn(self, argvs: list[list[str]]) -> tuple[float, str]:
        """Send one request to the in-container spawner; return (inside seconds, output)."""
        assert self.spawner.stdin is not None
        assert self.spawner.stdout is not None
        self.spawner.stdin.write(json.dumps(argvs).encode() + b"\n")
        self.spawner.stdin.flush()
        inside, output = json.loads(self.spawner.stdout.readline())
        return float(inside), str(output)

    def close(self) -> None:
        """Stop everything (AutoGen's container is removed first so its stop() is quick)."""
        with contextlib.suppress(Exception):
            assert self.spawner.stdin is not None
            self.spawner.stdin.close()
            self.spawner.wait(10)
        self._floor_cm.__exit__(None, None, None)
        self.runner.stop()
        self.exec.stop()
        if self.autogen is not None:
            docker("rm", "--force", self.autogen.container_name, check=False)
            self.loop.run_until_complete(self.autogen.stop())
        self.loop.close()


def case_contenders(fx: Fixtures, blocks: list[tuple[str, str]]) -> list[Contender]:
    """The contenders of one case."""
    import ccexec

    want = expected_output(blocks)
    code_blocks = [ccexec.CodeBlock(code, language) for code, language in blocks]
    contenders = []
    for name, executor in ((RUNNER, fx.runner), (EXEC, fx.exec)):

        def run(executor: Any = executor) -> Extra:
            executor.execute_code_blocks(code_blocks)
            return None

        def check(executor: Any = executor, name: str = name) -> None:
            _check(executor.execute_code_blocks(code_blocks).output, want, name)

        contenders.append(Contender(name, run, check=check))
    if fx.autogen is not None:
        contenders.append(autogen_contender(fx, blocks, want))
    contenders += floor_contenders(fx, blocks, want)
    return contenders


def autogen_contender(fx: Fixtures, blocks: list[tuple[str, str]], want: str) -> Contender:
    """AutoGen's executor, awaited in the fixtures' persistent event loop."""
    from autogen_core import CancellationToken
    from autogen_core.code_executor import CodeBlock

    code_blocks = [CodeBlock(code=code, language=language) for code, language in blocks]

    def call() -> Any:
        return fx.loop.run_until_complete(fx.autogen.execute_code_blocks(code_blocks, CancellationToken()))

    def run() -> Extra:
        call()
        return None

    return Contender(AUTOGEN, run, check=lambda: _check(call().output, want, AUTOGEN))


def floor_contenders(fx: Fixtures, blocks: list[tuple[str, str]], want: str) -> list[Contender]:
    """Bare docker exec per block, and the in-container spawner (round trip + inside time)."""
    bare = []
    inside = []
    for index, (code, language) in enumerate(blocks):
        extension = "py" if language == "python" else "sh"
        with open(os.path.join(fx.tmp, f"floor_{index}.{extension}"), "w", encoding="utf-8") as handle:
            handle.write(code)
        path = f"/workspace/floor_{index}.{extension}"
        bare.append(["python3", "-c", "pass"] if language == "python" else ["sh", "-c", "echo 1"])
        inside.append(["python3", path] if language == "python" else ["sh", path])

    def run_bare() -> Extra:
        for argv in bare:
            subprocess.run(["docker", "exec", fx.floor, *argv], capture_output=True, check=True)
        return None

    def run_spawn() -> Extra:
        seconds, _ = fx.spawn(inside)
        return {SPAWN_IN: seconds}

    return [
        Contender(BARE_EXEC, run_bare),
        Contender(SPAWN_RT, run_spawn, check=lambda: _check(fx.spawn(inside)[1], want, SPAWN_RT)),
    ]


def latency_section(with_autogen: bool) -> tuple[Section, dict[str, dict[str, Series]]]:
    """Per-call latency of the three cases."""
    results: dict[str, dict[str, Series]] = {}
    with tempfile.TemporaryDirectory(prefix="ccexec-bench-") as tmp:
        fx = Fixtures(tmp, with_autogen)
        try:
            for case, (blocks, rounds) in CASES.items():
                results[case] = interleaved(case_contenders(fx, blocks), scaled(rounds))
        finally:
            fx.close()
    columns = [RUNNER, EXEC, *([AUTOGEN] if with_autogen else []), BARE_EXEC, SPAWN_RT, SPAWN_IN]
    headers = ["case", *columns, "runner / spawn RT", "runner / spawn inside"]
    if with_autogen:
        headers += ["runner / AutoGen", "exec / AutoGen"]
    rows = []
    for case, series in results.items():
        ours = series[RUNNER].median
        row = [case, *[series[c].cell() for c in columns]]
        row += [ratio(ours, series[SPAWN_RT].median), ratio(ours, series[SPAWN_IN].median)]
        if with_autogen:
            row += [ratio(ours, series[AUTOGEN].median), ratio(series[EXEC].median, series[AUTOGEN].median)]
        rows.append(row)
    notes = [
        "Cells: median (min..max) in ms per call, n = timed rounds after 2 warm-up calls, contenders interleaved.",
        "Floors: `docker exec CTR python3 -c pass` (sh case: `sh -c 'echo 1'`; ten blocks: ten sequential "
        "calls); in-container spawn: a `python3 -u` already running in the container (over `docker exec -i`) "
        "runs `subprocess.run([python3, FILE])` per block; 'round trip' is host wall time of one request, "
        "'inside' the time measured in the container.",
        "AutoGen: one persistent event loop, `work_dir` a temporary directory, same image.",
    ]
    section = Section("Docker latency (per call)", md_table(headers, rows), notes)
    return section, results


def lifecycle_contenders(tmp: str, with_autogen: bool, loop: asyncio.AbstractEventLoop) -> list[Contender]:
    """start()/stop() pairs: each round starts a fresh container and removes it."""
    import ccexec

    def ccexec_pair(label: str, mode: str) -> Callable[[], Extra]:
        def pair() -> Extra:
            executor = ccexec.DockerCommandLineCodeExecutor(
                IMAGE, container_name(mode), work_dir=os.path.join(tmp, mode), mode=mode
            )
            started = time.perf_counter()
            executor.start()
            middle = time.perf_counter()
            executor.stop()
            return {f"{label} start()": middle - started, f"{label} stop()": time.perf_counter() - middle}

        return pair

    def docker_pair() -> Extra:
        name = container_name("run")
        started = time.perf_counter()
        docker("run", "-d", "--name", name, "--label", "ccexec-bench=1", IMAGE, "sleep", "300")
        middle = time.perf_counter()
        docker("rm", "-f", name)
        return {"docker run -d": middle - started, "docker rm -f": time.perf_counter() - middle}

    contenders = [
        Contender(f"{RUNNER} start+stop", ccexec_pair(RUNNER, "runner")),
        Contender(f"{EXEC} start+stop", ccexec_pair(EXEC, "exec")),
        Contender("docker run -d + rm -f", docker_pair),
    ]
    if with_autogen:
        from autogen_ext.code_executors.docker import DockerCommandLineCodeExecutor

        def autogen_pair() -> Extra:
            executor = DockerCommandLineCodeExecutor(
                image=IMAGE, container_name=container_name("autogen"), work_dir=os.path.join(tmp, "autogen")
            )
            started = time.perf_counter()
            loop.run_until_complete(executor.start())
            middle = time.perf_counter()
            loop.run_until_complete(executor.stop())
            return {f"{AUTOGEN} start()": middle - started, f"{AUTOGEN} stop()": time.perf_counter() - middle}

        contenders.append(Contender(f"{AUTOGEN} start+stop", autogen_pair, rounds=scaled(AUTOGEN_LIFECYCLE_ROUNDS)))
    return contenders


def lifecycle_section(with_autogen: bool) -> tuple[Section, dict[str, Series]]:
    """start() and stop() timings."""
    loop = asyncio.new_event_loop()
    with tempfile.TemporaryDirectory(prefix="ccexec-bench-") as tmp:
        try:
            contenders = lifecycle_contenders(tmp, with_autogen, loop)
            # AutoGen's rounds cost ~11 s each: no warm-up for it (the others get one).
            warm = [c for c in contenders if not c.name.startswith(AUTOGEN)]
            interleaved(warm, 0, warmup=1)
            results = interleaved(contenders, scaled(LIFECYCLE_ROUNDS), warmup=0)
        finally:
            loop.close()
    rows = []
    executors = [RUNNER, EXEC, *([AUTOGEN] if with_autogen else [])]
    for who in executors:
        start, stop = results[f"{who} start()"], results[f"{who} stop()"]
        row = [who, start.cell(), stop.cell(), ratio(start.median, results["docker run -d"].median)]
        row.append(ratio(stop.median, results[f"{AUTOGEN} stop()"].median) if with_autogen else "n/a")
        rows.append(row)
    rows.append(["docker CLI floor", results["docker run -d"].cell(), results["docker rm -f"].cell(), "1.00x", ""])
    headers = ["executor", "start()", "stop()", "start / docker run -d", "stop / AutoGen stop"]
    notes = [
        f"Cells: median (min..max) in ms. {scaled(LIFECYCLE_ROUNDS)} interleaved rounds (1 warm-up) for ccexec and "
        f"the CLI floor; AutoGen {scaled(AUTOGEN_LIFECYCLE_ROUNDS)} rounds, no warm-up, because its stop() waits "
        "out docker stop's 10 s grace period.",
        "start() includes the container being ready for blocks (ccexec: the runner's ready line); the floor is "
        "`docker run -d --name N IMAGE sleep 300` and `docker rm -f N`.",
    ]
    return Section("Docker lifecycle", md_table(headers, rows), notes), results


def run() -> list[Section]:
    """Both sections, with targets."""
    why = docker_available()
    if why is not None:
        print(f"Docker benchmarks skipped: {why}")
        return [Section("Docker latency", f"Skipped: {why}")]
    with_autogen = autogen_available("autogen_ext.code_executors.docker")
    try:
        latency, lat = latency_section(with_autogen)
        lifecycle, life = lifecycle_section(with_autogen)
    finally:
        remove_bench_containers()
    one, ten = lat["one python block"], lat["ten python blocks"]

    def over(value: Series, reference: str, results: dict[str, Series]) -> float | None:
        return value.median / results[reference].median if reference in results else None

    latency.targets = [
        Target("Docker one python block: ccexec / AutoGen", over(one[RUNNER], AUTOGEN, one), 0.35, "x", "docker"),
        Target(
            "Docker one python block: ccexec / in-container spawn (round trip)",
            over(one[RUNNER], SPAWN_RT, one),
            1.5,
            "x",
            "docker",
        ),
        Target("Docker ten python blocks: ccexec / AutoGen", over(ten[RUNNER], AUTOGEN, ten), 0.2, "x", "docker"),
    ]
    lifecycle.targets = [
        Target("stop(): ccexec / AutoGen", over(life[f"{RUNNER} stop()"], f"{AUTOGEN} stop()", life), 0.05, "x", ""),
        Target("start(): ccexec / docker run -d", over(life[f"{RUNNER} start()"], "docker run -d", life), 1.1, "x", ""),
    ]
    for target in (*latency.targets, *lifecycle.targets):
        target.detail = "default (runner) mode"
    return [latency, lifecycle]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main() -> None:
    """Run alone: print the sections."""
    with _quiet():
        for section in run():
            print_section(section)


if __name__ == "__main__":
    main()
