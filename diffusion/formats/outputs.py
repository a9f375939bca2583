"""Where commands write: never over an existing file unless the user says so, and --quick runs never into the tree.

A shipped checkpoint or a docs page is replaced only on purpose (`--overwrite`); the check runs before any work, so
a refused command has cost nothing.
"""

from __future__ import annotations

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
