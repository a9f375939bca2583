"""The app's output folder: the only files it serves (grids, GIFs, manifests), one folder per process, pruned to the
newest MAX_OUTPUT_FILES. Standard library only, so a process can name its folder without importing gradio or torch."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

MAX_OUTPUT_FILES = 1000  # PNGs, GIFs and manifests the app keeps for download (about 50 runs); older are deleted


def _own_output_folder() -> Path:
    """A folder of this process's own under the system temp folder, removed when the process exits: a shared fixed
    folder let one server serve another's files, and each pruned the others'. (A forked child, which inherits the
    name, leaves it to its parent.)"""
    folder = Path(tempfile.mkdtemp(prefix="diffusion-playground-"))
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(folder, ignore_errors=True))
    return folder


OUTPUT_DIR = _own_output_folder()


def output_path(stem: str, suffix: str, folder: Path = OUTPUT_DIR, keep: int = MAX_OUTPUT_FILES) -> str:
    """A fresh file in the app's output folder (the only files the app serves), which keeps `keep` files."""
    return output_paths([stem], suffix, folder, keep)[0]


def output_paths(stems, suffix: str, folder: Path = OUTPUT_DIR, keep: int = MAX_OUTPUT_FILES) -> list[str]:
    """A fresh file per stem; the folder is then pruned once, in the pruning thread: deleting a response's worth of
    old files (17 for a 16-image grid) took 15-50 ms here, which a response need not wait for."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for stem in stems:
        fd, path = tempfile.mkstemp(prefix=f"{stem}-", suffix=suffix, dir=folder)
        os.close(fd)
        paths.append(path)
    _pruning.submit(prune_outputs, folder, keep)
    return paths


_pruning = ThreadPoolExecutor(max_workers=1, thread_name_prefix="output-pruning")  # one at a time, in order


def pruned() -> None:
    """Wait until every prune asked for so far has run (the pruning thread runs them in order)."""
    _pruning.submit(lambda: None).result()


def inside_outputs(path, folder: Path = OUTPUT_DIR) -> bool:
    """Whether `path` names a place inside this process's output folder (after resolving links and '..'), judged
    without opening it: a path that came from the browser (a history entry, a file box's value) may name any file."""
    if not isinstance(path, str) or not path or len(path) > 4096 or "\0" in path:
        return False
    try:
        return Path(path).resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError, ValueError):  # a link loop, a name the system refuses
        return False


def prune_outputs(folder: Path, keep: int) -> int:
    """Delete all but the `keep` newest files of `folder`; returns how many were deleted."""
    files = []
    for entry in os.scandir(folder):
        try:
            if entry.is_file(follow_symlinks=False):
                files.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name))
        except FileNotFoundError:
            continue  # removed by another request meanwhile
    deleted = 0
    for _, name in sorted(files, reverse=True)[keep:]:
        try:
            (folder / name).unlink()
            deleted += 1
        except FileNotFoundError:
            pass
    return deleted
