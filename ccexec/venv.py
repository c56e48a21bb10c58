"""create_virtual_env: a venv made with venv.EnvBuilder, checked, returned as its context."""

from __future__ import annotations

import os
from types import SimpleNamespace

from .errors import VirtualEnvError

#: Seconds allowed for the new interpreter to answer a trivial command.
_CHECK_TIMEOUT = 60


def create_virtual_env(
    path: str | os.PathLike[str],
    *,
    with_pip: bool = True,
    system_site_packages: bool = False,
    clear: bool = False,
    upgrade_deps: bool = False,
    prompt: str | None = None,
) -> SimpleNamespace:
    """Create (or reuse) a virtual environment at ``path`` and return its context.

    The context is the one ``venv.EnvBuilder.ensure_directories`` makes: ``env_dir``,
    ``env_exe`` (its Python), ``bin_path``... Pass it as ``virtual_env_context``.
    ``with_pip=False`` is much faster when blocks will not install packages.

    Raises VirtualEnvError when the venv cannot be created or its Python does not run.
    """
    import subprocess
    import venv  # here, not at import time: it pulls in logging and sysconfig

    class _ContextKeepingBuilder(venv.EnvBuilder):
        """Keeps the context, so nothing guesses ``bin/`` versus ``Scripts/``."""

        context: SimpleNamespace | None = None

        def post_setup(self, context: SimpleNamespace) -> None:
            self.context = context

    kwargs = {"upgrade_deps": upgrade_deps} if upgrade_deps else {}
    builder = _ContextKeepingBuilder(
        with_pip=with_pip, system_site_packages=system_site_packages, clear=clear, prompt=prompt, **kwargs
    )
    try:
        builder.create(os.fspath(path))
    except (OSError, ValueError, subprocess.CalledProcessError) as exc:  # ValueError: path is a file
        raise VirtualEnvError(
            f"could not create a virtual environment at {os.fspath(path)!r}: {exc}", path=os.fspath(path)
        ) from exc
    context = builder.context
    if context is None:  # pragma: no cover - post_setup always runs after a successful create
        raise VirtualEnvError(f"venv gave no context for {os.fspath(path)!r}", path=os.fspath(path))
    try:
        subprocess.run(
            [context.env_exe, "-c", "import sys; assert sys.prefix != sys.base_prefix"],
            check=True,
            capture_output=True,
            timeout=_CHECK_TIMEOUT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise VirtualEnvError(
            f"the virtual environment at {context.env_dir!r} was created but its Python "
            f"{context.env_exe!r} does not run as a venv: {exc}",
            path=context.env_dir,
        ) from exc
    return context
