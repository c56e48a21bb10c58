"""`python -m ccexec doctor` against the real engine."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def doctor(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ccexec", "doctor", *args],
        capture_output=True,
        encoding="utf-8",
        cwd=ROOT,
        env=env,
        timeout=180,
        check=False,
    )


def test_doctor_all_ok(docker_engine: str) -> None:
    """With the engine up and the image present every check passes, bind mounts included."""
    done = doctor("--image", docker_engine)
    assert done.returncode == 0, done.stdout
    lines = done.stdout.splitlines()
    assert [line.split("]")[0] for line in lines] == ["[ok  "] * 5
    assert "API" in lines[1]
    assert "bind mounts" in lines[4]


def test_doctor_missing_image_advises(docker_engine: str) -> None:
    """A missing image fails with advice to load or import one."""
    done = doctor("--image", "ccexec-test/absent:0")
    assert done.returncode == 1
    assert "[FAIL] image" in done.stdout
    assert "load -i" in done.stdout


def test_doctor_unreachable_engine_names_docker_host(docker_engine: str) -> None:
    """A bogus DOCKER_HOST is named in the failure, with advice."""
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/ccexec-doctor.sock"}
    done = doctor(env=env)
    assert done.returncode == 1
    assert "DOCKER_HOST=unix:///nonexistent/ccexec-doctor.sock" in done.stdout
    assert "->" in done.stdout


def test_doctor_missing_client() -> None:
    """A client that is not installed is reported, not raised."""
    done = doctor("--docker", "ccexec-no-such-client")
    assert done.returncode == 1
    assert done.stdout.startswith("[FAIL] client")
