"""A block that starts a tree which resists dying: a TERM-ignoring child, a grandchild, and a
setsid daemon, writes their pids to pids.txt, then sleeps forever."""

import os
import signal
import subprocess
import sys
import time

signal.signal(signal.SIGTERM, signal.SIG_IGN)
ignore_term = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", ignore_term])
grandparent = subprocess.Popen(["sh", "-c", "sleep 600 & echo $! > grandchild.txt; wait"])
daemon = subprocess.Popen(
    [sys.executable, "-c", ignore_term],
    start_new_session=True,
    stdin=subprocess.DEVNULL,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)


def grandchild_pid() -> str:
    try:
        with open("grandchild.txt") as handle:
            return handle.read().strip()
    except FileNotFoundError:
        return ""


while not grandchild_pid():
    time.sleep(0.01)
grandchild = int(grandchild_pid())
with open("pids.txt", "w") as out:
    out.write("\n".join(str(p) for p in (os.getpid(), child.pid, grandparent.pid, grandchild, daemon.pid)))
print("tree started", flush=True)
time.sleep(600)
