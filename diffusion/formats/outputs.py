"""Where commands write: never over an existing file unless the user says so, and --quick runs never into the tree.

A shipped checkpoint or a docs page is replaced only on purpose (`--overwrite`); the check runs before any work, so
a refused command has cost nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


class OutputExists(ValueError):
    """A command would replace an existing file the user did not ask it to replace."""


def refuse_to_replace(path, overwrite: bool) -> Path:
    """`path`, if writing there replaces nothing or the user passed --overwrite; else OutputExists naming it."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExists(f"{path} exists; pass --overwrite to replace it, or write elsewhere")
    return path


def quick_output_dir(command: str) -> Path:
    """A fresh temporary folder for a --quick run given no explicit output place."""
    return Path(tempfile.mkdtemp(prefix=f"diffusion-{command}-quick-"))


def atomic_write(path: Path, write) -> Path:
    """Call write(temporary path) for a file in path's folder, then rename it over path: a reader sees the old file
    or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
