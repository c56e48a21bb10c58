"""The garbage collector judges containers by label data only, against the real engines."""

from __future__ import annotations

import datetime
import os
import subprocess
import uuid
from pathlib import Path
from typing import Iterator, Mapping

import pytest

from ccexec.backends.docker_cli import DockerCLI
from ccexec.backends.gc import (
    BOOT_LABEL,
    HOST_LABEL,
    LABEL,
    PID_LABEL,
    PIDNS_LABEL,
    START_LABEL,
    collect_garbage,
    owner_labels,
)

from .conftest import TEST_PREFIX, Engine


class Containers:
    """Test containers made straight with the CLI, each removed when the test ends."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.names: list[str] = []

    def run(self, role: str, labels: dict[str, str]) -> str:
        """Start a sleeping container with ``labels``; return its name."""
        name = f"{TEST_PREFIX}gc-{role}-{uuid.uuid4().hex[:10]}"
        self.names.append(name)  # before `run`, so that a half-created one is removed too
        argv = [self.engine.client, "run", "--detach", "--name", name]
        for key, value in labels.items():
            argv += ["--label", f"{key}={value}"]
        subprocess.run([*argv, self.engine.image, "sleep", "300"], capture_output=True, check=True, timeout=60)
        return name

    def remove(self, name: str) -> None:
        """Force-remove one container at once."""
        subprocess.run(self._remove_argv(name), capture_output=True, check=False, timeout=60)

    def remove_all(self) -> None:
        """Force-remove every container this test made."""
        # One at a time: podman's `rm --force a b` removes nothing when b is already gone.
        for name in self.names:
            self.remove(name)

    def _remove_argv(self, name: str) -> list[str]:
        cli = DockerCLI(self.engine.client)
        return [*cli.argv, *cli.remove_args(name)]


@pytest.fixture
def containers(engine: Engine) -> Iterator[Containers]:
    """A maker of test containers for this engine that removes them all at the end."""
    made = Containers(engine)
    try:
        yield made
    finally:
        made.remove_all()


def _start_time(pid: int) -> str:
    """Read a process's start time (field 22 of /proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    return stat.rsplit(")", 1)[1].split()[19]


@pytest.fixture
def dead_owner() -> tuple[str, str]:
    """The pid and start time of a child that has exited and been reaped."""
    child = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        start = _start_time(child.pid)
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)
    return str(child.pid), start


def orphan_labels(dead_owner: tuple[str, str]) -> dict[str, str]:
    """Our own labels, with the owner replaced by the dead child."""
    return {**owner_labels(), PID_LABEL: dead_owner[0], START_LABEL: dead_owner[1]}


def test_orphan_is_removed(engine: Engine, containers: Containers, dead_owner: tuple[str, str]) -> None:
    """A container of this pid namespace whose owner has exited is removed, and its name returned."""
    orphan = containers.run("orphan", orphan_labels(dead_owner))
    assert orphan in collect_garbage(DockerCLI(engine.client))
    assert engine.state(orphan) == "gone"


def test_live_owner_is_kept(engine: Engine, containers: Containers) -> None:
    """A container whose owner (this test process) still runs is kept."""
    alive = containers.run("alive", owner_labels())
    assert alive not in collect_garbage(DockerCLI(engine.client))
    assert engine.state(alive) == "running"


@pytest.mark.parametrize("forged", [PID_LABEL, HOST_LABEL])
def test_forged_label_names_no_other_container(
    engine: Engine, containers: Containers, dead_owner: tuple[str, str], forged: str
) -> None:
    """A label value with a newline and a tab naming another container removes neither of them."""
    victim = containers.run("victim", {})
    labels = orphan_labels(dead_owner)
    host, (pid, start) = labels[HOST_LABEL], dead_owner
    # In the old tab-separated listing (name, owner-pid, owner-start, host) the value starts a new
    # line that reads as the victim with a dead owner on this host; the forger's later labels end it.
    tail = {PID_LABEL: f"{victim}\t{pid}", HOST_LABEL: f"{victim}\t{pid}\t{start}\t{host}"}[forged]
    labels[forged] = f"{labels[forged]}\n{tail}"
    forger = containers.run("forger", labels)
    removed = collect_garbage(DockerCLI(engine.client))
    assert victim not in removed
    assert forger not in removed
    assert engine.state(victim) == "running"
    assert engine.state(forger) == "running"


@pytest.mark.parametrize(
    ("label", "value"),
    [(PIDNS_LABEL, "pid:[1]"), (PIDNS_LABEL, None), (BOOT_LABEL, str(uuid.uuid4())), (HOST_LABEL, None)],
    ids=["other-pidns", "no-pidns", "other-boot", "no-host"],
)
def test_owner_elsewhere_is_kept(
    engine: Engine, containers: Containers, dead_owner: tuple[str, str], label: str, value: str | None
) -> None:
    """A dead pid in another pid namespace or boot, or with a place label missing, proves nothing: kept."""
    labels = orphan_labels(dead_owner)
    assert labels[label] != value
    if value is None:
        del labels[label]
    else:
        labels[label] = value
    elsewhere = containers.run("elsewhere", labels)
    assert elsewhere not in collect_garbage(DockerCLI(engine.client))
    assert engine.state(elsewhere) == "running"


def test_dry_run_removes_nothing(engine: Engine, containers: Containers, dead_owner: tuple[str, str]) -> None:
    """With dry_run=True the orphan is reported but left running."""
    orphan = containers.run("dry", orphan_labels(dead_owner))
    assert orphan in collect_garbage(DockerCLI(engine.client), dry_run=True)
    assert engine.state(orphan) == "running"
    assert orphan in collect_garbage(DockerCLI(engine.client))


class VanishingCLI(DockerCLI):
    """A client whose engine loses one container right after a given call (a concurrent rm)."""

    def __init__(self, containers: Containers, doomed: str, after: str) -> None:
        super().__init__(containers.engine.client)
        self.containers, self.doomed, self.after = containers, doomed, after

    def run(
        self, *args: str, deadline: float | None = None, input: bytes | None = None, check: bool = True,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:  # fmt: skip
        """Run the call; after the first call starting with ``after``, remove the doomed container."""
        done = super().run(*args, deadline=deadline, input=input, check=check, env=env)
        if " ".join(args).startswith(self.after) and self.doomed in self.containers.names:
            self.containers.remove(self.doomed)
            self.containers.names.remove(self.doomed)
        return done


@pytest.mark.parametrize("after", ["ps", "container inspect"])
def test_container_vanishing_midway(
    engine: Engine, containers: Containers, dead_owner: tuple[str, str], after: str
) -> None:
    """A container removed by someone else after listing or inspection does not stop the other orphan's removal."""
    doomed = containers.run("doomed", orphan_labels(dead_owner))
    orphan = containers.run("orphan", orphan_labels(dead_owner))
    removed = collect_garbage(VanishingCLI(containers, doomed, after))
    assert orphan in removed
    assert engine.state(orphan) == "gone"
    assert engine.state(doomed) == "gone"
    if after == "ps":
        assert doomed not in removed  # never seen by inspect


def test_owner_labels_describe_this_process() -> None:
    """owner_labels() names this process, its start time, boot and pid namespace as /proc shows them."""
    labels = owner_labels()
    assert set(labels) == {LABEL, PID_LABEL, START_LABEL, HOST_LABEL, BOOT_LABEL, PIDNS_LABEL, f"{LABEL}.created"}
    assert labels[LABEL] == "1"
    assert labels[PID_LABEL] == str(os.getpid())
    assert labels[START_LABEL] == _start_time(os.getpid())
    assert labels[HOST_LABEL] == os.uname().nodename
    assert labels[BOOT_LABEL] == Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    assert labels[PIDNS_LABEL] == f"pid:[{os.stat('/proc/self/ns/pid').st_ino}]"
    created = datetime.datetime.strptime(labels[f"{LABEL}.created"], "%Y-%m-%dT%H:%M:%SZ")
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    assert abs((now - created).total_seconds()) < 60
