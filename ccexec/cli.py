"""The command line: ``python -m ccexec run FILE``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from .blocks import CodeBlock
from .errors import CcexecError, InvalidArgumentError
from .results import CommandLineCodeResult

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
    run.add_argument("--timeout", type=float, default=60, help="seconds per block (default: 60)")
    run.add_argument(
        "--work-dir",
        help="directory the blocks run in and write to (default: a temporary one, removed afterwards)",
    )
    run.add_argument("--language", help="language of a script whose suffix does not tell")
    run.add_argument("--json", action="store_true", help="print the result as JSON instead of streaming output")
    run.set_defaults(handler=_run)
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
        help="check the container engine: client, engine, rootless, image, bind mounts",
        description="Check what ccexec's Docker executor needs: the client binary, a reachable engine "
        "(DOCKER_HOST / context), rootless or not, the image, and whether bind mounts of this host's paths "
        "reach the engine. Prints one line per check and advice for each failure; exits 1 if any failed.",
    )
    doctor.add_argument("--docker", default="docker", help="client command (default: docker; e.g. podman)")
    doctor.add_argument("--image", default="python:3-slim", help="image to look for (default: python:3-slim)")
    doctor.set_defaults(handler=_doctor)
    return parser


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import report

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
    from .local import LocalCommandLineCodeExecutor

    blocks = _read_blocks(args.file, args.language)
    if not blocks:
        print(f"ccexec: no code blocks found in {args.file}", file=sys.stderr)
        return 0
    on_output = None if args.json else _stream_to_stdout
    sys.stdout.flush()  # output is streamed to the binary buffer below: keep earlier text first
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the CLI user chose to run this file here
        executor = LocalCommandLineCodeExecutor(timeout=args.timeout, work_dir=args.work_dir, on_output=on_output)
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
