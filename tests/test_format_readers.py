"""One reader per format: loading our .safetensors file or a diffusers folder enters that format's reader once
(from the caller), never the other format's reader, and every later step runs in the shared build step
(formats.model_build), which never calls back into a reader."""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import pytest
from conftest import write_diffusers_folder, write_tiny_checkpoints

import diffusion.formats.checkpoint as checkpoint_reader
import diffusion.formats.diffusers_folder as diffusers_reader
from diffusion.formats.checkpoint import load_checkpoint
from diffusion.formats.diffusers_folder import load_folder
from diffusion.serving.engine import ModelCache

STANDARD_LIBRARY = sysconfig.get_paths()["stdlib"]


def entries(run, modules) -> dict[str, int]:
    """How many times control enters each module's functions from code outside that module while run() runs
    (the standard library's own frames, such as contextlib's, do not count as outside callers)."""
    files = {Path(module.__file__).resolve(): module.__name__ for module in modules}
    counts = {module.__name__: 0 for module in modules}

    def profile(frame, event, arg):
        if event != "call":
            return
        name = files.get(Path(frame.f_code.co_filename).resolve())
        if name is None:
            return
        caller = frame.f_back.f_code.co_filename if frame.f_back else ""
        if Path(caller).resolve() != Path(frame.f_code.co_filename).resolve() and not caller.startswith(STANDARD_LIBRARY):
            counts[name] += 1

    sys.setprofile(profile)
    try:
        run()
    finally:
        sys.setprofile(None)
    return counts


def test_a_safetensors_file_enters_only_its_reader_once(tmp_path):
    write_tiny_checkpoints(tmp_path)
    path = next(tmp_path.glob("*.safetensors"))
    counts = entries(lambda: load_checkpoint(path), [checkpoint_reader, diffusers_reader])
    assert counts == {checkpoint_reader.__name__: 1, diffusers_reader.__name__: 0}


def test_a_diffusers_folder_enters_only_its_reader_once(tmp_path):
    pytest.importorskip("diffusers", reason="diffusers is a test dependency: pip install -e '.[test]'")
    folder = write_diffusers_folder(tmp_path / "peer", channels=1, size=8)[0]
    counts = entries(lambda: load_folder(folder), [checkpoint_reader, diffusers_reader])
    assert counts == {checkpoint_reader.__name__: 0, diffusers_reader.__name__: 1}


def test_the_model_cache_never_mixes_the_two_readers(tmp_path):
    pytest.importorskip("diffusers", reason="diffusers is a test dependency: pip install -e '.[test]'")
    write_diffusers_folder(tmp_path / "peer", channels=1, size=8)
    counts = entries(lambda: ModelCache(tmp_path, device="cpu").get("peer"), [checkpoint_reader, diffusers_reader])
    assert counts[checkpoint_reader.__name__] == 0 and counts[diffusers_reader.__name__] >= 1


def test_the_entry_counter_sees_a_call_back():
    """The instrument's power: a module whose function is called twice from outside counts 2."""
    counts = entries(lambda: (checkpoint_reader.defaults_problem({}), checkpoint_reader.defaults_problem({})),
                     [checkpoint_reader])
    assert counts == {checkpoint_reader.__name__: 2}
