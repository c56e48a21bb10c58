"""ccexec's executors as AG2 code executors (the ``autogen.coding.CodeExecutor`` protocol).

``ConversableAgent("runner", llm_config=False, code_execution_config={"executor": LocalCommandLineCodeExecutor()})``.
Needs ``pip install ag2``; ccexec itself still needs nothing.

What AG2's own executors do and these do too: AG2's constructor arguments in AG2's order
(ccexec's own options follow as keywords); ``execution_policies`` and the class's
``DEFAULT_EXECUTION_POLICY`` (a language whose policy is False, as html, css and javascript
are by default, is only saved: its file is written and the output says where); a bare first
line naming the file (``# test.py``, ``// app.js``, ``<!-- page.html -->``); ``pip install``
lines made quiet; generated files kept; ``work_dir`` kept as given (the current directory
by default) and created when the executor is made; ``sanitize_command`` checked before a
local shell block runs; ``functions`` given as AG2 ``FunctionWithRequirements`` objects,
``functions_module`` and ``format_functions_for_prompt``; Docker's ``container_create_kwargs``
where they map onto ``docker run`` options (see ``DockerCommandLineCodeExecutor``).
Where ccexec differs on purpose: ``restart()`` of the local executor really restarts (AG2's
warns that it does nothing), and AG2's factory string ``"commandline-local"`` still makes
AG2's own executor (ccexec does not patch AG2).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import ccexec
from ccexec.blocks import PYTHON
from ccexec.errors import InvalidArgumentError
from ccexec.executor import BaseCommandLineExecutor
from ccexec.functions import FUNCTIONS_PROMPT_TEMPLATE

from ._shared import convert_functions


def _import_ag2() -> tuple[Any, Any, Any, Any]:
    """AG2's content_str, CodeBlock, CommandLineCodeResult and CodeExecutor, or an ImportError naming the package."""
    try:
        from autogen.code_utils import content_str
        from autogen.coding.base import CodeBlock, CodeExecutor, CommandLineCodeResult
    except ImportError as exc:
        raise ImportError(f"ccexec.integrations.ag2 needs AG2 ({exc}): pip install ag2") from exc
    return content_str, CodeBlock, CommandLineCodeResult, CodeExecutor


# The framework is imported in a function: ccexec's packaging test allows no module-level import of it.
if TYPE_CHECKING:
    from types import TracebackType

    from autogen.code_utils import content_str
    from autogen.coding.base import CodeBlock, CodeExecutor, CommandLineCodeResult
    from typing_extensions import Self
else:
    content_str, CodeBlock, CommandLineCodeResult, CodeExecutor = _import_ag2()

__all__ = ["CodeExtractor", "DockerCommandLineCodeExecutor", "LocalCommandLineCodeExecutor"]

#: AG2's languages and whether each runs (True) or is only saved (False), unless told otherwise.
DEFAULT_EXECUTION_POLICY: Mapping[str, bool] = {
    **dict.fromkeys(("bash", "shell", "sh", "pwsh", "powershell", "ps1", "python"), True),
    **dict.fromkeys(("javascript", "html", "css"), False),
}
#: AG2 language -> the ccexec language tag that runs it (html and css have no program: saved only).
_RUNS_AS = {
    "python": "python", "bash": "bash", "shell": "sh", "sh": "sh",
    "pwsh": "pwsh", "powershell": "pwsh", "ps1": "pwsh", "javascript": "javascript",
}  # fmt: skip
_EXTENSIONS = {
    "python": "py", "bash": "sh", "shell": "sh", "sh": "sh", "pwsh": "ps1", "powershell": "ps1", "ps1": "ps1",
    "javascript": "js", "html": "html", "css": "css",
}  # fmt: skip
_SHELLS = ("bash", "shell", "sh", "pwsh", "powershell", "ps1")


def _save_tag(extension: str) -> str:
    return f"ccexec-save-only-{extension}"


#: Extra ccexec languages: JavaScript through node, and one per extension that writes the file
#: and runs nothing (the interpreter with an empty program), so ccexec's supervisor still does
#: the writing, with its workspace and symlink checks, on the host or in the container.
_ADAPTER_LANGUAGES = {
    "javascript": ccexec.Language("js", ("node",)),
    **{_save_tag(ext): ccexec.Language(ext, (PYTHON, "-c", "")) for ext in set(_EXTENSIONS.values())},
}

# A first line that is only a comment holding one file name with an extension: AG2 takes it as
# the file's name. Anything longer (`# compute the total`) stays a comment.
_BARE_NAME = re.compile(
    r"^(?P<open>#|//|/\*|<!--)[ \t]*(?P<name>[\w.-][\w./-]*\.[A-Za-z0-9]+)[ \t]*(?P<close>\*/|-->)?[ \t]*$"
)
_CLOSERS = {"#": None, "//": None, "/*": "*/", "<!--": "-->"}


def name_bare_filename(code: str) -> str:
    """Return ``code`` with a bare first-line file name (``# test.py``) spelt ``# filename: test.py``."""
    first, newline, rest = code.partition("\n")
    match = _BARE_NAME.match(first.rstrip("\r"))
    if match is None or _CLOSERS[match["open"]] != match["close"] or "filename" in first.lower():
        return code
    close = f" {match['close']}" if match["close"] else ""
    return f"{match['open']} filename: {match['name']}{close}{first[len(first.rstrip()) :]}{newline}{rest}"


_PIP_INSTALL = {
    "python": re.compile(r"^([ \t]*![ \t]?pip3? install)(?![^\n]*[ \t]-q)", re.MULTILINE),
    "shell": re.compile(r"^([ \t]*(?:python3? -m )?pip3? install)(?![^\n]*[ \t]-q)", re.MULTILINE),
}


def quiet_pip(code: str, language: str) -> str:
    """Add ``-qqq`` to each ``pip install`` line of a shell block (``!pip install`` of a Python one)."""
    pattern = _PIP_INSTALL["python"] if language == "python" else _PIP_INSTALL["shell"] if language in _SHELLS else None
    return code if pattern is None else pattern.sub(r"\1 -qqq", code)


class CodeExtractor:
    """Extract code blocks from a message with ``ccexec.extract_code_blocks``."""

    def extract_code_blocks(self, message: str | list[Any] | None) -> list[CodeBlock]:
        """Return the message's fenced code blocks as AG2 CodeBlocks."""
        text = content_str(message)
        return [CodeBlock(code=block.code, language=block.language) for block in ccexec.extract_code_blocks(text)]


class _CcexecCodeExecutor(CodeExecutor):
    """An AG2 code executor that runs blocks with a ccexec executor (``.executor``)."""

    DEFAULT_EXECUTION_POLICY: ClassVar[dict[str, bool]] = dict(DEFAULT_EXECUTION_POLICY)
    #: Tags AG2 reads as another language's, after lower-casing.
    LANGUAGE_ALIASES: ClassVar[dict[str, str]] = {}
    _UNSUPPORTED: ClassVar[str] = "unknown language {}\n"

    def __init__(
        self, executor: BaseCommandLineExecutor, work_dir: Path, execution_policies: Mapping[str, bool] | None
    ) -> None:
        self.executor = executor
        self._work_dir = work_dir
        self._extractor = CodeExtractor()
        #: language -> run it (True) or only save it (False); AG2's attribute, changeable.
        self.execution_policies: dict[str, bool] = {**self.DEFAULT_EXECUTION_POLICY, **(execution_policies or {})}

    @property
    def code_extractor(self) -> CodeExtractor:
        """What finds the code blocks in a message."""
        return self._extractor

    @property
    def work_dir(self) -> Path:
        """The work dir, as given (AG2 keeps a relative one relative)."""
        return self._work_dir

    @property
    def timeout(self) -> float:
        """Seconds each block may run."""
        return self.executor.timeout

    def code_writer_system_message(self) -> str:
        """A system message telling a code-writing agent how its code is run."""
        return self.executor.code_writer_system_message()

    def execute_code_blocks(self, code_blocks: list[CodeBlock]) -> CommandLineCodeResult:
        """Run (or, by the execution policies, only save) the blocks in order, stopping at the first that fails."""
        blocks, saved, refusal = self._plan(code_blocks)
        result = self.executor.execute_code_blocks(blocks)
        outputs = [
            f"Code saved to {block.code_file}\n" if only and block.code_file and not block.exit_code else block.output
            for block, only in zip(result.blocks, saved)
        ]
        exit_code, output = result.exit_code, "".join(outputs)
        if refusal is not None and exit_code == 0:
            exit_code, output = 1, output + refusal
        return CommandLineCodeResult(exit_code=exit_code, output=output, code_file=result.code_file)

    def _plan(self, code_blocks: Sequence[Any]) -> tuple[list[ccexec.CodeBlock], list[bool], str | None]:
        """The blocks as ccexec runs them, whether each is only saved, and the refusal of an unknown language."""
        blocks: list[ccexec.CodeBlock] = []
        saved: list[bool] = []
        for block in code_blocks:
            language = block.language.lower()
            language = self.LANGUAGE_ALIASES.get(language, language)
            if language not in self.DEFAULT_EXECUTION_POLICY:
                return blocks, saved, self._UNSUPPORTED.format(language)
            self._check(language, block.code)
            code = name_bare_filename(quiet_pip(block.code, language))
            runs = self.execution_policies.get(language, False)
            if runs and language not in _RUNS_AS:
                raise InvalidArgumentError(
                    f"{language} blocks cannot run, only be saved: set execution_policies[{language!r}] to False"
                )
            tag = _RUNS_AS[language] if runs else _save_tag(_EXTENSIONS[language])
            blocks.append(ccexec.CodeBlock(code, tag))
            saved.append(not runs)
        return blocks, saved, None

    def _check(self, language: str, code: str) -> None:
        """Raise ValueError for a block that must not run (the local executor's sanitize_command)."""

    def restart(self) -> None:
        """Kill running code and start afresh, keeping the work dir."""
        self.executor.restart()

    def stop(self) -> None:
        """Kill running code, stop the container."""
        self.executor.stop()

    def __enter__(self) -> Self:
        self.executor.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.executor.stop()


def _work_dir(work_dir: str | Path | None) -> Path:
    """AG2's work dir: as given (the current directory by default), made now, its parent must exist."""
    path = Path("." if work_dir is None else work_dir)
    path.mkdir(exist_ok=True)  # FileNotFoundError for a missing parent, as AG2's
    return path


def _languages(options: dict[str, Any]) -> dict[str, ccexec.Language]:
    return {**_ADAPTER_LANGUAGES, **(options.pop("languages", None) or {})}


# Each pattern: (what it finds, AG2's reason). Only a first line of defence on the host; the
# Docker executor is the one for untrusted code.
_DANGEROUS_SHELL = (
    (re.compile(r"\brm\s+(?:-\w+\s+)*-\w*(?:r\w*f|f\w*r)"), "Use of 'rm -rf' command is not allowed."),
    (re.compile(r"\bmv\b[^\n;&|]*\s/dev/null\b"), "Moving files to /dev/null is not allowed."),
    (re.compile(r"(?:^|[\s;&|(])dd\s"), "Use of 'dd' command is not allowed."),
    (re.compile(r">\s*/dev/(?:sd|hd|vd|xvd|nvme)\w*"), "Overwriting disk blocks directly is not allowed."),
    (re.compile(r"(\w+|:)\s*\(\)\s*\{\s*\1\s*\|\s*\1\s*&\s*\}\s*;\s*\1"), "Fork bombs are not allowed."),
)


class LocalCommandLineCodeExecutor(_CcexecCodeExecutor):
    """``ccexec.LocalCommandLineCodeExecutor`` as AG2's local executor (AG2's arguments, in AG2's order).

    ccexec's keyword-only options (``env``, ``languages``, ``max_output_bytes``, ``on_output``,
    ``setup_timeout``, ``cleanup_temp_files``) pass through; files are kept unless
    ``cleanup_temp_files=True`` (which deletes saved-only generated files too).
    """

    executor: ccexec.LocalCommandLineCodeExecutor
    SUPPORTED_LANGUAGES: ClassVar[list[str]] = list(DEFAULT_EXECUTION_POLICY)
    LANGUAGE_ALIASES: ClassVar[dict[str, str]] = {"py": "python"}
    FUNCTION_PROMPT_TEMPLATE: ClassVar[str] = FUNCTIONS_PROMPT_TEMPLATE

    def __init__(  # noqa: PLR0917 - positional order is AG2's, so switching is an import change
        self,
        timeout: int = 60,
        virtual_env_context: Any = None,
        work_dir: Path | str = ".",
        functions: Sequence[Any] = (),
        functions_module: str = "functions",
        execution_policies: Mapping[str, bool] | None = None,
        **options: Any,
    ) -> None:
        path = _work_dir(work_dir)
        self._functions = list(functions)
        options.setdefault("cleanup_temp_files", False)
        executor = ccexec.LocalCommandLineCodeExecutor(
            timeout=timeout, work_dir=path, functions=convert_functions(self._functions),
            functions_module=functions_module, virtual_env_context=virtual_env_context,
            languages=_languages(options), **options,
        )  # fmt: skip
        super().__init__(executor, path, execution_policies)

    @property
    def functions(self) -> list[Any]:
        """The user functions, as given."""
        return self._functions

    @property
    def functions_module(self) -> str:
        """The module blocks import the user functions from."""
        return self.executor.functions_module

    def format_functions_for_prompt(self, prompt_template: str = FUNCTION_PROMPT_TEMPLATE) -> str:
        """A prompt listing the user functions' stubs; the template may use ``$module_name`` and ``$functions``."""
        return self.executor.format_functions_for_prompt(prompt_template)

    @staticmethod
    def sanitize_command(lang: str, code: str) -> None:
        """Raise ValueError when a shell block holds a plainly destructive command (``rm -rf``, ``dd``, a fork bomb).

        A baseline against accidents on the host, not a sandbox: use the Docker executor for untrusted code.
        """
        if lang not in ("bash", "shell", "sh"):
            return
        for pattern, reason in _DANGEROUS_SHELL:
            if pattern.search(code):
                raise ValueError(f"refusing to run this {lang} block: {reason}")

    def _check(self, language: str, code: str) -> None:
        self.sanitize_command(language, code)


class DockerCommandLineCodeExecutor(_CcexecCodeExecutor):
    """``ccexec.DockerCommandLineCodeExecutor`` as AG2's Docker executor (AG2's arguments, in AG2's order).

    ``container_create_kwargs`` (docker-py's ``containers.create`` arguments) are mapped onto
    ccexec's ``docker run`` options where one fits: environment, network/network_mode,
    mem_limit, nano_cpus, pids_limit, read_only, user, cap_drop, security_opt, extra_hosts,
    volumes (mounted besides the work dir, which stays at /workspace), labels, shm_size. The
    rest raise InvalidArgumentError: image, name, entrypoint, command, working_dir and the
    like belong to ccexec's supervisor (it is the container's main process); other flags go in
    ``run_args``. ccexec's keyword-only options (``run_args``, ``hardened``, ``env``, ...) pass through.
    """

    executor: ccexec.DockerCommandLineCodeExecutor
    LANGUAGE_ALIASES: ClassVar[dict[str, str]] = {"py": "python", "js": "javascript"}
    _UNSUPPORTED = "Unsupported language {}\n"

    def __init__(  # noqa: PLR0917 - positional order is AG2's
        self,
        image: str = "python:3-slim",
        container_name: str | None = None,
        timeout: int = 60,
        work_dir: Path | str | None = None,
        bind_dir: Path | str | None = None,
        auto_remove: bool = True,
        stop_container: bool = True,
        execution_policies: Mapping[str, bool] | None = None,
        *,
        container_create_kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        path = _work_dir(work_dir)
        for name, value in docker_run_options(container_create_kwargs or {}).items():
            if name in options:
                raise InvalidArgumentError(f"{name} is given both directly and through container_create_kwargs")
            options[name] = value
        executor = ccexec.DockerCommandLineCodeExecutor(
            image, container_name, timeout=timeout, work_dir=path, bind_dir=bind_dir, auto_remove=auto_remove,
            stop_container=stop_container, languages=_languages(options), **options,
        )  # fmt: skip
        self._bind_dir = path if bind_dir is None else Path(bind_dir)
        super().__init__(executor, path, execution_policies)

    @property
    def bind_dir(self) -> Path:
        """The host path mounted at /workspace (the work dir, as given, unless bind_dir was)."""
        return self._bind_dir


def docker_run_options(create_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """ccexec's Docker options for docker-py ``containers.create`` arguments; InvalidArgumentError for the rest."""
    options: dict[str, Any] = {}
    run_args: list[str] = []
    for key, value in create_kwargs.items():
        if key in _CREATE_TO_OPTION:
            name, convert = _CREATE_TO_OPTION[key]
            options[name] = convert(value)
        elif key == "labels":
            labels = value.items() if isinstance(value, Mapping) else ((label, "") for label in value)
            run_args += [arg for label, text in labels for arg in ("--label", f"{label}={text}")]
        elif key == "shm_size":
            run_args += ["--shm-size", str(value)]
        elif key in _OWNED_BY_CCEXEC:
            raise InvalidArgumentError(
                f"container_create_kwargs[{key!r}] cannot be set: ccexec's supervisor is the container's main "
                "process, with the work dir at /workspace (image, container_name and auto_remove are arguments)"
            )
        else:
            mapped = ", ".join(sorted({*_CREATE_TO_OPTION, "labels", "shm_size"}))
            raise InvalidArgumentError(
                f"container_create_kwargs[{key!r}] has no ccexec equivalent; these map: {mapped}. "
                "Pass other `docker run` flags as run_args=[...]"
            )
    if run_args:
        options["run_args"] = run_args
    return options


def _environment(value: Any) -> dict[str, str]:
    if isinstance(value, Mapping):
        return {str(key): str(text) for key, text in value.items()}
    pairs = [str(item).partition("=") for item in value]
    return {key: text for key, _, text in pairs}


def _volumes(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {host: spec if isinstance(spec, Mapping) else {"bind": spec} for host, spec in value.items()}
    return [str(item) for item in value]


_CREATE_TO_OPTION: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "environment": ("env", _environment),
    "network": ("network", str),
    "network_mode": ("network", str),
    "mem_limit": ("memory", str),
    "nano_cpus": ("cpus", lambda value: value / 1e9),
    "pids_limit": ("pids_limit", int),
    "read_only": ("read_only", bool),
    "user": ("user", str),
    "cap_drop": ("cap_drop", list),
    "security_opt": ("security_opt", list),
    "extra_hosts": ("extra_hosts", dict),
    "volumes": ("extra_volumes", _volumes),
}
_OWNED_BY_CCEXEC = frozenset(
    ("image", "name", "entrypoint", "command", "working_dir", "tty", "stdin_open", "detach", "auto_remove", "remove")
)
