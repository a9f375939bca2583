"""Issue 31, part 3: the larger teacher's presets and the one command that trains it, its pairs and its student."""

from dataclasses import replace
from pathlib import Path

import pytest

from diffusion.formats.checkpoint import load_checkpoint
from diffusion.models import build_network
from diffusion.training import PRESETS
from diffusion.training.large_teacher import LargeTeacherConfig, run_large_teacher
from diffusion.training.presets import STUDENT_GUIDANCE

FASHION = Path("/usr/share/datasets/fashion-mnist")


def test_the_large_presets_are_a_teacher_several_times_larger_and_its_student():
    teacher, student, small = PRESETS["fashion-flow-large"], PRESETS["fashion-reflow-large"], PRESETS["fashion-flow"]
    count = lambda preset: sum(p.numel() for p in build_network("UNet", preset.unet).parameters())
    assert 10e6 <= count(teacher) <= 35e6 and count(teacher) >= 10 * count(small)
    assert teacher.unet.attention_levels == (1, 2)  # 14x14 and 7x7
    assert student.unet == teacher.unet and student.task == "reflow" and student.teacher == teacher.export_to
    assert teacher.objective.schedule == student.objective.schedule == "flow"
    assert teacher.bf16 and teacher.compile  # the GPU path (both are off on a CPU)


@pytest.mark.skipif(not FASHION.exists(), reason="needs Debian's dataset-fashion-mnist (CI installs it)")
def test_the_large_teacher_command_trains_pairs_and_reflows_at_a_tiny_size(tmp_path):
    config = LargeTeacherConfig(run_root=str(tmp_path), out_dir=str(tmp_path / "export"), quick=True)
    lines = []
    files = run_large_teacher(config, device="cpu", log=lines.append)
    teacher, student = load_checkpoint(files["teacher"]), load_checkpoint(files["student"])
    assert teacher.kind == student.kind == "denoiser" and teacher.schedule.name == "flow"
    assert student.sampling_defaults["steps"] == 2
    reflow = student.config["reflow"]
    assert (reflow.get("method", "cfg"), reflow["scale"]) == (STUDENT_GUIDANCE["method"], STUDENT_GUIDANCE["scale"])
    assert sorted(p.name for p in (tmp_path / "pairs").iterdir()) == ["pairs-00000.safetensors", "pairs-00001.safetensors"]
    # a second run keeps what the first made
    again = []
    run_large_teacher(config, device="cpu", log=again.append)
    assert sum("already trained" in line for line in again) == 2 and "pairs-00000" not in " ".join(again)


def test_the_large_teacher_command_refuses_unknown_presets():
    with pytest.raises(ValueError, match="teacher must be a preset"):
        replace(LargeTeacherConfig(), teacher="no-such-preset")


def test_students_learn_from_the_teacher_guided_as_generate_starts():
    from diffusion.app.controls import DEFAULT_METHOD, DEFAULT_SCALES

    assert STUDENT_GUIDANCE == {"method": DEFAULT_METHOD, "scale": DEFAULT_SCALES["cfg"]}


@pytest.mark.skipif(not FASHION.exists(), reason="needs Debian's dataset-fashion-mnist (CI installs it)")
def test_the_command_line_runs_quick_into_its_out_folder(tmp_path, capsys):
    from diffusion.__main__ import main

    main(["large-teacher", "--quick", "--out", str(tmp_path / "run")])
    printed = capsys.readouterr().out
    for role, name in (("teacher", "fashion-flow-large"), ("student", "fashion-reflow-large")):
        path = tmp_path / "run" / "export" / f"{name}.safetensors"
        assert path.exists() and f"{role}: {path}" in printed
