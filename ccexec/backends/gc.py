"""Owner labels for ccexec containers, and the garbage collector that reads them back as data.

A container is an orphan only when its labels prove that its owner ran in this very pid
namespace (same host name, boot and pid namespace) and that the owner process is gone. Every
label value is compared as an opaque string: nothing is ever parsed out of a text listing, so a
value holding newlines or tabs cannot name another container. Containers are removed by ID.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Mapping, Sequence

from ..errors import ContainerGoneError, DockerError
from .docker_cli import DockerCLI

LABEL = "org.ccexec"
PID_LABEL = f"{LABEL}.owner-pid"
START_LABEL = f"{LABEL}.owner-start"
HOST_LABEL = f"{LABEL}.host"
BOOT_LABEL = f"{LABEL}.boot-id"
PIDNS_LABEL = f"{LABEL}.pidns"
CREATED_LABEL = f"{LABEL}.created"

#: The labels that say where the owner's pid means something; all must equal ours.
_PLACE_LABELS = (HOST_LABEL, BOOT_LABEL, PIDNS_LABEL)
# ASCII digits only (str.isdigit() also accepts other scripts' digits); no sign, no spaces.
_DECIMAL = re.compile(r"[0-9]{1,19}")
_PID_MAX = 2**22  # the kernel's upper bound for pid_max (PID_MAX_LIMIT on 64-bit)
# What `ps --quiet --no-trunc` prints for both engines; also keeps an ID from reading as a flag.
_CONTAINER_ID = re.compile(r"[0-9a-f]{12,64}")


def owner_labels() -> dict[str, str]:
    """Return the labels naming this process as a container's owner; unknown /proc data is ''."""
    return {
        LABEL: "1",
        PID_LABEL: str(os.getpid()),
        START_LABEL: _start_time("self"),
        HOST_LABEL: os.uname().nodename,
        BOOT_LABEL: _boot_id(),
        PIDNS_LABEL: _pid_namespace(),
        CREATED_LABEL: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def collect_garbage(cli: DockerCLI, *, dry_run: bool = False) -> list[str]:
    """Remove ccexec containers whose owner process is gone; return their names.

    Only containers whose host, boot-id and pid-namespace labels equal this process's are
    judged; any other, or one with a malformed owner pid, is left alone. ``dry_run`` removes
    nothing. Raises DockerError when the engine fails (a container vanishing meanwhile is fine).
    """
    candidates = _candidate_ids(cli)
    if not candidates:
        return []
    place, listed = _place(), set(candidates)
    orphans: dict[str, str] = {}
    for container in _inspect(cli, candidates):
        found = _orphan(container, listed, place)
        if found is not None:
            orphans[found[0]] = found[1]
    if orphans and not dry_run:
        _remove(cli, list(orphans))
    return list(orphans.values())


def _candidate_ids(cli: DockerCLI) -> list[str]:
    """Return the full IDs of every container carrying ccexec's label."""
    done = cli.run(*cli.labelled_args(LABEL))
    ids = done.stdout.decode("ascii", "replace").split()
    return list(dict.fromkeys(i for i in ids if _CONTAINER_ID.fullmatch(i)))


def _inspect(cli: DockerCLI, ids: Sequence[str]) -> list[object]:
    """Return the engine's inspect objects for ``ids``, skipping containers that vanished."""
    done = cli.run(*cli.inspect_args(*ids), check=False)
    if done.returncode == 0:
        return _inspect_objects(cli, ids, done.stdout)
    # One ID that vanished since `ps` fails the whole call (docker exits 1, podman 125), and
    # whether the others are still printed is not promised: ask again, one at a time.
    containers: list[object] = []
    for container_id in ids:
        try:
            single = cli.run(*cli.inspect_args(container_id))
        except ContainerGoneError:
            continue
        containers += _inspect_objects(cli, [container_id], single.stdout)
    return containers


def _inspect_objects(cli: DockerCLI, ids: Sequence[str], stdout: bytes) -> list[object]:
    """Decode ``inspect`` output, a JSON list of objects; raise DockerError if it is not one."""
    try:
        value: object = json.loads(stdout.decode("utf-8", "replace"))
    except ValueError as exc:
        argv = [*cli.argv, "container", "inspect", *ids]
        raise DockerError(f"`{cli.name} container inspect` did not print JSON: {exc}", command=argv) from exc
    if not isinstance(value, list):
        argv = [*cli.argv, "container", "inspect", *ids]
        raise DockerError(f"`{cli.name} container inspect` printed {type(value).__name__}, not a list", command=argv)
    return value


def _orphan(container: object, candidates: set[str], place: Mapping[str, str]) -> tuple[str, str] | None:
    """Return (ID, name) when ``container`` is provably an orphan of this pid namespace, else None."""
    found = _identity(container, candidates)
    if found is None:
        return None
    container_id, name, labels = found
    # A place label missing or different: the owner pid means nothing here, not ours to judge.
    if LABEL not in labels or any(labels.get(key) != place[key] for key in _PLACE_LABELS):
        return None
    pid, start = labels.get(PID_LABEL), labels.get(START_LABEL)
    if not isinstance(pid, str) or not _DECIMAL.fullmatch(pid) or not 0 < int(pid) <= _PID_MAX:
        return None
    if not _owner_gone(int(pid), start if isinstance(start, str) else ""):
        return None
    return container_id, name


def _identity(container: object, candidates: set[str]) -> tuple[str, str, dict[object, object]] | None:
    """Return a listed container's ID, name (no leading '/') and labels, or None if malformed."""
    if not isinstance(container, dict):
        return None
    container_id, name, config = container.get("Id"), container.get("Name"), container.get("Config")
    if not isinstance(container_id, str) or container_id not in candidates or not isinstance(name, str):
        return None
    labels = config.get("Labels") if isinstance(config, dict) else None
    if not isinstance(labels, dict):
        return None
    return container_id, name.removeprefix("/"), labels


def _owner_gone(pid: int, start: str) -> bool:
    """Return whether ``pid`` is not running, or runs a newer process than the one started at ``start``."""
    try:
        os.kill(pid, 0)  # existence only, and it sees processes that /proc hides (hidepid=)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # it exists, owned by another user
    current = _start_time(str(pid))
    # Without both start times a reused pid cannot be told from the owner: keep the container.
    return bool(current) and bool(_DECIMAL.fullmatch(start)) and current != start


def _remove(cli: DockerCLI, ids: Sequence[str]) -> None:
    """Force-remove containers by ID; one that is already gone or going is not an error."""
    # One ID per call: podman (4.3 at least) given `rm --force` with one ID that vanished removes
    # none of the others and still exits 0 (podman issue #21529).
    for container_id in ids:
        try:
            cli.run(*cli.remove_args(container_id))
        except ContainerGoneError:
            continue
        except DockerError as exc:
            if "already in progress" not in str(getattr(exc, "stderr", "")):
                raise


def _place() -> dict[str, str]:
    """Return this process's host, boot and pid-namespace labels."""
    return {HOST_LABEL: os.uname().nodename, BOOT_LABEL: _boot_id(), PIDNS_LABEL: _pid_namespace()}


def _start_time(pid: str) -> str:
    """Return the process's start time in clock ticks (/proc/PID/stat field 22), or ''."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            # The command name (field 2) may hold spaces and ')': split after its last ')'.
            return handle.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _boot_id() -> str:
    """Return the kernel's boot ID, or '' when /proc does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii", errors="replace") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    """Return this process's pid namespace, as ``pid:[INODE]``, or '' when /proc does not say."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
