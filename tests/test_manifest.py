"""The shipped checkpoints against checkpoints/MANIFEST.json: a swapped, truncated or unlisted file fails."""

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_cli

from diffusion.formats.checkpoint import read_metadata
from diffusion.formats.manifest import MANIFEST_NAME, describe, manifest_problems, read_manifest, update_manifest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "checkpoints"


def test_every_shipped_checkpoint_matches_its_manifest_row():
    rows = read_manifest(SHIPPED)
    assert set(rows) == {p.name for p in SHIPPED.glob("*.safetensors")}
    assert manifest_problems(SHIPPED) == []


def test_the_shipped_reflow_student_is_the_evaluated_one():
    """The file the few-step evaluation and the race measured (issue 25: a test once overwrote it with an 8 px toy)."""
    evaluated = json.loads((ROOT / "docs/evaluation/reflow/fashion-reflow.json").read_text())
    row = read_manifest(SHIPPED)["fashion-reflow.safetensors"]
    assert row.sha256 == evaluated["identity"]["checkpoint_sha256"] == describe(SHIPPED / "fashion-reflow.safetensors").sha256
    assert row.image_shape == (1, 28, 28) and len(row.classes) == 10 and row.training_steps == 2593
    assert read_metadata(SHIPPED / "fashion-reflow.safetensors")["config"]["defaults"]["steps"] == 2


def test_the_shipped_instant_model_is_the_evaluated_one():
    """Issue 41: the file the few-step evaluation measured, a one-step model fine-tuned from the shipped reflow
    student."""
    evaluated = json.loads((ROOT / "docs/evaluation/reflow/fashion-instant.json").read_text())
    row = read_manifest(SHIPPED)["fashion-instant.safetensors"]
    assert row.sha256 == evaluated["identity"]["checkpoint_sha256"] == describe(SHIPPED / "fashion-instant.safetensors").sha256
    assert row.image_shape == (1, 28, 28) and len(row.classes) == 10 and row.training_steps == 6000
    config = read_metadata(SHIPPED / "fashion-instant.safetensors")["config"]
    assert config["defaults"]["steps"] == 1 and config["adversarial"]["start_from"].endswith("fashion-reflow.safetensors")


@pytest.fixture
def shipped_copy(tmp_path):
    folder = tmp_path / "checkpoints"
    shutil.copytree(SHIPPED, folder)
    assert manifest_problems(folder) == []
    return folder


def test_a_swapped_file_fails_naming_the_file_and_what_differs(shipped_copy):
    shutil.copyfile(shipped_copy / "fashion-flow.safetensors", shipped_copy / "fashion-reflow.safetensors")
    (problem,) = manifest_problems(shipped_copy)
    assert problem.startswith("fashion-reflow.safetensors differs from its manifest row: sha256")
    assert "training_steps 5476 where the manifest says 2593" in problem


def test_a_truncated_a_missing_and_an_unlisted_file_each_fail(shipped_copy):
    data = (shipped_copy / "fashion-nice.safetensors").read_bytes()
    (shipped_copy / "fashion-nice.safetensors").write_bytes(data[:-1000])
    (shipped_copy / "fashion-dit.safetensors").unlink()
    shutil.copyfile(shipped_copy / "fashion-flow-weak.safetensors", shipped_copy / "extra.safetensors")
    problems = manifest_problems(shipped_copy)
    assert len(problems) == 3
    assert problems[0] == f"fashion-dit.safetensors: listed in {MANIFEST_NAME} but missing from checkpoints/"
    assert problems[1].startswith(f"extra.safetensors: not in {MANIFEST_NAME}")
    assert problems[2].startswith("fashion-nice.safetensors differs from its manifest row: sha256")
    assert f"bytes {len(data) - 1000} where the manifest says {len(data)}" in problems[2]


def test_updating_a_row_on_purpose_accepts_the_new_file(shipped_copy):
    shutil.copyfile(shipped_copy / "fashion-flow.safetensors", shipped_copy / "fashion-reflow.safetensors")
    rows = update_manifest(shipped_copy, ["fashion-reflow.safetensors"])
    assert rows["fashion-reflow.safetensors"].sha256 == rows["fashion-flow.safetensors"].sha256
    assert manifest_problems(shipped_copy) == []


def test_the_manifest_command_checks_and_fails_with_one_line_per_file(shipped_copy):
    def run(*args):
        return run_cli("manifest", "--checkpoint-dir", shipped_copy, *args)

    ok = run()
    assert ok.returncode == 0 and "match MANIFEST.json" in ok.stdout
    shutil.copyfile(shipped_copy / "fashion-diffusion-weak.safetensors", shipped_copy / "fashion-flow-weak.safetensors")
    failed = run()
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert failed.stderr.startswith("error: fashion-flow-weak.safetensors differs from its manifest row")
    assert run("--update", "fashion-flow-weak").returncode == 0 and run().returncode == 0
