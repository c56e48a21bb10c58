"""Where blocks run: each backend starts a supervisor (or its stand-in) and runs requests on it.

- ``host``: the supervisor as a child process of this one (LocalCommandLineCodeExecutor).
- ``bwrap``: the supervisor as PID 1 of a bubblewrap sandbox (LocalCommandLineCodeExecutor(sandbox=True)).
- ``docker``: the supervisor as a container's main process, attached over ``docker run -i``.
- ``docker_exec``: one ``docker exec`` per block, for images with only ``sh``.
- ``docker_cli``: every docker argv, and the mapping of the CLI's stderr to exceptions.
- ``gc``: finding and removing containers whose owner is gone.
"""

from __future__ import annotations

#: Where the work dir is inside a container (here: ``import ccexec`` must not load the docker modules).
WORKSPACE = "/workspace"

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (import time matters)
if TYPE_CHECKING:
    import os
    from typing import Callable, Collection, Generator, Protocol, Sequence

    from .._capture import OutputCapture
    from .._client import Cancel
    from .._protocol import BlockEnd, RunRequest

    class Files(Protocol):
        """How files reach the work dir and leave it: directly on a disk we see, or through the engine."""

        def copy_to(self, host_path: str | os.PathLike[str], dest: str | os.PathLike[str]) -> list[str]:
            """Copy a host file or directory to ``dest`` in the work dir; return the work-dir-relative names."""

        def copy_from(
            self, path: str | os.PathLike[str], host_dest: str | os.PathLike[str], *, overwrite: bool, max_bytes: int
        ) -> list[str]:
            """Copy ``path`` of the work dir to the host; return the work-dir-relative names copied."""

        def watch(self) -> Callable[[Collection[str]], tuple[list[str], bool]]:
            """Start watching the work dir; the function returned lists (sorted, capped) the files
            changed since, without the names given, and whether the list was cut."""

    class Backend(Protocol):
        """What the executor needs from a place that runs blocks."""

        #: How a block killed by a signal reports: True for ``-N`` (as subprocess does),
        #: False for ``128 + N`` (as shells and engines do).
        negative_signals: bool

        @property
        def alive(self) -> bool:
            """Whether ``run`` can be called without starting anew."""

        def start(self) -> None:
            """Start (again, when not alive); raise a CcexecError saying why it cannot."""

        def run(
            self, requests: Sequence[RunRequest], captures: Sequence[OutputCapture], cancel: Cancel
        ) -> Generator[BlockEnd, None, None]:
            """Run the blocks in order, each only if the one before succeeded; yield their ends."""

        def code_file(self, relative: str) -> str:
            """The path of a block's file as the user can open it."""

        def code_dir(self) -> str:
            """The work dir as the code sees it."""

        def stop(self) -> None:
            """Kill whatever runs and release everything (the supervisor, the container)."""

        @property
        def files(self) -> Files:
            """Copies in and out of the work dir, and what a call changed there."""
