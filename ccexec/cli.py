"""The command line: ``python -m ccexec run FILE``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Sequence

from .blocks import CodeBlock
from .errors import CcexecError, InvalidArgumentError
from .executor import DEFAULT_MAX_OUTPUT_BYTES
from .results import CommandLineCodeResult

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._capture import OutputCallback
    from .executor import BaseCommandLineExecutor

_SUFFIX_LANGUAGES = {".py": "python", ".sh": "sh", ".bash": "bash", ".ps1": "pwsh"}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except CcexecError as exc:
        print(f"ccexec: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccexec", description="Run code blocks as files in new processes.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="run the code blocks of a Markdown file, or a .py/.sh script",
        description="Run the fenced code blocks of a Markdown file (or a .py/.sh/.ps1 script) in order, "
        "each as a file in a new process; stop at the first failure; exit with its exit code.",
    )
    run.add_argument("file", help="a Markdown file (.md), a script, or - for Markdown on stdin")
    run.add_argument("--language", help="language of a script whose suffix does not tell")
    run.add_argument("--json", action="store_true", help="print the result as JSON instead of streaming output")
    add_backend_arguments(run, default="local", hardened=False)
    run.set_defaults(handler=_run)
    mcp = commands.add_parser(
        "mcp",
        help="serve the Model Context Protocol on stdio (tools run_code, write_file, read_file, list_files)",
        description="An MCP server on stdin/stdout for agent hosts: JSON-RPC, one message per line. Code runs "
        "in a hardened Docker container by default; --local runs it on this host (not a sandbox). Ends, killing "
        "running code and removing the container, when stdin closes.",
    )
    add_backend_arguments(mcp, default="docker", hardened=True)
    mcp.set_defaults(handler=_mcp)
    gc = commands.add_parser(
        "gc",
        help="remove ccexec containers whose owner process is gone",
        description="Remove containers labelled by ccexec on this host whose owner process no longer runs "
        "(left by a crash). Never touches other containers.",
    )
    gc.add_argument("--docker", default="docker", help="client command (default: docker; e.g. podman)")
    gc.add_argument("--dry-run", action="store_true", help="list what would be removed")
    gc.set_defaults(handler=_gc)
    doctor = commands.add_parser(
        "doctor",
        help="check the container engine (client, engine, rootless, image, bind mounts), or with --sandbox bubblewrap",
        description="Check what ccexec's Docker executor needs: the client binary, a reachable engine "
        "(DOCKER_HOST / context), rootless or not, the image, and whether bind mounts of this host's paths "
        "reach the engine. Prints one line per check and advice for each failure; exits 1 if any failed.",
    )
    doctor.add_argument("--docker", default="docker", help="client command (default: docker; e.g. podman)")
    doctor.add_argument("--image", default="python:3-slim", help="image to look for (default: python:3-slim)")
    doctor.add_argument(
        "--sandbox", action="store_true",
        help="check the bubblewrap sandbox instead (bwrap, user namespaces, a block run inside)",
    )  # fmt: skip
    doctor.set_defaults(handler=_doctor)
    return parser


def add_backend_arguments(parser: argparse.ArgumentParser, *, default: str, hardened: bool) -> None:
    """Add the flags choosing where code runs, and its limits (shared by ``run`` and ``mcp``)."""
    where = parser.add_argument_group("where code runs").add_mutually_exclusive_group()
    where.add_argument(
        "--docker", dest="backend", action="store_const", const="docker",
        help="in a Docker (or Podman) container" + (" (the default)" if default == "docker" else ""),
    )  # fmt: skip
    where.add_argument(
        "--local", dest="backend", action="store_const", const="local",
        help="on this host, with your permissions: not a sandbox" + (" (the default)" if default == "local" else ""),
    )  # fmt: skip
    where.add_argument(
        "--sandbox", dest="backend", action="store_const", const="sandbox",
        help="on this host in a bubblewrap sandbox: system read-only, no network (unless --network), no host "
        "processes or home, only the work dir writable (see `ccexec doctor --sandbox`)",
    )  # fmt: skip
    parser.set_defaults(backend=default)
    limits = parser.add_argument_group("limits")
    limits.add_argument("--timeout", type=float, default=60, help="seconds per block (default: 60)")
    limits.add_argument(
        "--work-dir", help="directory the blocks run in and write to (default: a temporary one, removed at the end)"
    )
    limits.add_argument(
        "--max-output-bytes", type=int, default=DEFAULT_MAX_OUTPUT_BYTES,
        help=f"output kept per block, head and tail (default: {DEFAULT_MAX_OUTPUT_BYTES})",
    )  # fmt: skip
    docker = parser.add_argument_group("container (with --docker)")
    docker.add_argument("--image", default="python:3-slim", help="image to run blocks in (default: python:3-slim)")
    docker.add_argument("--engine", default="docker", help="client command: docker or podman (default: docker)")
    docker.add_argument(
        "--hardened", action=argparse.BooleanOptionalAction, default=hardened,
        help="no network, read-only root, no capabilities, non-root user, 512m, 1 CPU, 256 pids "
        f"(default: {'on' if hardened else 'off'}); the flags below override single limits",
    )  # fmt: skip
    docker.add_argument("--container-name", help="the container's name (default: ccexec- and a random suffix)")
    docker.add_argument(
        "--network", help="docker run --network (e.g. none, bridge); with --sandbox, any value but none shares this "
        "host's network",
    )  # fmt: skip
    docker.add_argument("--memory", help="docker run --memory (e.g. 512m)")
    docker.add_argument("--cpus", type=float, help="docker run --cpus")
    docker.add_argument("--pids-limit", type=int, help="docker run --pids-limit")


def make_executor(args: argparse.Namespace, *, on_output: OutputCallback = None) -> BaseCommandLineExecutor:
    """The executor the backend flags ask for (not started)."""
    options = {"timeout": args.timeout, "work_dir": args.work_dir, "max_output_bytes": args.max_output_bytes}
    if args.backend == "local":
        import warnings

        from .local import LocalCommandLineCodeExecutor

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # the user chose --local; callers say so themselves
            return LocalCommandLineCodeExecutor(on_output=on_output, **options)
    if args.backend == "sandbox":
        from .local import LocalCommandLineCodeExecutor

        network = args.network not in (None, "none")
        return LocalCommandLineCodeExecutor(on_output=on_output, sandbox=True, network=network, **options)
    from .docker import DockerCommandLineCodeExecutor

    return DockerCommandLineCodeExecutor(
        args.image, args.container_name, docker=args.engine, hardened=args.hardened, network=args.network,
        memory=args.memory, cpus=args.cpus, pids_limit=args.pids_limit, on_output=on_output, **options,
    )  # fmt: skip


def _mcp(args: argparse.Namespace) -> int:
    from .mcp import serve_stdio, tools_for

    executor = make_executor(args)
    if args.backend == "local":
        print(
            "ccexec mcp: --local: code runs on this host with your permissions; this is not a sandbox "
            "(use --docker for code you do not trust)",
            file=sys.stderr,
        )
    try:
        executor.start()  # now, so that a missing engine ends the server at once, not at the first call
    except CcexecError as exc:
        executor.stop()
        print(f"ccexec mcp: cannot start the {args.backend} backend: {exc}", file=sys.stderr)
        if args.backend == "docker":
            _advise(args.engine, args.image)
        elif args.backend == "sandbox":
            print("Run `python -m ccexec doctor --sandbox` for the full report.", file=sys.stderr)
        return 1
    print(f"ccexec mcp: serving on stdio; {_describe(args, executor)}, work dir {executor.work_dir}", file=sys.stderr)
    return serve_stdio(executor, tools_for(executor, args))


def _advise(engine: str, image: str) -> None:
    """Print what ``ccexec doctor`` finds wrong, and the way out."""
    from .doctor import diagnose

    for check in diagnose(engine, image):
        if not check.ok:
            print(check.render(), file=sys.stderr)
    print(f"Run `python -m ccexec doctor --docker {engine} --image {image}` for the full report, or pass --local "
          "to run code on this host (not a sandbox).", file=sys.stderr)  # fmt: skip


def _describe(args: argparse.Namespace, executor: Any) -> str:
    if args.backend == "local":
        return "code runs on this host (--local, not a sandbox)"
    if args.backend == "sandbox":
        return "code runs on this host in a bubblewrap sandbox" + (" with network" if executor.sandbox_network else "")
    hardened = " (hardened)" if args.hardened else ""
    return f"code runs in {args.engine} container {executor.container_name} of image {args.image}{hardened}"


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import report, report_sandbox

    if args.sandbox:
        return report_sandbox()
    return report(args.docker, args.image)


def _gc(args: argparse.Namespace) -> int:
    from .docker import collect_garbage

    removed = collect_garbage(args.docker, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} orphaned ccexec container(s)" + "".join(f"\n  {name}" for name in removed))
    return 0


def _read_blocks(path: str, language: str | None) -> list[CodeBlock]:
    if path == "-":
        text = sys.stdin.read()
        suffix = ".md"
    else:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read()
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read {path!r}: {exc.strerror}") from None
        suffix = os.path.splitext(path)[1].lower()
    language = language or _SUFFIX_LANGUAGES.get(suffix)
    if language is not None:
        return [CodeBlock(text, language)]
    from .markdown import extract_code_blocks

    return extract_code_blocks(text)


def _run(args: argparse.Namespace) -> int:
    blocks = _read_blocks(args.file, args.language)
    if not blocks:
        print(f"ccexec: no code blocks found in {args.file}", file=sys.stderr)
        return 0
    on_output = None if args.json else _stream_to_stdout
    sys.stdout.flush()  # output is streamed to the binary buffer below: keep earlier text first
    executor = make_executor(args, on_output=on_output)
    with executor:
        result = executor.execute_code_blocks(blocks)
    if args.json:
        _print_json(result)
    return _process_exit_code(result.exit_code)


def _stream_to_stdout(chunk: bytes) -> None:
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()


def _print_json(result: CommandLineCodeResult) -> None:
    import dataclasses
    import json

    json.dump(dataclasses.asdict(result), sys.stdout, indent=2)
    sys.stdout.write("\n")


def _process_exit_code(exit_code: int) -> int:
    """Map a block's exit code to one a process can return (a signal -> 128 + number)."""
    if exit_code < 0:
        return 128 - exit_code
    return exit_code if exit_code < 256 else 1
