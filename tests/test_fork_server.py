"""fork_server=True: each python block forked from a started interpreter cannot tell, but for timing and
the differences the README lists; and it is supervised as any block is.

The differential cases run every block both ways in one work dir and compare exit codes and
outputs after masking the generated file names, addresses and times. The stdlib corpus is in
tests/test_fork_corpus.py (its own nox session).
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator, Union

import pytest

import ccexec
from ccexec import CodeBlock

from .conftest import wait_gone

Executor = Union[ccexec.LocalCommandLineCodeExecutor, ccexec.DockerCommandLineCodeExecutor]
Pair = tuple[ccexec.LocalCommandLineCodeExecutor, ccexec.LocalCommandLineCodeExecutor]


#: The test session's own settings (nox sets them for the tests) kept out of the blocks, whose
#: output is compared exactly: PYTHONDEVMODE would add ResourceWarnings for files left open.
QUIET: dict[str, str | None] = {"PYTHONDEVMODE": None, "PYTHONWARNDEFAULTENCODING": None}


def local(work: Path, **options: Any) -> ccexec.LocalCommandLineCodeExecutor:
    options["env"] = {**QUIET, **options.get("env", {})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ccexec.LocalCommandLineCodeExecutor(work_dir=work, **options)


def mask(text: str) -> str:
    """Generated file names, addresses and times (floats) made equal."""
    text = re.sub(r"tmp_code_[0-9a-f]{12}_[0-9a-f]{8}", "tmp_code_X", text)
    text = re.sub(r"0x[0-9a-fA-F]+", "0xADDR", text)
    return re.sub(r"\d+\.\d+s\b", "N.Ns", text)


def outcome(executor: Executor, blocks: list[CodeBlock]) -> tuple[int, str]:
    result = executor.execute_code_blocks(blocks)
    return result.exit_code, mask(result.output)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """A normal and a fork-server executor sharing one work dir (so paths in the outputs match)."""
    work = tmp_path_factory.mktemp("fork-pair")
    normal, forked = local(work, timeout=30), local(work, timeout=30, fork_server=True)
    with normal, forked:
        yield normal, forked


# Each case: code that exercises one point of what a block must not be able to tell.
CASES: dict[str, str] = {
    "hello": "print('hello')",
    "main-module": """
import builtins, sys
print(sorted(vars(sys.modules["__main__"])))
print(__name__, __spec__, __package__, __doc__, __cached__, __annotations__, __builtins__ is builtins)
print(type(__loader__).__name__, __loader__.name, __loader__.path == __file__)
print(sys.modules["__main__"].__file__ == __file__)
""",
    "sys-state": """
import os, sys
print(sorted(sys.modules))
print(sys.argv == [__file__], sys.path[0] == os.path.dirname(os.path.realpath(__file__)), sys.path[1:])
print(getattr(sys, "orig_argv", [None, __file__])[1:] == [__file__], sys.executable)
print(sys.flags, sys.warnoptions, sys._xoptions, sys.getrecursionlimit(), sys.getswitchinterval())
print(os.getcwd() == os.path.dirname(__file__), os.getsid(0) == os.getpid() == os.getpgrp(), os.umask(0o22))
print(sorted(os.environ) == sorted(os.environ.copy()), sys.exc_info(), hasattr(sys, "last_type"))
print(sorted(os.listdir("/proc/self/fd")), [os.get_inheritable(fd) for fd in (0, 1, 2)])
with open("/proc/self/environ", "rb") as handle:  # dumpable: a non-dumpable process cannot read it
    print(len(handle.read()) > 0)
""",
    "stdio": """
import sys
for s in (sys.stdin, sys.stdout, sys.stderr):
    print(s.name, s.mode, s.encoding, s.errors, s.line_buffering, s.write_through, type(s.buffer).__name__,
          s.isatty(), s.fileno(), s.newlines, s.closed)
print(sys.stdout is sys.__stdout__, sys.stderr is sys.__stderr__, sys.stdin is sys.__stdin__)
""",
    "output-order": """
import os, sys
for i in range(5):
    print("out", i)
    sys.stderr.write("err %d\\n" % i)
    sys.stdout.write("partial ")
    os.write(1, b"raw\\n")
print("é ✓ \\U0001f600")
""",
    "signals": """
import signal
import sys
print({s.name: str(signal.getsignal(s)) for s in signal.Signals})
print(sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))
""",
    "traceback": """
def inner():
    raise KeyError("k")
def outer():
    try:
        inner()
    except KeyError as exc:
        raise ValueError("chained") from exc
outer()
""",
    "traceback-context": "try:\n    1/0\nexcept ZeroDivisionError:\n    [][1]\n",
    "syntax-error": "print('a')\nprint(\n",
    "indentation-error": "if True:\nprint(1)\n",
    "tab-error": "if True:\n        a = 1\n\tb = 2\n",
    "null-byte": "print(1)\0\n",
    "bad-utf8": "print('\udcff')\n",
    "latin-1-cookie": "# -*- coding: latin-1 -*-\nprint('é')\n",
    "exit-int": "import sys; print('x'); sys.exit(3)",
    "exit-str": "import sys; sys.exit('a message')",
    "exit-none": "import sys; sys.exit()",
    "exit-big": "raise SystemExit(300)",
    "exit-object": "raise SystemExit([1, 2])",
    "exit-in-thread-and-finally": "import sys\ntry:\n    sys.exit(4)\nfinally:\n    print('finally')",
    "keyboard-interrupt": "print('before', flush=True)\nraise KeyboardInterrupt",
    "sigint": "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)",
    "sigterm": "import os, signal, time\nprint('x', flush=True)\nos.kill(os.getpid(), signal.SIGTERM)\ntime.sleep(5)",
    "excepthook": """
import sys
def hook(kind, value, tb):
    print("hooked", kind.__name__, value, tb.tb_frame.f_code.co_name)
sys.excepthook = hook
raise RuntimeError("boom")
""",
    "broken-excepthook": "import sys\nsys.excepthook = lambda *a: 1 / 0\nraise RuntimeError('boom')",
    "atexit-and-threads": """
import atexit, threading, time
atexit.register(lambda: print("atexit 1"))
atexit.register(lambda: print("atexit 2"))
def bad():
    raise ValueError("in atexit")
atexit.register(bad)
threading.Thread(target=lambda: (time.sleep(0.2), print("thread joined at exit"))).start()
threading.Thread(target=lambda: (time.sleep(30), print("daemon!")), daemon=True).start()
print("main done")
""",
    "del-at-exit": """
class Noisy:
    def __del__(self):
        print("deleted at exit", flush=True)
keep = Noisy()
print("set")
""",
    "pickle-main": """
import pickle, __main__
class Point:
    def __init__(self, x):
        self.x = x
p = pickle.loads(pickle.dumps(Point(3)))
print(type(p).__module__, type(p).__qualname__, p.x, __main__.Point is Point, __main__.__dict__ is globals())
""",
    "multiprocessing": """
import multiprocessing as mp
def square(x):
    return x * x
if __name__ == "__main__":
    for method in ("fork", "spawn", "forkserver"):
        with mp.get_context(method).Pool(2) as pool:
            print(method, pool.map(square, range(5)))
""",
    "subprocess-and-ctypes": """
import ctypes, subprocess, sys
print(ctypes.sizeof(ctypes.c_int), subprocess.run([sys.executable, "-c", "print('child')"], capture_output=True).stdout)
""",
    "input-eof": "print('asking')\ninput('? ')",
    "warnings-past-the-module": "import warnings\nwarnings.warn('caller', stacklevel=2)\nprint('done')",
    "warnings": "import warnings\nwarnings.warn('top level')\nwarnings.warn('deprecated', DeprecationWarning)",
    "unittest": """
import unittest
class T(unittest.TestCase):
    def test_ok(self):
        pass
    def test_fail(self):
        self.assertEqual(1, 2)
unittest.main()
""",
    "asyncio": "import asyncio\nasync def f():\n    await asyncio.sleep(0.01)\n    return 5\nprint(asyncio.run(f()))",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_block_cannot_tell(pair: Pair, case: str) -> None:
    """The block prints and exits the same, forked or started anew."""
    normal, forked = pair
    blocks = [CodeBlock(CASES[case], "python")]
    assert outcome(forked, blocks) == outcome(normal, blocks)


#: Where a block can leave an open file for the interpreter's exit to flush: its own globals,
#: and objects of the start's modules (which a forked block's end does not tear down).
HOLDERS = {
    "global": "f = {open}",
    "sys-attribute": "import sys\nsys.kept = {open}\nf = sys.kept",
    "builtins-attribute": "import builtins\nbuiltins.kept = {open}\nf = builtins.kept",
    "list-on-os": "import os\nos.kept = [{open}]\nf = os.kept[0]",
    "binary-on-sys": "import sys\nsys.kept = open('unflushed.txt', 'wb')\n"
    "f = sys.kept\nf.write(b'data\\n')\nraise SystemExit(0)",
    "replaced-stdout": "import sys\nsys.stdout = f = {open}",
    "in-a-cycle-on-sys": "import sys\nclass Box: pass\n"
    "box = Box(); box.self = box; box.f = f = {open}\nsys.kept = box\ndel box",
}


@pytest.mark.parametrize("holder", sorted(HOLDERS))
def test_unflushed_file_is_written_at_exit(pair: Pair, holder: str) -> None:
    """A file left open is flushed by the interpreter's exit, as in a normal run, wherever it is kept."""
    code = HOLDERS[holder].format(open="open('unflushed.txt', 'w', encoding='utf-8')")
    if "f.write" not in code:
        code += "\nf.write('data\\n')"
    blocks = [CodeBlock(code, "python"), CodeBlock("cat unflushed.txt && rm unflushed.txt", "sh")]
    normal, forked = pair
    assert outcome(forked, blocks) == outcome(normal, blocks) == (0, "data\n")


def test_objects_kept_on_start_modules_are_finalized(pair: Pair) -> None:
    """__del__ of what a block hangs on sys or builtins runs at exit, as in a normal run."""
    code = """
import builtins, os, sys, weakref
class Loud:
    def __init__(self, name):
        self.name = name
    def __del__(self):
        os.write(1, b"finalized " + self.name.encode() + b"\\n")
sys.kept = Loud("on sys")
builtins.kept = Loud("on builtins")
class Target: pass
sys.target = Target()
weakref.finalize(sys.target, os.write, 1, b"weakref finalizer\\n")
print("set", flush=True)
"""
    normal, forked = pair
    blocks = [CodeBlock(code, "python")]
    expected = outcome(normal, blocks)
    assert "finalized on builtins" in expected[1]
    assert outcome(forked, blocks) == expected


def test_buffered_stdout_order(tmp_path: Path) -> None:
    """Without PYTHONUNBUFFERED, stdout is flushed at exit after stderr's lines, both ways."""
    code = "import sys\nprint('out')\nsys.stderr.write('err\\n')\nprint('out2')"
    env: dict[str, str | None] = {"PYTHONUNBUFFERED": None}
    with local(tmp_path, env=env) as normal, local(tmp_path, env=env, fork_server=True) as forked:
        blocks = [CodeBlock(code, "python")]
        assert outcome(forked, blocks) == outcome(normal, blocks) == (0, "err\nout\nout2\n")


# -- the documented differences (README, "Fork server") --------------------------------------------

#: Prints whether the block's parent is a zygote (``python -c ZYGOTE``; the supervisor's command line ships it too).
PARENT = (
    "import os\nwith open('/proc/%d/cmdline' % os.getppid(), 'rb') as f:\n"
    "    args = f.read().split(b'\\0')\n"
    "print(args[1] == b'-c' and args[2].startswith(b'_fresh = dict(globals())'))"
)


def test_forked_from_the_zygote(pair: Pair) -> None:
    """Difference: the block's parent is the fork server (its zygote), not the shepherd."""
    normal, forked = pair
    assert outcome(forked, [CodeBlock(PARENT, "python")]) == (0, "True\n")
    assert outcome(normal, [CodeBlock(PARENT, "python")]) == (0, "False\n")


def test_hash_seed_shared_unless_replaced(tmp_path: Path) -> None:
    """Difference: blocks of one server share the hash seed; fork_server_max_blocks=1 gives each its own."""
    code = [CodeBlock("print(hash('ccexec'))", "python")]
    env: dict[str, str | None] = {"PYTHONHASHSEED": None}
    with local(tmp_path, fork_server=True, env=env) as shared:
        assert len({shared.execute_code_blocks(code).output for _ in range(3)}) == 1
    with local(tmp_path, fork_server=True, fork_server_max_blocks=1, env=env) as fresh:
        assert len({fresh.execute_code_blocks(code).output for _ in range(3)}) == 3


def test_gc_and_caller_frame_differ(pair: Pair) -> None:
    """Differences: the start's objects are frozen (gc.freeze); the module's frame has a caller."""
    normal, forked = pair
    code = [CodeBlock("import gc, sys\nprint(gc.get_freeze_count(), sys._getframe().f_back is None)", "python")]
    (code_normal, frozen_normal), (code_forked, frozen_forked) = outcome(normal, code), outcome(forked, code)
    assert (code_normal, frozen_normal.split()[1], code_forked, frozen_forked.split()[1]) == (0, "True", 0, "False")
    assert int(frozen_forked.split()[0]) > int(frozen_normal.split()[0])  # 3.12+ freezes a few at start too


def test_recursion_limit_reached_five_calls_sooner(pair: Pair) -> None:
    """Difference: the fork server's frames under the block's (and its call of the file) count against the limit
    (five calls sooner; four from 3.12, which counts C calls apart)."""
    normal, forked = pair
    code = [CodeBlock("import sys\ndef f(n):\n    try:\n        return f(n + 1)\n    except RecursionError:\n"
                      "        return n\nprint(f(0))", "python")]  # fmt: skip
    depth, forked_depth = int(normal.execute_code_blocks(code).output), int(forked.execute_code_blocks(code).output)
    assert depth - forked_depth == (4 if sys.version_info >= (3, 12) else 5)


def test_file_kept_inside_a_start_object_is_not_flushed(pair: Pair) -> None:
    """Difference: a file kept only inside something the start made (here sys.meta_path) is not flushed at exit."""
    normal, forked = pair
    code = "import sys\nf = open('inside.txt', 'w')\nf.write('data\\n')\nsys.meta_path.append(f)\ndel f"
    blocks = [CodeBlock(code, "python"), CodeBlock("cat inside.txt; rm inside.txt", "sh")]
    assert outcome(normal, blocks) == (0, "data\n")
    assert outcome(forked, blocks) == (0, "")


def test_process_started_before_its_block(pair: Pair) -> None:
    """Difference: the process was forked ahead of its block, so its start time is before the call's."""
    normal, forked = pair
    code = [
        CodeBlock(
            "import os\nticks = os.sysconf('SC_CLK_TCK')\n"
            "started = int(open('/proc/self/stat').read().rsplit(')', 1)[1].split()[19]) / ticks\n"
            "print(float(open('/proc/uptime').read().split()[0]) - started > 0.4)",
            "python",
        )
    ]
    for executor, earlier in ((normal, "False"), (forked, "True")):
        executor.execute_code_blocks([CodeBlock("pass", "python")])
        time.sleep(0.6)
        assert outcome(executor, code) == (0, earlier + "\n")


def test_random_state_differs_between_blocks(pair: Pair) -> None:
    """Each forked block draws its own random numbers (and os.urandom)."""
    _, forked = pair
    code = [CodeBlock("import os, random\nprint(random.random(), os.urandom(8).hex())", "python")]
    assert len({forked.execute_code_blocks(code).output for _ in range(3)}) == 3


# -- supervision and the trust boundary ------------------------------------------------------------


def test_timeout_kills_the_forked_tree(tmp_path: Path) -> None:
    """A forked block and its child past the deadline: exit 124, both gone; the next block works."""
    code = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
        "open('pids', 'w', encoding='utf-8').write('%d %d' % (__import__('os').getpid(), child.pid))\n"
        "print('started', flush=True)\ntime.sleep(60)"
    )
    with local(tmp_path, timeout=1, fork_server=True) as forked:
        result = forked.execute_code_blocks([CodeBlock(code, "python")])
        assert (result.exit_code, result.timed_out) == (124, True)
        assert result.output.startswith("started\n")
        pids = [int(pid) for pid in (tmp_path / "pids").read_text(encoding="ascii").split()]
        assert wait_gone(pids) == []
        assert forked.execute_code_blocks([CodeBlock("print('next')", "python")]).output == "next\n"


def test_leftovers_killed_and_zygote_kept(tmp_path: Path) -> None:
    """A daemon a forked block leaves is killed when it ends; the fork server lives on for the next block."""
    code = (
        "import os, subprocess, sys\n"
        "d = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'], start_new_session=True)\n"
        "print(d.pid, os.getppid())"
    )
    with local(tmp_path, fork_server=True) as forked:
        daemon, zygote = map(int, forked.execute_code_blocks([CodeBlock(code, "python")]).output.split())
        assert wait_gone([daemon]) == []
        again = forked.execute_code_blocks([CodeBlock("import os; print(os.getppid())", "python")])
        assert int(again.output) == zygote


def test_block_killing_its_zygote_gets_its_result(tmp_path: Path) -> None:
    """A block that SIGKILLs the fork server still reports its own exit and output; a new server follows."""
    code = "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint('survived')\nraise SystemExit(5)"
    with local(tmp_path, fork_server=True) as forked:
        result = forked.execute_code_blocks([CodeBlock(code, "python")])
        assert (result.exit_code, result.output) == (5, "survived\n")
        assert outcome(forked, [CodeBlock(PARENT, "python")]) == (0, "True\n")


def test_zygote_out_of_reach(tmp_path: Path) -> None:
    """A forked block can open neither the fork server's fds nor its memory, and changes nothing for the next block."""
    code = (
        "import json, os\n"
        "json.planted = True\n"
        "for path in ('/proc/%d/fd/3' % os.getppid(), '/proc/%d/mem' % os.getppid()):\n"
        "    try:\n        open(path, 'rb').close()\n        print('opened', path)\n"
        "    except OSError as exc:\n        print(type(exc).__name__)\n"
    )
    with local(tmp_path, fork_server=True) as forked:
        assert outcome(forked, [CodeBlock(code, "python")]) == (0, "PermissionError\nPermissionError\n")
        later = "import json, sys\nprint(hasattr(json, 'planted'), 'json' in sys.modules)"
        assert outcome(forked, [CodeBlock(later, "python")]) == (0, "False True\n")


def test_other_commands_are_not_forked(tmp_path: Path) -> None:
    """sh blocks, and python languages with another command line, start as usual."""
    languages = {"pyu": ccexec.Language("py", ("{python}", "-u", "{file}"))}
    with local(tmp_path, fork_server=True, languages=languages) as forked:
        assert outcome(forked, [CodeBlock(PARENT, "pyu")]) == (0, "False\n")
        assert outcome(forked, [CodeBlock("echo sh", "sh")]) == (0, "sh\n")
        assert outcome(forked, [CodeBlock(PARENT, "python")]) == (0, "True\n")


def test_server_that_cannot_start_falls_back_once(tmp_path: Path) -> None:
    """A fork server that fails to start: blocks run the normal way, and the first one says why, once."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "ctypes.py").write_text("raise ImportError('no ctypes here')\n", encoding="utf-8")
    with local(tmp_path / "work", fork_server=True, env={"PYTHONPATH": str(broken)}) as forked:
        first = forked.execute_code_blocks([CodeBlock(PARENT, "python")])
        second = forked.execute_code_blocks([CodeBlock(PARENT, "python")])
    assert first.exit_code == 0
    assert first.output.startswith("False\n")
    assert "fork server could not start (ImportError: no ctypes here)" in first.output
    assert (second.exit_code, second.output) == (0, "False\n")


def test_arguments_are_checked(tmp_path: Path) -> None:
    """Bad fork settings raise before anything starts; exec mode refuses the fork server."""
    with pytest.raises(ccexec.InvalidArgumentError, match="fork_server must be True or False"):
        local(tmp_path, fork_server=1)
    with pytest.raises(ccexec.InvalidArgumentError, match="fork_server_max_blocks"):
        local(tmp_path, fork_server=True, fork_server_max_blocks=0)
    with pytest.raises(ccexec.InvalidArgumentError, match="needs mode='runner'"):
        ccexec.DockerCommandLineCodeExecutor("unused", mode="exec", fork_server=True)


# -- in a container --------------------------------------------------------------------------------

DOCKER_CASES = ["main-module", "sys-state", "stdio", "signals", "traceback", "syntax-error", "keyboard-interrupt",
                "atexit-and-threads", "multiprocessing", "exit-str"]  # fmt: skip


def test_docker_runner_forks_python_blocks(docker_engine: str, tmp_path: Path) -> None:
    """In the container, python blocks fork from the image's python and cannot tell; sh blocks run as usual."""
    name = f"ccexec-test-fork-{uuid.uuid4().hex[:10]}"
    with (
        ccexec.DockerCommandLineCodeExecutor(docker_engine, name, work_dir=tmp_path, timeout=30) as normal,
        ccexec.DockerCommandLineCodeExecutor(
            docker_engine, name + "-f", work_dir=tmp_path, timeout=30, fork_server=True
        ) as forked,
    ):
        assert outcome(forked, [CodeBlock(PARENT, "python")]) == (0, "True\n")
        assert outcome(normal, [CodeBlock(PARENT, "python")]) == (0, "False\n")
        for case in DOCKER_CASES:
            blocks = [CodeBlock(CASES[case], "python")]
            assert outcome(forked, blocks) == outcome(normal, blocks), case


def test_docker_forked_block_times_out(docker_engine: str, tmp_path: Path) -> None:
    """In the container, a forked block past its deadline is killed with its child; the next block forks anew."""
    name = f"ccexec-test-fork-{uuid.uuid4().hex[:10]}"
    code = "import subprocess, time\nsubprocess.Popen(['sleep', '60'])\nprint('x', flush=True)\ntime.sleep(60)"
    with ccexec.DockerCommandLineCodeExecutor(
        docker_engine, name, work_dir=tmp_path, timeout=1, fork_server=True
    ) as ex:
        start = time.monotonic()
        result = ex.execute_code_blocks([CodeBlock(code, "python")])
        assert (result.exit_code, result.timed_out, result.output[:2]) == (124, True, "x\n")
        assert time.monotonic() - start < 10
        ps = "import os\nprint([open('/proc/%s/comm' % p).read() for p in os.listdir('/proc') if p.isdigit()])"
        assert "sleep" not in ex.execute_code_blocks([CodeBlock(ps, "python")]).output
        assert outcome(ex, [CodeBlock(PARENT, "python")]) == (0, "True\n")


#: Counts the fork servers in the container: processes running ZYGOTE whose parent does not (the
#: processes they fork, this block among them, run it too).
ZYGOTES = """
import os
def forked(pid):
    try:
        args = open('/proc/%s/cmdline' % pid, 'rb').read().split(b'\\0')
    except OSError:
        return False
    return args[1:2] == [b'-c'] and args[2].startswith(b'_fresh = dict(globals())')
def parent(pid):
    return open('/proc/%s/stat' % pid).read().rsplit(')', 1)[1].split()[1]
print(sum(forked(p) and not forked(parent(p)) for p in filter(str.isdigit, os.listdir('/proc'))))
"""


def test_docker_concurrent_blocks_keep_their_servers(docker_engine: str, tmp_path: Path) -> None:
    """Four blocks at once, then again: the four started servers are kept between the calls, not started anew."""
    import concurrent.futures

    name = f"ccexec-test-fork-{uuid.uuid4().hex[:10]}"
    with ccexec.DockerCommandLineCodeExecutor(
        docker_engine, name, work_dir=tmp_path, timeout=30, fork_server=True
    ) as ex:
        sleep = [CodeBlock("import time\ntime.sleep(1)", "python")]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            assert [r.exit_code for r in pool.map(lambda _: ex.execute_code_blocks(sleep), range(4))] == [0] * 4
        assert int(ex.execute_code_blocks([CodeBlock(ZYGOTES, "python")]).output) >= 4


def test_sigint_exit_is_reported_as_signal(pair: Pair) -> None:
    """An unhandled KeyboardInterrupt kills the forked block with SIGINT, as CPython does."""
    _, forked = pair
    assert forked.execute_code_blocks([CodeBlock("raise KeyboardInterrupt", "python")]).exit_code == -signal.SIGINT


def test_no_zygote_left_after_stop(tmp_path: Path) -> None:
    """stop() ends the fork server with the supervisor."""
    with local(tmp_path, fork_server=True) as forked:
        zygote = int(forked.execute_code_blocks([CodeBlock("import os; print(os.getppid())", "python")]).output)
    assert wait_gone([zygote]) == []
    assert (
        not os.path.exists(f"/proc/{zygote}/cmdline") or b"_zygote" not in Path(f"/proc/{zygote}/cmdline").read_bytes()
    )


def test_docker_listing_in_the_container_keeps_the_server(docker_engine: str, tmp_path: Path) -> None:
    """Without a mount the supervisor lists each call's files in a process forked from the shepherd
    that ran the block: the files are listed, and that shepherd's started server is no leftover."""
    name = f"ccexec-test-fork-{uuid.uuid4().hex[:10]}"
    with ccexec.DockerCommandLineCodeExecutor(
        docker_engine, name, work_dir=tmp_path, timeout=30, fork_server=True, mount_work_dir=False
    ) as ex:
        pids = []
        for index in range(3):
            code = f"import os\nopen('out{index}.txt', 'w').close()\nprint(os.getppid())"
            result = ex.execute_code_blocks([CodeBlock(code, "python")])
            assert (result.exit_code, result.files) == (0, (f"out{index}.txt",)), result.output
            pids.append(result.output)
            time.sleep(0.2)  # a walk may count a change a few ms before the call as the call's
        assert len(set(pids)) == 1  # forked by one zygote each time: never started again
        assert int(ex.execute_code_blocks([CodeBlock(ZYGOTES, "python")]).output) == 1
