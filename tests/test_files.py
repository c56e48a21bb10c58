"""copy_to / copy_from and result.files on every kind of executor, against the real engines.

Configurations: local; Docker with the work dir mounted (the host copier); Docker without a
mount (docker cp), in runner and exec mode; Podman with and without a mount; this Docker engine
over SSH, which picks no mount by itself. The archive checks also run without an engine.
"""

from __future__ import annotations

import functools
import io
import os
import stat
import tarfile
import time
import warnings
from pathlib import Path
from typing import Iterator, Union

import pytest

import ccexec
from ccexec import CcexecError, CodeBlock, DockerCommandLineCodeExecutor, LocalCommandLineCodeExecutor
from ccexec._files import Writer, copy_tree
from ccexec.backends.docker_files import _extract
from ccexec.errors import CopyTooLargeError, HostPathExistsError, UnsafeFileError, WorkFileNotFoundError, WorkPathError

from .conftest import TEST_IMAGE, TEST_PREFIX, unavailable
from .test_engines import SSH_CONTEXT, cli

Executor = Union[LocalCommandLineCodeExecutor, DockerCommandLineCodeExecutor]

#: Names that break naive code: a space, non-ASCII, a newline, a leading dash.
ODD_NAMES = ["with space.csv", "ünïcödé-数据.txt", "new\nline.txt", "-leading-dash", "--", "a:colon"]

CONFIGS = [
    pytest.param("local", id="local"),
    pytest.param("docker-mount", id="docker-mount", marks=pytest.mark.docker),
    pytest.param("docker-cp", id="docker-cp", marks=pytest.mark.docker),
    pytest.param("docker-cp-exec", id="docker-cp-exec", marks=pytest.mark.docker),
    pytest.param("podman-cp", id="podman-cp", marks=pytest.mark.docker),
    pytest.param("podman-mount", id="podman-mount", marks=pytest.mark.docker),
    pytest.param("ssh", id="ssh", marks=pytest.mark.docker),
    pytest.param("sandbox", id="sandbox"),
]


def _engine_ready(request: pytest.FixtureRequest, config: str) -> list[str]:
    """The client argv for ``config`` once its engine answers; skip (or fail in CI) otherwise."""
    if config.startswith("docker"):
        request.getfixturevalue("docker_engine")
        return ["docker"]
    if config.startswith("podman"):
        request.getfixturevalue("podman_engine")
        return ["podman"]
    request.getfixturevalue("docker_engine")
    out = cli("docker", "context", "inspect", "--format", "{{.Endpoints.docker.Host}}", SSH_CONTEXT)
    if out.returncode != 0 or not out.stdout.strip().startswith("ssh://"):
        unavailable(request, f"no docker context {SSH_CONTEXT} over ssh (run scripts/test-engine.sh --sshd)")
    return ["docker", "--context", SSH_CONTEXT]


@pytest.fixture(params=CONFIGS)
def executor(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Executor]:
    """A started executor of each configuration, its work dir ``tmp_path/work``."""
    config: str = request.param
    work = tmp_path / "work"
    made: Executor
    if config == "local":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            made = LocalCommandLineCodeExecutor(timeout=20, work_dir=work)
    elif config == "sandbox":
        request.getfixturevalue("bwrap_sandbox")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            made = LocalCommandLineCodeExecutor(timeout=20, work_dir=work, sandbox=True)
    else:
        for variable in ("DOCKER_HOST", "DOCKER_CONTEXT", "CONTAINER_HOST"):
            monkeypatch.delenv(variable, raising=False)
        client = _engine_ready(request, config)
        mount = None if config == "ssh" else config.endswith("mount")
        made = DockerCommandLineCodeExecutor(
            TEST_IMAGE, f"{TEST_PREFIX}files-{os.urandom(4).hex()}", timeout=20, work_dir=work, docker=client,
            mount_work_dir=mount, mode="exec" if config.endswith("exec") else "runner",
        )  # fmt: skip
        assert made.mounts_work_dir is config.endswith("mount")
    with made:
        yield made


def make_tree(root: Path) -> dict[str, bytes | str]:
    """Write a tree of odd names and random bytes under ``root``; return {relative name: bytes, or link target}."""
    expected: dict[str, bytes | str] = {}
    for index, name in enumerate(ODD_NAMES):
        folder = root / ("sub dir" if index % 2 else "") / ("-deep" if index % 3 == 0 else "")
        folder.mkdir(parents=True, exist_ok=True)
        data = os.urandom(1000 + index * 4099)
        (folder / name).write_bytes(data)
        expected[str((folder / name).relative_to(root))] = data
    (root / "empty").write_bytes(b"")
    expected["empty"] = b""
    os.symlink("sub dir/" + ODD_NAMES[1], root / "link inside")  # leads inside the copy: kept as a link
    expected["link inside"] = "sub dir/" + ODD_NAMES[1]
    return expected


def read_tree(root: Path) -> dict[str, bytes | str]:
    """{relative name: bytes, or link target} of every file and link under ``root``."""
    found: dict[str, bytes | str] = {}
    for folder, dirs, files in os.walk(root):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(folder, d))]:
            path = Path(folder, name)
            relative = str(path.relative_to(root))
            found[relative] = os.readlink(path) if path.is_symlink() else path.read_bytes()
    return found


def run(executor: Executor, code: str, language: str = "sh") -> ccexec.CommandLineCodeResult:
    """Run one block; it must succeed."""
    result = executor.execute_code_blocks([CodeBlock(code, language)])
    assert result.exit_code == 0, result.output
    return result


# -- round trips ---------------------------------------------------------------------------------


def test_round_trip_of_a_tree_with_odd_names(executor: Executor, tmp_path: Path) -> None:
    """A directory of odd names goes in and comes back byte-identical; the code sees it where copied."""
    source = tmp_path / "data set"
    expected = make_tree(source)
    copied_in = executor.copy_to(source, "in/")
    assert copied_in == sorted(copied_in)
    assert {"in/data set", "in/data set/empty", "in/data set/link inside"} <= set(copied_in)
    listing = run(executor, "import os\nprint(sorted(os.listdir('in/data set/sub dir')))", "python").output
    assert "ünïcödé-数据.txt" in listing
    back = tmp_path / "back"
    copied_out = executor.copy_from("in/data set", back)
    assert set(copied_out) == set(copied_in)
    assert read_tree(back) == expected
    assert os.readlink(back / "link inside") == "sub dir/" + ODD_NAMES[1]


def test_round_trip_of_one_file_renamed(executor: Executor, tmp_path: Path) -> None:
    """A file copied to a new name (folders made), changed by a block, comes back under a leading-dash name."""
    source = tmp_path / "-input.bin"
    data = os.urandom(300_000)
    source.write_bytes(data)
    assert executor.copy_to(source, "deep/er/-renamed\nfile") == ["deep/er/-renamed\nfile"]
    run(executor, "cat 'deep/er/-renamed\nfile' 'deep/er/-renamed\nfile' > -- ")
    assert executor.copy_from("--", tmp_path / "out" / "-twice") == ["--"]
    assert (tmp_path / "out" / "-twice").read_bytes() == data + data
    assert executor.copy_from("deep/er/-renamed\nfile", f"{tmp_path}/dir/") == ["deep/er/-renamed\nfile"]
    assert (tmp_path / "dir" / "-renamed\nfile").read_bytes() == data


def test_absolute_paths_inside_the_work_dir_work(executor: Executor, tmp_path: Path) -> None:
    """A path as the code sees it (/workspace/... or the host work dir) is accepted."""
    run(executor, "printf hi > hello.txt")
    inside = "/workspace" if isinstance(executor, DockerCommandLineCodeExecutor) else str(executor.work_dir)
    assert executor.copy_from(f"{inside}/hello.txt", tmp_path / "hello") == ["hello.txt"]
    assert (tmp_path / "hello").read_bytes() == b"hi"


# -- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("outside", ["..", "../escape", "a/../../escape", "/etc", "/etc/passwd"])
def test_paths_leaving_the_work_dir_are_refused(executor: Executor, tmp_path: Path, outside: str) -> None:
    """copy_to's dest and copy_from's path outside the work dir raise WorkPathError; nothing is copied."""
    source = tmp_path / "x.txt"
    source.write_text("x", encoding="utf-8")
    with pytest.raises(WorkPathError) as refused:
        executor.copy_to(source, outside)
    assert isinstance(refused.value, CcexecError)
    assert isinstance(refused.value, ValueError)
    with pytest.raises(WorkPathError):
        executor.copy_from(outside, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "escape").exists()


def test_symlinks_leading_out_are_never_followed(executor: Executor, tmp_path: Path) -> None:
    """A link to a file outside the work dir, alone or inside a folder, makes copy_from fail; nothing is kept."""
    secret = tmp_path / "secret"
    secret.write_text("host secret", encoding="utf-8")
    run(executor, f"ln -s {secret} leak; mkdir -p d/e; echo ok > d/e/f; ln -s ../../.. d/e/up; ln -s /etc/passwd d/pw")
    podman_cp = (
        isinstance(executor, DockerCommandLineCodeExecutor)
        and not executor.mounts_work_dir
        and "podman" in executor._cli.name
    )
    # `podman cp` resolves a final link itself, inside the container: a dangling one reads as missing.
    with pytest.raises(WorkFileNotFoundError if podman_cp else UnsafeFileError, match="leak"):
        executor.copy_from("leak", tmp_path / "got")
    assert not os.path.lexists(tmp_path / "got")
    run(executor, "ln -s /etc/hostname named")  # a target that exists everywhere: refused, never read
    with pytest.raises(UnsafeFileError):
        executor.copy_from("named", tmp_path / "got")
    assert not os.path.lexists(tmp_path / "got")
    with pytest.raises(UnsafeFileError, match="d/e/up"):
        executor.copy_from("d", tmp_path / "tree")
    assert not os.path.lexists(tmp_path / "tree")
    # Through a link as a folder: the host walk refuses it; docker cp resolves it inside the container.
    if isinstance(executor, LocalCommandLineCodeExecutor) or executor.mounts_work_dir:
        run(executor, f"ln -s {tmp_path} outdir")
        with pytest.raises(WorkPathError):
            executor.copy_from("outdir/secret", tmp_path / "via")
        with pytest.raises(WorkPathError):
            executor.copy_to(secret, "outdir/planted")
        assert not (tmp_path / "planted").exists()


def test_a_link_at_the_destination_is_replaced_not_followed(executor: Executor, tmp_path: Path) -> None:
    """copy_to over a name the code made a symlink to a host file replaces the link; the file is untouched."""
    target = tmp_path / "precious"
    target.write_text("keep", encoding="utf-8")
    run(executor, f"ln -s {target} trap")
    source = tmp_path / "new"
    source.write_text("new", encoding="utf-8")
    assert executor.copy_to(source, "trap") == ["trap"]
    assert target.read_text(encoding="utf-8") == "keep"
    assert run(executor, "cat trap").output == "new"
    # Into a folder under its own name (without a mount: the client reads the host file itself).
    run(executor, f"rm trap; ln -s {target} new")
    assert executor.copy_to(source, "./") == ["new"]
    assert target.read_text(encoding="utf-8") == "keep"
    assert run(executor, "cat new").output == "new"


def test_copy_to_over_a_link_never_writes_its_target(executor: Executor, tmp_path: Path) -> None:
    """Attack: the code links the name a copy will take to a file of its own outside the work dir
    (in the container, or on the host); copy_to replaces the link, the target keeps its bytes."""
    run(executor, "printf keep > /tmp/precious-$$; ln -sf /tmp/precious-$$ data.bin; echo /tmp/precious-$$ > where")
    source = tmp_path / "data.bin"
    source.write_bytes(b"attacker wanted this written over the target")
    assert executor.copy_to(source, "./") == ["data.bin"]
    check = run(executor, 'cat "$(cat where)"; echo; test -L data.bin && echo link || echo file')
    assert check.output == "keep\nfile\n"


def test_copy_from_does_not_overwrite_unless_asked(executor: Executor, tmp_path: Path) -> None:
    """An existing host file or directory is kept (HostPathExistsError) unless overwrite=True."""
    run(executor, "printf fresh > report.txt; mkdir -p plots; printf png > plots/a.png")
    existing = tmp_path / "report.txt"
    existing.write_text("mine", encoding="utf-8")
    with pytest.raises(HostPathExistsError) as refused:
        executor.copy_from("report.txt", existing)
    assert isinstance(refused.value, FileExistsError)
    assert existing.read_text(encoding="utf-8") == "mine"
    assert executor.copy_from("report.txt", existing, overwrite=True) == ["report.txt"]
    assert existing.read_text(encoding="utf-8") == "fresh"
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "old.png").write_bytes(b"old")
    with pytest.raises(HostPathExistsError):
        executor.copy_from("plots", tmp_path / "plots")
    assert executor.copy_from("plots", tmp_path / "plots", overwrite=True) == ["plots", "plots/a.png"]
    assert sorted(os.listdir(tmp_path / "plots")) == ["a.png", "old.png"]  # merged, nothing deleted


def test_max_bytes_stops_a_huge_file(executor: Executor, tmp_path: Path) -> None:
    """A 100 GB (sparse) file is refused at once with the default cap; a small cap refuses a small tree.

    In the sandbox no block can make a file over its file size limit (1 GiB): there a 1000 MiB
    file meets a 512 MiB cap instead."""
    sandboxed = bool(getattr(executor, "sandbox", None))
    size, cap = ("1000M", 1 << 29) if sandboxed else ("100G", 1 << 30)
    run(executor, f"mkdir -p out; printf 1234567890 > out/a; printf 1234567890 > out/b; truncate -s {size} huge")
    started = time.monotonic()
    copy = functools.partial(executor.copy_from, max_bytes=cap) if sandboxed else executor.copy_from  # else: default
    with pytest.raises(CopyTooLargeError) as refused:
        copy("huge", tmp_path / "huge")
    assert time.monotonic() - started < 20
    assert refused.value.max_bytes == cap
    assert not os.path.lexists(tmp_path / "huge")
    with pytest.raises(CopyTooLargeError):
        executor.copy_from("out", tmp_path / "out", max_bytes=15)
    assert not os.path.lexists(tmp_path / "out")  # the file written before the refusal was removed
    assert executor.copy_from("out", tmp_path / "out", max_bytes=20) == ["out", "out/a", "out/b"]


def test_missing_paths_raise_file_not_found(executor: Executor, tmp_path: Path) -> None:
    """A missing work-dir path or host path: WorkFileNotFoundError, a FileNotFoundError and a CcexecError."""
    with pytest.raises(WorkFileNotFoundError) as missing:
        executor.copy_from("no such file", tmp_path / "x")
    assert isinstance(missing.value, FileNotFoundError)
    assert isinstance(missing.value, CcexecError)
    assert missing.value.path == "no such file"
    with pytest.raises(FileNotFoundError):
        executor.copy_from("no/such/dir/file", tmp_path / "x")
    with pytest.raises(WorkFileNotFoundError):
        executor.copy_to(tmp_path / "not here", ".")
    assert not os.path.lexists(tmp_path / "x")


def test_special_files_are_refused(executor: Executor, tmp_path: Path) -> None:
    """A fifo in a copied folder makes copy_from fail and leaves nothing behind."""
    run(executor, "mkdir -p pipes; echo x > pipes/a; mkfifo pipes/fifo")
    with pytest.raises(UnsafeFileError, match="fifo"):
        executor.copy_from("pipes", tmp_path / "pipes")
    assert not os.path.lexists(tmp_path / "pipes")


# -- result.files ----------------------------------------------------------------------------------


def test_result_lists_the_files_a_call_changed(executor: Executor, tmp_path: Path) -> None:
    """Created and modified files and links are listed, sorted; untouched ones and code files are not."""
    run(executor, "mkdir -p keep; echo 1 > keep/untouched; echo 1 > keep/changed")
    time.sleep(0.2)  # the listing may count a change a few ms before the call as the call's
    code = (
        "# filename: scripts/make.sh\n"
        "echo 2 >> keep/changed; mkdir -p 'out dir'; echo > 'out dir/r.csv'; ln -s r.csv 'out dir/l'"
    )
    result = executor.execute_code_blocks([CodeBlock(code, "sh"), CodeBlock("print('x')", "python")])
    assert result.exit_code == 0, result.output
    assert result.files == ("keep/changed", "out dir/l", "out dir/r.csv")
    assert result.files_truncated is False
    time.sleep(0.2)
    assert run(executor, "cat keep/changed").files == ()


def test_result_leaves_out_every_code_file(executor: Executor) -> None:
    """Code files calls keep (and one a block touches) are never listed; a file merely named alike is."""
    run(executor, "print(1)", "python")
    time.sleep(0.2)
    code = "import glob, os\nfor name in glob.glob('tmp_code_*'):\n    os.utime(name)\n"
    code += "open('tmp_code_x.py', 'w').close()"
    assert run(executor, code, "python").files == ("tmp_code_x.py",)


def test_generated_names_are_known_without_a_look() -> None:
    """The listing's name test accepts every generated code file name and few others."""
    from ccexec._listing import generated
    from ccexec.blocks import generated_filename

    assert all(generated(generated_filename(f"print({i})", ext)) for i in range(50) for ext in ("py", "sh", "ps1"))
    assert not any(
        generated(name)
        for name in ("tmp_code_x.py", "tmp_code_0123456789ab_0123456.py", "tmp_code_0123456789aB_01234567.py", "a.py")
    )


def test_result_files_are_capped(executor: Executor) -> None:
    """A call writing 1,005 files lists the first 1,000 by name and says it was cut."""
    result = run(executor, "import os\nfor i in range(1005):\n    open('f%04d' % i, 'w').close()", "python")
    assert len(result.files) == 1000
    assert result.files[0] == "f0000"
    assert result.files[-1] == "f0999"
    assert result.files_truncated is True


# -- result.files from inotify, once the work dir is large -----------------------------------------

#: The configurations whose work dir is on this host's disk (listed here, so watched once large).
HOST_LISTED = [param for param in CONFIGS if param.id in ("local", "docker-mount", "podman-mount", "sandbox")]


@pytest.fixture
def watched(monkeypatch: pytest.MonkeyPatch) -> None:
    """Watch every work dir after its first listing (not after 2,000 entries)."""
    monkeypatch.setattr("ccexec._changes.WATCH_FROM", 0)


def local(work: Path) -> LocalCommandLineCodeExecutor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # not a sandbox: known
        return LocalCommandLineCodeExecutor(work_dir=work, timeout=20)


def watching(executor: Executor) -> bool:
    backend = executor._backend
    changes = getattr(backend, "_changes", None)
    return changes is not None and changes._tree is not None


@pytest.mark.parametrize("executor", HOST_LISTED, indirect=True)
def test_a_watched_work_dir_lists_what_a_walk_would(executor: Executor, watched: None) -> None:
    """From events: writes, chmods, renames, links, new folders, code files left out; a call that
    moves a folder (the watches are stale) is listed by a walk, and the next ones from events again."""
    run(executor, "mkdir -p keep; for f in untouched changed mode moved; do echo 1 > keep/$f; done")
    assert watching(executor)
    code = (
        "echo 2 >> keep/changed; chmod 600 keep/mode; mv keep/moved keep/renamed; mkdir -p 'new/a b'; "
        "echo > 'new/a b/deep'; ln -s deep 'new/a b/link'; touch tmp_code_x.py"
    )
    assert run(executor, code).files == (
        "keep/changed", "keep/mode", "keep/renamed", "new/a b/deep", "new/a b/link", "tmp_code_x.py"
    )  # fmt: skip
    assert run(executor, "cat keep/changed").files == ()
    time.sleep(0.2)  # a walk may count a change a few ms before the call as the call's
    assert run(executor, "mkdir t; echo > t/f; mv t u; echo > keep/changed").files == ("keep/changed", "u/f")
    assert run(executor, "echo > u/g; rm keep/renamed").files == ("u/g",)
    assert watching(executor)


@pytest.mark.parametrize("executor", HOST_LISTED[:2], indirect=True)
def test_a_watched_work_dir_lists_through_an_overflow(executor: Executor, watched: None) -> None:
    """More events than the kernel queues (writes to two files in turn, 20,000 of them): listed by a walk."""
    run(executor, "echo > a")
    assert watching(executor)
    time.sleep(0.2)  # this call is listed by a walk, which may count a change a few ms before it as its
    code = "f = open('a', 'w'), open('b', 'w')\nfor i in range(20000):\n    f[i % 2].write('x'); f[i % 2].flush()"
    assert run(executor, code, "python").files == ("a", "b")
    assert run(executor, "echo > c").files == ("c",)
    assert watching(executor)


def test_concurrent_calls_each_list_their_window(tmp_path: Path, watched: None) -> None:
    """Calls at once on one executor: each lists what changed while it ran, its own files among them."""
    import threading

    executor = local(tmp_path)
    run(executor, "echo > first")
    assert watching(executor)
    results: dict[int, tuple[str, ...]] = {}

    def call(index: int) -> None:
        code = f"import time\nfor i in range(5):\n    open('w{index}-%d' % i, 'w').close(); time.sleep(0.01)"
        results[index] = run(executor, code, "python").files

    threads = [threading.Thread(target=call, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for index, files in results.items():
        assert {f"w{index}-{i}" for i in range(5)} <= set(files)
    assert run(executor, "echo > last").files == ("last",)
    executor.stop()


def test_a_folder_not_opened_at_first_is_watched_once_chmod_ed(tmp_path: Path, watched: None) -> None:
    """A folder the host cannot open when it appears (another user's, mode 0700: here the open
    fails as if so) and later opened to all: what is in it is listed from then on."""
    from ccexec._changes import Changes

    work = tmp_path / "work"
    work.mkdir()
    changes = Changes(str(work))
    changes.listing(changes.begin(), 10, ())
    began = changes.begin()
    real_open = os.open

    def refuse_closed(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "closed":
            raise PermissionError(13, "Permission denied")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    (work / "closed").mkdir(mode=0o700)
    (work / "closed" / "early").touch()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "open", refuse_closed)  # the one _inotify calls
        assert changes.listing(began, 10, ()) == ([], False)  # as a walk: it cannot be opened
    time.sleep(0.05)  # a walk (of the folder, now) may count a change a few ms before the call as the call's
    began = changes.begin()
    os.chmod(work / "closed", 0o755)
    (work / "closed" / "late").touch()
    assert changes.listing(began, 10, ()) == (["closed/late"], False)
    changes.close()


def test_a_change_through_a_memory_map_is_listed_only_by_a_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The documented difference: no inotify event comes for a write through a shared mmap."""
    code = "import mmap\nwith open('m', 'r+b') as f:\n    mmap.mmap(f.fileno(), 0)[0:1] = b'y'"
    for watch_from, expected in ((10**9, ("m",)), (0, ())):
        monkeypatch.setattr("ccexec._changes.WATCH_FROM", watch_from)
        executor = local(tmp_path / str(watch_from))
        run(executor, "head -c 4096 /dev/zero > m")
        time.sleep(0.2)  # a walk may count a change a few ms before the call as the call's
        assert run(executor, code, "python").files == expected
        assert watching(executor) is (watch_from == 0)
        executor.stop()


def test_a_work_dir_made_anew_is_watched_anew(tmp_path: Path, watched: None) -> None:
    """The work dir removed and made again between a call's start and its listing: listed by a walk, then watched."""
    from ccexec._changes import Changes

    work = tmp_path / "work"
    work.mkdir()
    changes = Changes(str(work))
    assert changes.listing(changes.begin(), 10, ()) == ([], False)
    began = changes.begin()
    (work / "old").touch()
    os.rename(work, tmp_path / "gone")
    work.mkdir()
    (work / "x").touch()
    assert changes.listing(began, 10, ()) == (["x"], False)
    began = changes.begin()
    (work / "y").touch()
    assert changes.listing(began, 10, ()) == (["y"], False)
    assert changes._tree is not None
    changes.close()


def test_a_work_dir_is_watched_once_large(tmp_path: Path) -> None:
    """Small work dirs are walked; past WATCH_FROM entries the next calls list from events, still exactly."""
    from ccexec._changes import WATCH_FROM

    executor = local(tmp_path)
    run(executor, "echo > small")
    assert not watching(executor)
    for index in range(WATCH_FROM):
        (tmp_path / f"f{index}").touch()
    time.sleep(0.05)
    run(executor, "echo > big")
    assert watching(executor)
    assert run(executor, "echo >> f7; echo > new").files == ("f7", "new")
    executor.stop()
    assert not watching(executor)


# -- archives from the engine: every member checked (no engine needed) ----------------------------


def _tar(*members: tuple[str, bytes, str]) -> io.BytesIO:
    """A tar stream of (name, type, link name) members, each file holding 3 bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode = kind, link, 0o4755 if kind == tarfile.REGTYPE else 0o755
            if kind == tarfile.REGTYPE:
                info.size = 3
                tar.addfile(info, io.BytesIO(b"abc"))
            else:
                tar.addfile(info)
    buffer.seek(0)
    return buffer


def _extract_into(folder: Path, stream: io.BytesIO, base: str = "d") -> list[str]:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        writer = Writer(fd, "got", shown=base, links_inside=True, replace=False, max_bytes=1 << 20)
        return copy_tree(writer, lambda w: _extract(stream, base, w))
    finally:
        os.close(fd)


@pytest.mark.parametrize(
    ("member", "kind", "link"),
    [
        ("/etc/evil", tarfile.REGTYPE, ""),
        ("d/../../evil", tarfile.REGTYPE, ""),
        ("other/evil", tarfile.REGTYPE, ""),
        ("d/hard", tarfile.LNKTYPE, "/etc/passwd"),
        ("d/hard", tarfile.LNKTYPE, "d/not-copied"),
        ("d/link", tarfile.SYMTYPE, "/etc/passwd"),
        ("d/link", tarfile.SYMTYPE, "../../outside"),
        ("d/dev", tarfile.CHRTYPE, ""),
        ("d/fifo", tarfile.FIFOTYPE, ""),
    ],
    ids=["absolute", "dotdot", "outside-base", "hardlink-abs", "hardlink-unknown", "symlink-abs", "symlink-up",
         "device", "fifo"],
)  # fmt: skip
def test_archive_members_leaving_the_copy_are_refused(tmp_path: Path, member: str, kind: bytes, link: str) -> None:
    """Each unsafe member makes the extraction fail, and what came before it is removed."""
    stream = _tar(("d", tarfile.DIRTYPE, ""), ("d/ok", tarfile.REGTYPE, ""), (member, kind, link))
    with pytest.raises(UnsafeFileError):
        _extract_into(tmp_path, stream)
    assert os.listdir(tmp_path) == []


def test_archive_extraction_keeps_safe_links_and_drops_setuid(tmp_path: Path) -> None:
    """Hard links to copied files and links inside the copy are made; setuid bits are not."""
    stream = _tar(
        ("d", tarfile.DIRTYPE, ""), ("d/f", tarfile.REGTYPE, ""), ("d/h", tarfile.LNKTYPE, "d/f"),
        ("d/s", tarfile.SYMTYPE, "f"),
    )  # fmt: skip
    assert _extract_into(tmp_path, stream) == ["", "f", "h", "s"]
    got = tmp_path / "got"
    assert (got / "h").read_bytes() == b"abc"
    assert os.readlink(got / "s") == "f"
    assert stat.S_IMODE((got / "f").stat().st_mode) == 0o755
