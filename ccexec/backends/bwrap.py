"""The supervisor inside a bubblewrap sandbox (``LocalCommandLineCodeExecutor(sandbox=True)``).

One sandbox per executor: ``bwrap`` builds new mount, pid, network, IPC, UTS and cgroup
namespaces and runs the same supervisor as the local executor in them, as their PID 1
(``--as-pid-1``: the kernel then ignores every signal a block sends it, and when it exits the
kernel kills everything left in the sandbox). Blocks are spawned inside by the supervisor, so a
block costs what it costs on the host. The sandbox sees the system read-only (``/usr``, the
``/lib`` directories, a few ``/etc`` files, the interpreter and venv), its own ``/proc``,
``/dev`` and a small ``/tmp``, and the work dir: the only writable host path, at the same path.

Who the blocks are:

- an unprivileged caller: itself, in a new user namespace with no capabilities (bwrap then
  needs unprivileged user namespaces: ``check_available`` says how to enable them);
- root: ``nobody`` (65534). bwrap runs as root without a user namespace, keeps only the
  capabilities to change user, and the first lines the supervisor runs drop them and become
  nobody, before any block exists (root's processes are exempt from RLIMIT_NPROC, and a
  sandbox's root mapped to the host's root would own the host's root files). The work dir is
  given to nobody, as the Docker executor's ``hardened=True`` does.

Limits are rlimits, set hard in each shepherd before its first block (``_tree.BLOCK_LIMITS``).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from typing import Mapping, Sequence

from .._protocol import END_GRACE
from ..errors import InvalidArgumentError, SandboxUnavailableError, SupervisorGoneError
from .host import START_DEADLINE, Attached, HostBackend, supervisor_source

#: The sandbox backends ``sandbox=`` may name (True means the first).
KINDS = ("bwrap",)
#: The unprivileged user root's sandboxes run as.
NOBODY = 65534
#: Each limit's default; None is no limit. ``processes`` is per sandbox user (see README).
DEFAULT_LIMITS: dict[str, int | None] = {
    "cpu_seconds": None,  # the timeout bounds wall time already
    "address_space": 4 << 30,
    "file_size": 1 << 30,
    "open_files": 1024,
    "processes": 256,
    "tmp_size": 256 << 20,  # the private /tmp is memory: it has a size, not an rlimit
}
_RLIMITS = {
    "cpu_seconds": "RLIMIT_CPU",
    "address_space": "RLIMIT_AS",
    "file_size": "RLIMIT_FSIZE",
    "open_files": "RLIMIT_NOFILE",
    "processes": "RLIMIT_NPROC",
}
#: System directories bound read-only (or re-created as the symlinks they are, e.g. /bin -> usr/bin).
SYSTEM_PATHS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
#: What of /etc programs need: the loader's cache, certificates, alternatives, time zone, name services.
ETC_PATHS = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "ssl", "ca-certificates",
    "ca-certificates.conf", "pki", "crypto-policies", "localtime", "timezone", "nsswitch.conf",
    "mime.types", "protocols", "services", "host.conf", "gai.conf", "python3", "os-release",
)  # fmt: skip
#: Added with network=True: name resolution.
NETWORK_ETC_PATHS = ("resolv.conf", "hosts")
#: The blocks' PATH inside (the interpreter's directory goes first).
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
#: Run by the supervisor's interpreter before the supervisor when bwrap started as root: drop
#: every capability from the bounding set, then become nobody (which clears the others).
_BECOME_NOBODY = """
import ctypes as _ctypes, os as _os
_prctl = _ctypes.CDLL(None, use_errno=True).prctl
for _cap in range(64):
    _prctl(24, _cap, 0, 0, 0)  # PR_CAPBSET_DROP
_os.setgroups([])
_os.setgid(%d)
_os.setuid(%d)
if _os.getuid() != %d or _os.geteuid() != %d:
    raise SystemExit("ccexec sandbox: could not become nobody")
_os.chdir(%r)  # as nobody: the work dir may be 0700, and root here has no CAP_DAC_OVERRIDE
del _ctypes, _os, _prctl, _cap
"""
#: bwrap's messages when namespaces are refused, and what to do (lower-cased, checked in order).
_USERNS_HINTS = ("no permissions to creat", "creating new namespace failed", "setting up uid map", "unshare")
_USERNS_FIX = (
    "allow unprivileged user namespaces: `sudo sysctl -w kernel.unprivileged_userns_clone=1` (Debian before 11), "
    "`sudo sysctl -w user.max_user_namespaces=15000`, or on Ubuntu 23.10+ "
    "`sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0` (or an AppArmor profile for bwrap); "
    "in a container, run it with a seccomp profile that allows unshare"
)
INSTALL_FIX = (
    "install bubblewrap: `sudo apt-get install bubblewrap` (Debian, Ubuntu), `sudo dnf install bubblewrap` "
    "(Fedora), `sudo pacman -S bubblewrap` (Arch); or put bwrap on PATH"
)


def sandbox_kind(value: object) -> str | None:
    """The backend ``sandbox=`` names (None: no sandbox); raise InvalidArgumentError for another value."""
    if value is False or value is None:
        return None
    if value is True:
        return KINDS[0]
    if isinstance(value, str) and value in KINDS:
        return value
    raise InvalidArgumentError(f"sandbox must be True, False or one of {KINDS}, got {value!r}")


def check_limits(limits: Mapping[str, int | None] | None) -> dict[str, int | None]:
    """The defaults updated with ``limits``; raise InvalidArgumentError for an unknown name or a bad value."""
    merged = dict(DEFAULT_LIMITS)
    for name, value in (limits or {}).items():
        if name not in DEFAULT_LIMITS:
            raise InvalidArgumentError(f"unknown sandbox limit {name!r}; the limits are {sorted(DEFAULT_LIMITS)}")
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise InvalidArgumentError(f"sandbox limit {name} must be a positive int or None, got {value!r}")
        merged[name] = value
    return merged


def _sysctl(name: str) -> str | None:
    try:
        with open(f"/proc/sys/{name.replace('.', '/')}", encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return None


def check_available(bwrap: str = "bwrap") -> str:
    """Return bwrap's path; raise SandboxUnavailableError when bwrap is missing or cannot make namespaces."""
    path = shutil.which(bwrap)
    if path is None:
        raise SandboxUnavailableError(cause=f"{bwrap!r} (bubblewrap) is not on PATH", fix=INSTALL_FIX)
    if os.geteuid() == 0:
        return path  # root makes namespaces without a user namespace
    for name, refused in (
        ("kernel.unprivileged_userns_clone", "0"),
        ("user.max_user_namespaces", "0"),
        ("kernel.apparmor_restrict_unprivileged_userns", "1"),
    ):
        if _sysctl(name) == refused and not _setuid(path):
            raise SandboxUnavailableError(
                cause=f"unprivileged user namespaces are disabled ({name} = {refused})", fix=_USERNS_FIX
            )
    return path


def _setuid(path: str) -> bool:
    """Whether bwrap is installed setuid root (then it needs no unprivileged user namespaces)."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    return bool(info.st_mode & 0o4000) and info.st_uid == 0


def _covered(path: str, bound: Sequence[str]) -> bool:
    return any(path == top or path.startswith(top.rstrip("/") + "/") for top in bound)


def _parents(path: str, made: set[str]) -> list[str]:
    """Arguments making ``path``'s missing ancestors traversable (bwrap would copy a 0700 /root's mode)."""
    args: list[str] = []
    parent = os.path.dirname(path)
    chain = []
    while parent not in made and parent != os.path.dirname(parent):
        chain.append(parent)
        parent = os.path.dirname(parent)
    for directory in reversed(chain):
        args += ["--perms", "0755", "--dir", directory]
        made.add(directory)
    return args


def _tasks_of(uid: int) -> int:
    """How many tasks (processes and threads) the user runs on this host: what RLIMIT_NPROC counts."""
    count = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status", encoding="ascii", errors="replace") as handle:
                fields = dict(line.split(":", 1) for line in handle if ":" in line)
        except OSError:
            continue
        if int(fields.get("Uid", "-1 ").split()[0]) == uid:
            count += int(fields.get("Threads", "1").strip() or 1)
    return count


def _user_name() -> str:
    """The sandbox user's name."""
    if os.geteuid() == 0:
        return "nobody"
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return f"user{os.getuid()}"


def sandbox_env(python: str, overrides: Mapping[str, str | None]) -> dict[str, str]:
    """The blocks' whole environment: a small base (nothing of ours), then ``overrides``.

    PATH starts with ``python``'s directory (a venv's bin), then the system's.
    """
    bin_dir = os.path.dirname(python)
    env = {
        "PATH": SANDBOX_PATH if _covered(bin_dir, ["/usr/bin", "/bin"]) else f"{bin_dir}:{SANDBOX_PATH}",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "USER": _user_name(),
        "PYTHONIOENCODING": "utf-8",
        "PYTHONUNBUFFERED": "1",
    }
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


class BwrapBackend(HostBackend):
    """Blocks run under a supervisor that is the PID 1 of a bubblewrap sandbox.

    A host backend still: the work dir is the host's, at the same path inside.
    """

    _where = "the sandbox"

    def __init__(
        self, work_dir: str, python: str, *, read_only: Sequence[str] = (), network: bool = False,
        limits: Mapping[str, int | None] | None = None, bwrap: str = "bwrap",
    ) -> None:  # fmt: skip
        super().__init__(os.path.abspath(work_dir), os.path.abspath(python))  # no ".." left to resolve inside
        if self.as_root:  # blocks run as nobody: what is copied in is theirs
            self._copy_owner = (NOBODY, NOBODY)
        self._read_only = [os.path.abspath(path) for path in read_only]
        self._network = network
        self._limits = check_limits(limits)
        self._bwrap = bwrap
        self._etc: tempfile.TemporaryDirectory[str] | None = None

    @property
    def as_root(self) -> bool:
        """Whether the sandbox is made by root (its blocks then run as nobody)."""
        return os.geteuid() == 0

    def start(self) -> None:
        with self._lock:
            if self.alive:
                return
            self._release()
            bwrap = check_available(self._bwrap)
            if self.as_root:
                os.chown(self._work_dir, NOBODY, NOBODY)
            argv = self.argv(bwrap)
            attached = self._attached = Attached(argv, self._where, cwd=self._work_dir, env={}, keep_stderr=True)
            if attached.client.wait_ready(START_DEADLINE) is None:
                error = self._start_error(attached)
                self._release()
                raise error

    def _start_error(self, attached: Attached) -> Exception:
        """Why the supervisor did not say hello: bwrap's refusal, mapped to a cause and a fix, or a hang."""
        if attached.proc.poll() is None and attached.client.error is None:
            return SupervisorGoneError(where=self._where, reason=f"it did not start within {START_DEADLINE:g} s")
        with contextlib.suppress(subprocess.TimeoutExpired):
            attached.proc.wait(END_GRACE)
        import time

        time.sleep(0.05)  # the stderr thread may still be reading bwrap's last words
        stderr = attached.stderr_text()
        lowered = stderr.lower()
        if lowered.startswith("bwrap:") and any(hint in lowered for hint in _USERNS_HINTS):
            return SandboxUnavailableError(cause=f"bubblewrap refused to make the sandbox: {stderr}", fix=_USERNS_FIX)
        code = attached.proc.poll()
        return SupervisorGoneError(
            where=self._where, reason=f"bwrap exited with status {code}: {stderr[-500:] or 'no message'}"
        )

    def argv(self, bwrap: str) -> list[str]:
        """bwrap's command line: namespaces, capabilities, mounts, then the supervisor with its limits."""
        argv = [bwrap, "--die-with-parent", "--new-session", "--as-pid-1", "--clearenv"]
        argv += ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try", "--hostname", "ccexec"]
        if not self._network:
            argv.append("--unshare-net")
        argv += ["--cap-drop", "ALL"]
        if self.as_root:
            argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
        else:
            argv += ["--unshare-user", "--disable-userns"]
        argv += self._mounts()
        # As root, the supervisor's first lines enter the work dir, once they are nobody.
        argv += ["--chdir", "/" if self.as_root else self._work_dir]
        argv += ["--", self._python, "-I", "-S", "-c", self._source()]
        return argv + self._limit_args()

    def _mounts(self) -> list[str]:
        args: list[str] = []
        bound: list[str] = []
        for path in SYSTEM_PATHS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
                bound.append(path)
        etc = ETC_PATHS + (NETWORK_ETC_PATHS if self._network else ())
        args += ["--perms", "0755", "--dir", "/etc"]  # else bwrap makes it 0700, closed to nobody
        for name in etc:
            if os.path.lexists(f"/etc/{name}"):
                args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        users = self._users_dir()
        args += ["--ro-bind", f"{users}/passwd", "/etc/passwd", "--ro-bind", f"{users}/group", "/etc/group"]
        tmp_size = self._limits["tmp_size"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--perms", "1777"] + (["--size", str(tmp_size)] if tmp_size else []) + ["--tmpfs", "/tmp"]
        made = {"/", "/tmp", "/etc", "/proc", "/dev"}
        for path in self._interpreter_paths():
            if os.path.isdir(path) and not _covered(path, [*bound, self._work_dir]):
                args += [*_parents(path, made), "--ro-bind", path, path]
                bound.append(path)
        return [*args, *_parents(self._work_dir, made), "--bind", self._work_dir, self._work_dir]

    def _interpreter_paths(self) -> list[str]:
        """The interpreter's installation (its prefix, found from the real path of the binary) and extra paths."""
        paths = []
        for binary in (os.path.abspath(self._python), os.path.realpath(self._python)):  # a venv's, then its base's
            prefix = os.path.dirname(os.path.dirname(binary))
            paths.append(prefix if prefix not in ("/", "") else os.path.dirname(binary))
        return paths + self._read_only

    def _users_dir(self) -> str:
        """A private directory with minimal passwd and group files: root, nobody, and the sandbox's user."""
        if self._etc is None:
            self._etc = tempfile.TemporaryDirectory(prefix="ccexec-sandbox-")
        uid, gid = (NOBODY, NOBODY) if self.as_root else (os.getuid(), os.getgid())
        users = {0: ("root", 0, "/root"), NOBODY: ("nobody", NOBODY, "/nonexistent")}
        if uid not in users:
            users[uid] = (_user_name(), gid, "/tmp")
        passwd = "".join(f"{n}:x:{u}:{g}::{h}:/usr/sbin/nologin\n" for u, (n, g, h) in users.items())
        group = "".join(f"{n}:x:{g}:\n" for n, g, _ in users.values())
        for name, text in (("passwd", passwd), ("group", group)):
            path = os.path.join(self._etc.name, name)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.chmod(path, 0o644)
        os.chmod(self._etc.name, 0o755)
        return self._etc.name

    def _source(self) -> str:
        source = supervisor_source()
        if self.as_root:
            source = _BECOME_NOBODY % (NOBODY, NOBODY, NOBODY, NOBODY, self._work_dir) + source
        return source

    def _limit_args(self) -> list[str]:
        import resource

        args = []
        for name, constant in _RLIMITS.items():
            value = self._limits[name]
            if value is None:
                continue
            if name == "processes" and self.as_root:
                # Nobody's tasks anywhere on this host count too (no user namespace of its own).
                value += _tasks_of(NOBODY)
            # CPU: SIGXCPU at the limit says why; SIGKILL a second later if the block ignores it.
            hard = value + 1 if name == "cpu_seconds" else value
            args.append(f"--rlimit={getattr(resource, constant)}:{value}:{hard}")
        return args

    def _release(self) -> None:
        super()._release()
        if self._etc is not None:
            self._etc.cleanup()
            self._etc = None
