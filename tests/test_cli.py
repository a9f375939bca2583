import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import run_cli, write_diffusers_folder, write_tiny_checkpoints

FASHION = Path("/usr/share/datasets/fashion-mnist")


run = run_cli


def test_help_lists_the_subcommands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("train", "export", "sample", "evaluate", "benchmark"):
        assert command in result.stdout
    train_help = run("train", "--help").stdout
    for option in ("--preset", "--resume", "--objective.parameterization", "--unet.base-channels", "--max-minutes"):
        assert option in train_help


def test_sample_writes_a_png_grid(tmp_path):
    write_tiny_checkpoints(tmp_path / "ckpt")
    out = tmp_path / "grid.png"
    result = run("sample", "--checkpoint", str(tmp_path / "ckpt" / "tiny.safetensors"), "--sampler", "ddim",
                 "--steps", "5", "--class", "1", "--scale", "3", "--seed", "0", "--batch-size", "4", "--columns", "2",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "NFE 5" in result.stdout
    assert Image.open(out).size == (7 * (2 * 10 + 2), 7 * (2 * 10 + 2))  # 2x2 cells of 8 px + 2 px padding, x7 (to ~56 px)


def test_import_diffusers_then_sample_and_evaluate_refuses(tmp_path):
    pytest.importorskip("diffusers")
    folder, _, _ = write_diffusers_folder(tmp_path / "my-ddpm", channels=3, size=16, num_class_embeds=3)
    out = tmp_path / "ckpt" / "mine.safetensors"
    out.parent.mkdir()
    result = run("import-diffusers", str(folder), "--out", str(out), "--class-names", "cat, dog", "--null-class", "2")
    assert result.returncode == 0, result.stderr
    assert "2 classes, predicts eps" in result.stdout and "UNet2DModel" in result.stdout
    grid = tmp_path / "grid.png"
    result = run("sample", "--checkpoint", str(out), "--steps", "4", "--class", "1", "--batch-size", "4",
                 "--columns", "4", "--spacing", "leading", "--out", str(grid))  # CFG (the default) through the null class
    assert result.returncode == 0, result.stderr
    assert Image.open(grid).mode == "RGB" and Image.open(grid).size == (4 * (4 * 18 + 2), 4 * (18 + 2))  # 16 px x4
    result = run("sample", "--checkpoint", str(folder), "--steps", "3", "--guidance", "none", "--class", "0",
                 "--batch-size", "2", "--out", str(grid), "--overwrite")  # the folder itself, given by path
    assert result.returncode == 0, result.stderr
    result = run("evaluate", "--checkpoint", "mine", "--checkpoint-dir", str(out.parent), "--quick")
    assert result.returncode != 0 and "no evaluator checkpoint" in result.stderr and "Traceback" not in result.stderr
    write_tiny_checkpoints(out.parent)  # now with an evaluator, of 1-channel 8 px images of 3 classes
    result = run("evaluate", "--checkpoint", "mine", "--checkpoint-dir", str(out.parent), "--quick")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "3-channel 16 px images of 2 classes; the evaluator (1-channel 8 px" in result.stderr
    result = run("import-diffusers", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.safetensors"))
    assert result.returncode != 0 and "not a folder" in result.stderr and "Traceback" not in result.stderr


def test_sample_with_a_bad_request_prints_one_clear_line(tmp_path):
    write_tiny_checkpoints(tmp_path / "ckpt")
    result = run("sample", "--checkpoint", "tiny", "--checkpoint-dir", str(tmp_path / "ckpt"), "--steps", "5000")
    assert result.returncode == 2 and result.stderr.strip() == "error: steps must be between 1 and 1000, got 5000"


def test_sample_from_a_normalizing_flow_and_options_of_the_other_kind_are_errors(tmp_path):
    folder = write_tiny_checkpoints(tmp_path / "ckpt")
    out = tmp_path / "nice.png"
    result = run("sample", "--checkpoint", "tiny-nice", "--checkpoint-dir", str(folder), "--temperature", "0.7",
                 "--class", "all", "--columns", "3", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "NFE 1" in result.stdout and Image.open(out).size == (7 * (3 * 10 + 2), 7 * (3 * 10 + 2))  # 8 px x7
    refused = run("sample", "--checkpoint", "tiny-nice", "--checkpoint-dir", str(folder), "--steps", "5")
    assert refused.returncode == 2 and "normalizing flow: --steps do not apply" in refused.stderr
    refused = run("sample", "--checkpoint", "tiny", "--checkpoint-dir", str(folder), "--temperature", "0.5")
    assert refused.returncode == 2 and "--temperature applies to normalizing flows only" in refused.stderr


@pytest.fixture
def fashion_sized_checkpoints(tmp_path):
    return write_tiny_checkpoints(tmp_path / "ckpt28", image_size=28, class_names=tuple(f"c{i}" for i in range(10)))


@pytest.mark.skipif(not FASHION.exists(), reason="needs Debian's dataset-fashion-mnist (CI installs it)")
def test_evaluate_quick(fashion_sized_checkpoints, tmp_path):
    out = tmp_path / "eval"
    result = run("evaluate", "--quick", "--checkpoint", "tiny", "--checkpoint-dir", str(fashion_sized_checkpoints),
                 "--out-dir", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    results = json.loads((out / "tiny.json").read_text())
    assert len(results["samplers"]) == 6 and len(results["guidance"]) == 4  # 3 samplers x self-cond off/on
    assert all(r["fid"] > 0 and 0 <= r["accuracy"] <= 1 for r in results["samplers"] + results["guidance"])
    assert (out / "tiny-fid-vs-nfe.png").exists() and (out / "tiny-guidance.png").exists()


@pytest.mark.skipif(not FASHION.exists(), reason="needs Debian's dataset-fashion-mnist (CI installs it)")
@pytest.mark.parametrize("checkpoint, rows", [("tiny", 2), ("tiny-nice", 1)])
def test_evaluate_texture_quick(fashion_sized_checkpoints, tmp_path, checkpoint, rows):
    out = tmp_path / "eval"
    result = run("evaluate", "--quick", "--checkpoint", checkpoint, "--checkpoint-dir", str(fashion_sized_checkpoints),
                 "--out-dir", str(out), "--parts", "texture")
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    results = json.loads((out / f"{checkpoint}.json").read_text())
    real = results["real_data"]
    assert len(results["texture"]) == rows and all(r["texture_fid"] > 0 for r in results["texture"])
    assert real["blurred"]["texture_fid"] > real["texture_fid"] and real["noisy"]["texture_fid"] > 0  # (a random tiny evaluator)
    table = (out / f"{checkpoint}.md").read_text()
    assert "| texture position |" in table.replace("texture FID | texture position", "| texture position") \
        and "blurred by a 3x3 box" in table


@pytest.mark.skipif(not FASHION.exists(), reason="needs Debian's dataset-fashion-mnist (CI installs it)")
def test_evaluate_quick_on_a_normalizing_flow(fashion_sized_checkpoints, tmp_path):
    import json

    out = tmp_path / "eval"
    args = ("--quick", "--checkpoint", "tiny-nice", "--checkpoint-dir", str(fashion_sized_checkpoints), "--out-dir", str(out))
    result = run("evaluate", *args)
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / "tiny-nice.json").read_text())
    assert [r["temperature"] for r in results["temperatures"]] == [0.7, 0.85, 1.0]
    assert results["quality_bar"]["temperature"] == 1.0 and results["quality_bar"]["nfe"] == 1
    assert (out / "tiny-nice-temperature.png").exists() and "| temperature |" in (out / "tiny-nice.md").read_text()
    refused = run("evaluate", *args, "--parts", "samplers")
    assert refused.returncode == 2 and "normalizing-flow: its evaluation parts are temperatures" in refused.stderr


@pytest.mark.skipif(not FASHION.exists(), reason="needs Debian's dataset-fashion-mnist (CI installs it)")
# The ODE's probes are solved in-process by test_evaluation (five more dopri5 batches here took 6 s of CPU); the
# flow's exact ones run through the command line.
@pytest.mark.parametrize("checkpoint, method, parts", [("tiny", "pf-ode dopri5", ("likelihood",)),
                                                       ("tiny-nice", "exact", ("likelihood", "probes"))])
def test_evaluate_likelihood_quick(fashion_sized_checkpoints, tmp_path, checkpoint, method, parts):
    import json

    out = tmp_path / "eval"
    args = ("evaluate", "--quick", "--parts", *parts, "--checkpoint", checkpoint, "--checkpoint-dir",
            str(fashion_sized_checkpoints), "--out-dir", str(out), "--batch-size", "2")
    result = run(*args, cwd=tmp_path)  # --quick: the resumable per-batch state goes under --out-dir
    assert result.returncode == 0, result.stderr[-2000:]
    results = json.loads((out / f"{checkpoint}.json").read_text())
    rows = results["likelihood"]
    assert [r["likelihood"] for r in rows] == ["conditional", "unconditional"]
    if "probes" in parts:
        probes = results["probes"]["by_probe"]  # 2 test images x 5 probes
        assert list(probes) == ["original", "flipped left-right", "inverted (255 - k)", "constant grey (128)",
                                "uniform noise"]
        assert probes["original"]["likelier_than_original"] == 0 and probes["uniform noise"]["bits_per_dim"] > 0
        assert "| constant grey (128) |" in (out / f"{checkpoint}.md").read_text()
    assert all(r["method"] == method and r["images"] == 4 and r["bits_per_dim"] > 0 and r["stderr"] > 0 for r in rows)
    assert rows[0]["bits_per_dim"] != rows[1]["bits_per_dim"]
    assert (rows[0]["nfe"] > 0) == (method != "exact")
    assert "| conditional |" in (out / f"{checkpoint}.md").read_text()
    progress = sorted((out / "likelihood-progress").glob(f"{checkpoint}-*.json"))
    # per row (the two likelihoods, the probes), per batch
    assert len(progress) == len(parts) + 1 and all(len(json.loads(p.read_text())) == 2 for p in progress)
    written = [p.stat().st_mtime_ns for p in progress]
    # A second run (the rows deleted from the JSON) resumes from the per-batch state: the same numbers, no solving.
    (out / f"{checkpoint}.json").unlink()
    again = run(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((out / f"{checkpoint}.json").read_text())["likelihood"][0]["bits_per_dim"] == rows[0]["bits_per_dim"]
    assert [p.stat().st_mtime_ns for p in progress] == written  # nothing was solved again
    # The cards table shows the measured likelihood for this file (matched by SHA-256), and not for the others.
    cards = run("cards", "--checkpoint-dir", str(fashion_sized_checkpoints), "--evaluation-dir", str(out))
    line = next(line for line in cards.stdout.splitlines() if f"`{checkpoint}.safetensors`" in line)
    assert f"{rows[0]['bits_per_dim']:.2f} ± {rows[0]['stderr']:.2f} bits/dim given the class" in line
    assert "bits/dim given the class" not in cards.stdout.replace(line, "")


def test_benchmark_quick(tmp_path):
    write_tiny_checkpoints(tmp_path / "ckpt")
    out = tmp_path / "bench.md"
    result = run("benchmark", "--quick", "--checkpoint", "tiny", "--checkpoint-dir", str(tmp_path / "ckpt"),
                 "--out", str(out))
    assert result.returncode == 0, result.stderr[-2000:]
    text = out.read_text()
    for row in ("ddim wall time / bare network forwards", "CFG DDIM at batch B", "diffusers DDIMScheduler",
                "cold checkpoint load", "GFLOP per forward", "Share of peak", "| channels_last |"):
        assert row in text


def test_pairs_then_reflow_training_from_the_command_line(tmp_path):
    """`pairs --quick` twice (the second run finds every shard and makes none), then the fashion-reflow preset
    pointed at a tiny teacher for a few steps, exported as a few-step checkpoint."""
    write_tiny_checkpoints(tmp_path / "ckpt")
    teacher = str(tmp_path / "ckpt" / "tiny-flow.safetensors")
    first = run("pairs", "--quick", "--teacher", teacher, "--out", str(tmp_path / "pairs"), "--no-self-condition")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "2 shards (40 pairs)" in first.stdout and first.stderr.count("pairs-0000") == 2
    again = run("pairs", "--quick", "--teacher", teacher, "--out", str(tmp_path / "pairs"), "--no-self-condition")
    assert again.returncode == 0 and "pairs-0000" not in again.stderr  # resumed: nothing left to make
    student = tmp_path / "student.safetensors"
    trained = run("train", "--preset", "fashion-reflow", "--teacher", teacher, "--pairs", str(tmp_path / "pairs"),
                  "--image-size", "8", "--no-objective.self-condition", "--steps", "3", "--batch-size", "4",
                  "--sample-every", "0", "--run-dir", str(tmp_path / "run"), "--export-to", str(student))
    assert trained.returncode == 0, trained.stderr[-2000:]
    sampled = run("sample", "--checkpoint", str(student), "--sampler", "ode", "--solver", "euler", "--steps", "2",
                  "--guidance", "none", "--class", "0", "--batch-size", "2", "--out", str(tmp_path / "s.png"))
    assert sampled.returncode == 0 and "NFE 2" in sampled.stdout


# --- no command replaces an existing file by surprise (issue 25) ---------------------------------------------------
def test_training_a_preset_refuses_to_replace_its_exported_checkpoint_before_any_work(tmp_path):
    """`train --preset fashion-nice` in a folder that has checkpoints/fashion-nice.safetensors (here a stand-in)."""
    shipped = tmp_path / "checkpoints" / "fashion-nice.safetensors"
    shipped.parent.mkdir()
    shipped.write_bytes(b"the shipped model")
    result = run("train", "--preset", "fashion-nice", "--steps", "1", "--run-dir", str(tmp_path / "run"), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("error: checkpoints/fashion-nice.safetensors exists; pass --overwrite to replace "
                                     "it, or write elsewhere")
    assert shipped.read_bytes() == b"the shipped model" and not (tmp_path / "run").exists()


def test_import_export_and_sample_refuse_an_existing_out_unless_told(tmp_path):
    write_tiny_checkpoints(tmp_path / "ckpt")
    existing = tmp_path / "ckpt" / "tiny-nice.safetensors"
    before = existing.read_bytes()
    sample = ("sample", "--checkpoint", str(tmp_path / "ckpt" / "tiny.safetensors"), "--steps", "2", "--batch-size", "2")
    for args in (sample + ("--out", str(existing)), ("export", str(tmp_path), "--out", str(existing))):
        result = run(*args)
        assert result.returncode == 2 and f"{existing} exists; pass --overwrite" in result.stderr, result.stderr
    assert existing.read_bytes() == before
    png = tmp_path / "grid.png"
    assert run(*sample, "--out", str(png)).returncode == 0
    assert run(*sample, "--out", str(png)).returncode == 2
    assert run(*sample, "--out", str(png), "--overwrite", "--seed", "1").returncode == 0


def test_import_diffusers_refuses_to_replace_a_checkpoint(tmp_path):
    pytest.importorskip("diffusers")
    folder, _, _ = write_diffusers_folder(tmp_path / "good-ddpm", channels=1, size=8)
    write_tiny_checkpoints(tmp_path / "ckpt")
    target = tmp_path / "ckpt" / "tiny-nice.safetensors"
    before = target.read_bytes()
    refused = run("import-diffusers", str(folder), "--out", str(target))
    assert refused.returncode == 2 and "tiny-nice.safetensors exists; pass --overwrite" in refused.stderr
    assert target.read_bytes() == before
    assert run("import-diffusers", str(folder), "--out", str(target), "--overwrite").returncode == 0
    assert target.read_bytes() != before


def test_benchmark_quick_writes_to_a_temporary_folder_and_never_over_a_report(tmp_path):
    write_tiny_checkpoints(tmp_path / "ckpt")
    args = ("benchmark", "--quick", "--checkpoint", "tiny", "--checkpoint-dir", str(tmp_path / "ckpt"))
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    written = Path(result.stderr.strip().splitlines()[-1].removeprefix("written to "))
    assert written.name == "benchmarks.md" and written.exists() and tmp_path not in written.parents
    assert not (tmp_path / "docs").exists()
    report = tmp_path / "report.md"
    report.write_text("an earlier report")
    refused = run(*args, "--out", str(report))
    assert refused.returncode == 2 and "report.md exists; pass --overwrite" in refused.stderr
    assert report.read_text() == "an earlier report"


def test_evaluate_refuses_to_replace_an_evaluation_of_another_file(fashion_sized_checkpoints, tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "tiny.json").write_text(json.dumps({"identity": {"checkpoint_sha256": "another file"}}))
    args = ("evaluate", "--quick", "--checkpoint", "tiny", "--checkpoint-dir", str(fashion_sized_checkpoints),
            "--out-dir", str(out), "--parts", "quality-bar")
    refused = run(*args)
    assert refused.returncode == 2 and "holds an evaluation of another file" in refused.stderr
    assert json.loads((out / "tiny.json").read_text())["identity"]["checkpoint_sha256"] == "another file"


# --- every command validates its arguments before work, in one line (issue 26) -------------------------------------
@pytest.mark.parametrize("args, message", [
    (("sample", "--checkpoint", "x", "--columns", "0"), "argument --columns: must be at least 1, got 0"),
    (("sample", "--checkpoint", "x", "--columns", "-3"), "argument --columns: must be at least 1, got -3"),
    (("benchmark", "--batch", "0"), "argument --batch: must be at least 1, got 0"),
    (("evaluate", "--samples", "0"), "argument --samples: must be at least 1, got 0"),
    (("evaluate", "--samples", "-5"), "argument --samples: must be at least 1, got -5"),
    (("sample", "--checkpoint", "x", "--seed", "abc"), "argument --seed: must be a whole number, got 'abc'"),
    (("export", "/nonexistent", "--out", "/nonexistent-too/x.safetensors"), "the folder /nonexistent-too does not exist"),
    (("evaluate", "--out-dir", "/nonexistent/x/y"), "cannot write /nonexistent/x/y: the folder /nonexistent/x does not exist"),
    (("frobnicate",), "invalid choice: 'frobnicate'"),
])
def test_wrong_arguments_get_one_line_before_any_work(args, message):
    result = run(*args)
    assert result.returncode == 2 and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_a_sample_into_a_missing_folder_fails_before_sampling(tmp_path):
    write_tiny_checkpoints(tmp_path / "ckpt")
    result = run("sample", "--checkpoint", str(tmp_path / "ckpt" / "tiny.safetensors"), "--steps", "2",
                 "--out", str(tmp_path / "missing" / "s.png"))
    assert result.returncode == 2 and result.stderr.strip() == (
        f"error: cannot write {tmp_path / 'missing' / 's.png'}: the folder {tmp_path / 'missing'} does not exist")
    assert not (tmp_path / "missing").exists()


def test_a_sampled_png_carries_its_settings_and_regenerates_the_same_pixels(tmp_path):
    """Issue 27's settings in the PNG, from the command line: `sample --settings-from` gives the same file's pixels."""
    import numpy as np

    from diffusion.serving.settings import request_from_png

    write_tiny_checkpoints(tmp_path / "ckpt")
    first, again = tmp_path / "first.png", tmp_path / "again.png"
    made = run("sample", "--checkpoint", "tiny", "--checkpoint-dir", str(tmp_path / "ckpt"), "--sampler", "ode",
               "--solver", "dpm++2m", "--steps", "4", "--class", "2", "--seed", "11", "--batch-size", "4", "--out", str(first))
    assert made.returncode == 0, made.stderr
    request, sha256 = request_from_png(first)
    assert (request.sampler, request.solver, request.steps, request.class_index, request.seed) == ("ode", "dpm++2m", 4, 2, 11)
    redo = run("sample", "--settings-from", str(first), "--checkpoint-dir", str(tmp_path / "ckpt"), "--out", str(again))
    assert redo.returncode == 0 and "warning" not in redo.stderr, redo.stderr
    assert np.array_equal(np.asarray(Image.open(first)), np.asarray(Image.open(again)))
    mixed = run("sample", "--settings-from", str(first), "--steps", "9", "--checkpoint-dir", str(tmp_path / "ckpt"),
                "--out", str(tmp_path / "x.png"))
    assert mixed.returncode == 2 and "leave out --steps" in mixed.stderr
