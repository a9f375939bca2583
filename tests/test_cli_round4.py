"""The command line's answers to issue 39's five cases, in one sentence each (no traceback, a non-zero exit), and
classes typed by name."""

from __future__ import annotations

import pytest
from conftest import run_cli

from diffusion.serving.engine import RequestError, class_index_of

CLASSES = ("T-shirt/top", "Trouser", "Sneaker", "Ankle boot")


def one_sentence(result, *words):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line]
    assert len(lines) == 1, result.stderr
    for word in words:
        assert word in lines[0]


@pytest.mark.parametrize("command", [("pairs", "--quick", "--teacher", "x.safetensors"), ("lab2d-report", "--quick")])
def test_a_folder_option_given_a_file_says_so(tmp_path, command):
    existing = tmp_path / "README.md"
    existing.write_text("keep me")
    one_sentence(run_cli(*command, "--out", existing), "it is a file, and --out names a folder")
    assert existing.read_text() == "keep me"


def test_sample_class_by_name_or_a_sentence(checkpoint_dir, tmp_path):
    bad = run_cli("sample", "--checkpoint-dir", checkpoint_dir, "--checkpoint", "tiny", "--class", "abc",
                  "--steps", "2", "--batch-size", "2", "--out", tmp_path / "bad.png")
    one_sentence(bad, "class 'abc' is neither an index nor a class name")
    good = run_cli("sample", "--checkpoint-dir", checkpoint_dir, "--checkpoint", "tiny", "--class", "CROSS",
                   "--steps", "2", "--batch-size", "2", "--out", tmp_path / "good.png")
    assert good.returncode == 0, good.stderr


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_no_command_reads_a_number_that_is_not_finite(value):
    one_sentence(run_cli("large-teacher", f"--teacher-minutes={value}", "--quick"), "must be a finite number")
    one_sentence(run_cli("sample", "--checkpoint", "x", f"--scale={value}"), "must be a finite number")
    one_sentence(run_cli("train", f"--lr={value}"), "must be a finite number")


def test_manifest_update_of_an_unknown_name_fails(tmp_path):
    result = run_cli("manifest", "--checkpoint-dir", tmp_path, "--update", "nonexistent-file")
    one_sentence(result, "nonexistent-file.safetensors: neither a file in")
    assert not (tmp_path / "MANIFEST.json").exists()


def test_class_index_of_reads_indices_and_names_in_any_case():
    assert class_index_of("2", CLASSES) == 2 == class_index_of(2, CLASSES)
    assert class_index_of("sneaker", CLASSES) == 2 == class_index_of(" SNEAKER ", CLASSES)
    assert class_index_of("ankle Boot", CLASSES) == 3
    with pytest.raises(RequestError, match="out of range: this checkpoint has classes 0-3"):
        class_index_of("4", CLASSES)
    with pytest.raises(RequestError, match=r"neither an index nor a class name of this checkpoint \(0 T-shirt/top"):
        class_index_of("Bag", CLASSES)


def test_the_sde_refusal_says_what_would_make_the_grid_stable(checkpoint_dir):
    """On a uniform grid no step count makes the reverse SDE stable near t = 0, and the sentence says so instead of
    'take more steps'; on a log-SNR grid it names the step count that works, and that many steps pass."""
    from dataclasses import replace

    from diffusion.serving.engine import ModelCache, SampleRequest, check_request

    cache = ModelCache(checkpoint_dir)
    uniform = SampleRequest(checkpoint="tiny", sampler="sde", steps=4, batch_size=1)
    with pytest.raises(RequestError, match=r"no step count up to 1000 makes this spacing stable near t = 0: choose "
                                           r"'uniform in log-SNR' spacing"):
        check_request(cache, uniform)
    log_snr = replace(uniform, spacing="log-snr", steps=2)
    with pytest.raises(RequestError, match=r"take at least \d+ steps, or choose 'uniform in log-SNR' spacing") as refused:
        check_request(cache, log_snr)
    enough = int(str(refused.value).split("take at least ")[1].split(" ")[0])
    check_request(cache, replace(log_snr, steps=enough))


def test_the_edit_tab_samples_the_sde_on_a_log_snr_grid(checkpoint_dir):
    """The Edit tab has no spacing control; its reverse SDE runs on the grid where it is stable."""
    from diffusion.app.edit import edit_request
    from diffusion.serving.engine import ModelCache, check_request

    cache = ModelCache(checkpoint_dir)
    request, _ = edit_request(cache, "tiny", "sdedit", 0.6, 10, 10, 1.0, None, 0, "cfg", 2.0, "sde", "heun", 30, 0, 1)
    assert request.base.spacing == "log-snr"
    check_request(cache, request.base)
    other, _ = edit_request(cache, "tiny", "sdedit", 0.6, 10, 10, 1.0, None, 0, "cfg", 2.0, "ddim", "heun", 30, 0, 1)
    assert other.base.spacing == "uniform"
