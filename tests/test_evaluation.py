"""The evaluation run: rows are saved as they finish and reused only for the same checkpoint and settings."""

import json
from pathlib import Path

import pytest

from conftest import write_tiny_checkpoints
from diffusion.evaluation import EvalConfig, Evaluator, row_key
from diffusion.formats.outputs import OutputExists

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(not FASHION.exists(), reason="needs Debian's dataset-fashion-mnist (CI installs it)")


@pytest.fixture
def setup(tmp_path):
    folder = write_tiny_checkpoints(tmp_path / "ckpt", image_size=28, class_names=tuple(f"c{i}" for i in range(10)))
    config = EvalConfig(checkpoint="tiny", checkpoint_dir=str(folder), out_dir=str(tmp_path / "eval"), quick=True,
                        progress_dir=str(tmp_path / "likelihood-progress"))
    return folder, config


def counting(evaluator: Evaluator) -> list:
    calls = []
    score = evaluator.score
    evaluator.score = lambda **fields: calls.append(fields) or score(**fields)
    return calls


def test_a_second_run_reuses_every_row_and_other_parts_are_kept(setup):
    folder, config = setup
    first = Evaluator(config)
    calls = counting(first)
    samplers = first.run(parts=("samplers",))
    assert len(calls) == 6 and len(samplers["samplers"]) == 6 and samplers["guidance"] == []
    real = samplers["real_data"]
    assert real["samples"] == 20 and real["fid"] > 0 and real["fid_std"] > 0 and 0 <= real["accuracy"] <= 1

    second = Evaluator(config)
    calls = counting(second)
    both = second.run(parts=("samplers", "guidance"))
    assert len(calls) == 4  # only the guidance rows are new
    assert [row_key(r) for r in both["samplers"]] == [row_key(r) for r in samplers["samplers"]]
    assert both["samplers"][0]["fid"] == samplers["samplers"][0]["fid"]

    samplers_plot, guidance_plot = (Path(config.out_dir) / f"tiny-{p}.png" for p in ("fid-vs-nfe", "guidance"))
    drawn = samplers_plot.stat().st_mtime_ns, guidance_plot.stat().st_mtime_ns
    third = Evaluator(config)
    calls = counting(third)
    guidance_only = third.run(parts=("guidance",))
    saved = json.loads((Path(config.out_dir) / "tiny.json").read_text())
    assert calls == [] and len(guidance_only["samplers"]) == 6 and len(saved["samplers"]) == 6
    # the plot of the part run is drawn again; the samplers' rows are kept, and so is their plot
    assert samplers_plot.stat().st_mtime_ns == drawn[0] and guidance_plot.stat().st_mtime_ns != drawn[1]


def test_a_part_computed_under_other_settings_survives_a_run_of_another_part(setup):
    """Rows of a part that is not computed now stay as the earlier run wrote them, even when today's settings for
    that part differ (a probes row of 2 images must survive a texture run whose defaults say 1)."""
    from dataclasses import replace

    folder, config = setup
    Evaluator(replace(config, probe_images=2)).run(parts=("probes",))
    texture = Evaluator(replace(config, probe_images=1)).run(parts=("texture",))
    saved = json.loads((Path(config.out_dir) / "tiny.json").read_text())
    assert texture["probes"]["images"] == 2 and saved["probes"]["images"] == 2 and len(saved["texture"]) == 2


def test_rows_are_recomputed_when_the_checkpoint_changes(setup):
    folder, config = setup
    Evaluator(config).run(parts=("guidance",))
    write_tiny_checkpoints(folder, image_size=28, class_names=tuple(f"c{i}" for i in range(10)), schedule="vp-linear")
    again = Evaluator(config)
    calls = counting(again)
    with pytest.raises(OutputExists, match="holds an evaluation of another file"):  # never replaced by surprise
        again.run(parts=("guidance",))
    assert calls == []
    again.run(parts=("guidance",), overwrite=True)
    assert len(calls) == 4


def test_the_json_is_written_after_every_row(setup, monkeypatch):
    folder, config = setup
    Evaluator(config).run(parts=("guidance",))
    evaluator = Evaluator(config)
    score = evaluator.score
    finished = []

    def fail_on_third(**fields):
        if len(finished) == 2:
            raise KeyboardInterrupt
        finished.append(fields)
        return score(**fields)

    evaluator.score = fail_on_third
    with pytest.raises(KeyboardInterrupt):
        evaluator.run(parts=("samplers",))
    saved = json.loads((Path(config.out_dir) / "tiny.json").read_text())
    assert len(saved["samplers"]) == 2 and len(saved["guidance"]) == 4  # the other part survives the interruption

    resumed = Evaluator(config)
    calls = counting(resumed)
    resumed.run(parts=("samplers",))
    assert len(calls) == 4


def test_every_sample_has_its_own_noise(setup, monkeypatch):
    """With the same noise for every class, an unconditional row would score `classes` copies of a few images."""
    import diffusion.evaluation.evaluator as evaluation

    folder, config = setup
    evaluator = Evaluator(config)
    indices = []
    original = evaluation.run_request

    def recording(cache, request, **options):
        indices.extend(range(request.first_index, request.first_index + request.batch_size))
        return original(cache, request, **options)

    monkeypatch.setattr(evaluation, "run_request", recording)
    row = evaluator.score(sampler="ddim", steps=2, guidance="cfg", scale=0.0)
    assert sorted(indices) == list(range(row["samples"])) and row["samples"] == 20


def test_seed_spread_samples_other_seeds(setup):
    folder, config = setup
    results = Evaluator(config).run(parts=("seed-spread",))
    rows = results["seed_spread"]
    assert [r["seed"] for r in rows] == [1, 2] and rows[0]["fid"] != rows[1]["fid"]
    assert "Seed spread: DDIM-4" in (Path(config.out_dir) / "tiny.md").read_text()


def test_an_interrupted_run_keeps_earlier_rows_that_come_later_in_the_table(setup):
    """Self-conditioning off rows come first in the table; the on rows of an earlier run must stay in the file."""
    _, config = setup
    Evaluator(config).run(parts=("samplers",), self_conditioning=(True,))
    evaluator = Evaluator(config)
    score = evaluator.score

    def fail_on_second(**fields):
        evaluator.score = lambda **more: (_ for _ in ()).throw(KeyboardInterrupt)
        return score(**fields)

    evaluator.score = fail_on_second
    with pytest.raises(KeyboardInterrupt):
        evaluator.run(parts=("samplers",), self_conditioning=(False, True))
    saved = json.loads((Path(config.out_dir) / "tiny.json").read_text())
    assert [r["self_condition"] for r in saved["samplers"]] == [False, True, True, True]


def test_guidance_methods_part_scores_every_method_the_checkpoint_allows_and_plots_them(setup):
    import shutil

    folder, config = setup
    shutil.copy(folder / "tiny.safetensors", folder / "tiny-weak.safetensors")  # autoguidance's guide
    results = Evaluator(config).run(parts=("guidance-methods",))
    rows = results["guidance_methods"]
    assert [r["method"] for r in rows] == ["cfg", "cfg-rescale", "interval", "apg", "dynamic-threshold",
                                           "autoguidance"]
    by_method = {r["method"]: r for r in rows}
    assert by_method["apg"]["apg_momentum"] == -0.5 and by_method["cfg-rescale"]["rescale"] == 0.7
    # the weak model is a copy: autoguidance by an identical model is the conditional model at any scale
    assert by_method["autoguidance"]["fid"] != by_method["cfg"]["fid"]
    assert all(r["samples"] == 20 and 0 <= r["accuracy"] <= 1 for r in rows)
    assert (Path(config.out_dir) / "tiny-guidance-methods.png").stat().st_size > 10_000
    assert "| apg | 3 |" in (Path(config.out_dir) / "tiny.md").read_text()


def test_few_step_and_straightness_parts_of_a_teacher_and_its_student(setup):
    from diffusion.formats.checkpoint import load_checkpoint, save_checkpoint

    folder, config = setup
    teacher = load_checkpoint(folder / "tiny-flow.safetensors")
    student_config = teacher.config | {"defaults": {"sampler": "ode", "solver": "euler", "steps": 2, "guidance": "none"},
                                       "reflow": {"teacher_name": "tiny-flow", "scale": 2.0}}
    save_checkpoint(folder / "tiny-reflow.safetensors", "denoiser", teacher.network, student_config, {}, "student")
    rows = {}
    for name in ("tiny-flow", "tiny-reflow"):
        results = Evaluator(replace_checkpoint(config, name)).run(parts=("few-step", "straightness"))
        rows[name] = results
        table = (Path(config.out_dir) / f"{name}.md").read_text()
        assert "Few steps" in table and "Straightness S" in table
    teacher_rows, student_rows = rows["tiny-flow"]["few_step"], rows["tiny-reflow"]["few_step"]
    assert [(r["solver"], r["steps"], r["nfe"]) for r in teacher_rows] == [("euler", 1, 1), ("euler", 2, 2), ("dpm++2m", 3, 3)]
    assert {r["guidance"] for r in teacher_rows} == {"cfg"} and {r["guidance"] for r in student_rows} == {"none"}
    # the student is the teacher's network here, so without guidance both give the same paths and straightness
    teacher_s = {r["guidance"]: r for r in rows["tiny-flow"]["straightness"]}
    (student_s,) = rows["tiny-reflow"]["straightness"]
    assert student_s["straightness"] == pytest.approx(teacher_s["none"]["straightness"], rel=1e-6)
    assert teacher_s["cfg"]["straightness"] != pytest.approx(teacher_s["none"]["straightness"])
    assert len(student_s["deviation"]) == len(student_s["flow_time"]) == 4 and student_s["flow_time"][0] == 1.0


def replace_checkpoint(config, name):
    from dataclasses import replace

    return replace(config, checkpoint=name)


def test_the_samplers_part_can_be_limited_to_some_samplers(setup):
    from dataclasses import replace

    folder, config = setup
    results = Evaluator(replace(config, samplers=("ddim", "ode"))).run(parts=("samplers",), self_conditioning=(False,))
    assert [r["sampler"] for r in results["samplers"]] == ["ddim", "ode"]


def tiny_second_evaluator(folder):
    """A randomly initialised ConvNet evaluator of 28 px images and 10 classes, as the outsider parts' second judge."""
    import torch

    from diffusion.formats.checkpoint import model_config, save_checkpoint
    from diffusion.models import ConvNetConfig, build_network

    torch.manual_seed(3)
    network = build_network("ConvNet", ConvNetConfig(widths=(4, 8), num_classes=10)).eval()
    save_checkpoint(folder / "tiny-second-evaluator.safetensors", "evaluator", network,
                    model_config("evaluator", network, class_names=tuple(f"c{i}" for i in range(10))), {"steps": 0},
                    "Tiny second evaluator.")
    return "tiny-second-evaluator"


def test_the_outsider_parts_judge_references_and_settings_by_both_evaluators(setup):
    from dataclasses import replace

    from diffusion.evaluation.outsider import APP_DEFAULT

    folder, config = setup
    config = replace(config, second_evaluator=tiny_second_evaluator(folder))
    evaluator = Evaluator(config)
    results = evaluator.run(parts=("second-evaluator", "precision-recall", "two-sample"))
    split = evaluator.real_split
    reference, comparison = set(split.reference_indices.tolist()), set(split.comparison_indices.tolist())
    assert len(reference) == len(comparison) == 20 and not reference & comparison
    assert not reference & set(split.pool_indices.tolist()) and len(split.pool_indices) == 200
    settings = [(r.get("reference"), r.get("guidance")) for r in results["second_evaluator"]]
    assert settings == [("real", None), ("noisy", None), ("blurred", None), (None, "none"), (None, "cfg")]
    # the two-sample part judges the generator only: its references are the judge-calibration part's rows
    assert [r["guidance"] for r in results["two_sample"]] == ["none", "cfg"]
    cfg = results["two_sample"][-1]
    assert (cfg["sampler"], cfg["solver"], cfg["scale"], cfg["nfe"]) == ("ode", "dpm++2m", APP_DEFAULT["scale"], 2)
    for row in results["two_sample"]:  # a panel of two judges (--quick), their mean and its standard error
        judges = row["two_sample_judges"]
        assert len(judges) == 2 and row["two_sample_accuracy"] == pytest.approx(sum(judges) / 2)
        assert row["two_sample_stderr"] == pytest.approx(abs(judges[0] - judges[1]) / 2)
        assert 0 <= row["two_sample_accuracy"] <= 1 and row["held_out"] == 8 and row["judge"]["epochs"] == 2
    for part in ("second_evaluator", "precision_recall"):
        for row in results[part]:
            assert list(row["by_evaluator"]) == ["tiny-evaluator", "tiny-second-evaluator"]
    by_fid = {r.get("reference"): r["by_evaluator"]["tiny-second-evaluator"]["fid"] for r in results["second_evaluator"]}
    assert by_fid["real"] < by_fid["blurred"]  # even a random ConvNet sees a 3x3 blur
    assert all(0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
               for r in results["precision_recall"] for m in r["by_evaluator"].values())
    table = (Path(config.out_dir) / "tiny.md").read_text()
    assert "| real, 3x3 box blur |" in table and "Classifier two-sample test" in table and "tiny-second-evaluator: recall" in table
    assert "judge-calibration part's" in table


def test_the_outsider_settings_are_generates_default_and_a_students_own():
    from diffusion.app.generate import APP_GUIDANCE, APP_SAMPLING
    from diffusion.evaluation.outsider import APP_DEFAULT

    assert APP_DEFAULT == APP_SAMPLING | APP_GUIDANCE


def test_the_model_card_quotes_each_parts_recorded_summary_from_any_subfolder(tmp_path):
    from diffusion.evaluation import recorded_summaries

    class Model:
        path = tmp_path / "ckpt" / "m.safetensors"
        sha256 = "abc"

    likelihood = {"likelihood": "conditional", "method": "exact", "images": 10, "bits_per_dim": 6.5, "stderr": 0.1}
    judged = {"measure": "two-sample", "sampler": "ode", "solver": "dpm++2m", "steps": 10, "guidance": "cfg",
              "scale": 3.0, "two_sample_accuracy": 0.8}
    real = {"measure": "two-sample", "reference": "real", "two_sample_accuracy": 0.47}
    hostile = {**judged, "two_sample_accuracy": "<b>1</b>"}
    (tmp_path / "outsider").mkdir()
    (tmp_path / "m.json").write_text(json.dumps({"identity": {"checkpoint_sha256": "abc"}, "likelihood": [likelihood]}))
    (tmp_path / "outsider" / "m.json").write_text(json.dumps({"identity": {"checkpoint_sha256": "abc"},
                                                              "two_sample": [real, judged, hostile, {"no": "fields"}]}))
    assert recorded_summaries(Model, tmp_path) == [
        ("Likelihood", "6.50 ± 0.10 bits/dim given the class (exact, first 10 test images)"),
        ("Realism", "classifier two-sample accuracy 0.80 at DPM-Solver++(2M)-10, CFG 3 (0.5 = indistinguishable "
                    "from real test images; real against real: 0.47)")]
    Model.sha256 = "another file"
    assert recorded_summaries(Model, tmp_path) == []


def test_a_few_step_student_is_judged_at_its_own_setting_and_at_one_step_or_two(setup):
    from dataclasses import replace

    from diffusion.formats.checkpoint import load_checkpoint, save_checkpoint
    from diffusion.evaluation.outsider import judged_settings

    folder, config = setup
    teacher = load_checkpoint(folder / "tiny-flow.safetensors")
    student_config = teacher.config | {"defaults": {"sampler": "ode", "solver": "euler", "steps": 2, "guidance": "none"}}
    save_checkpoint(folder / "tiny-student.safetensors", "denoiser", teacher.network, student_config, {}, "student")
    settings = judged_settings(Evaluator(replace(config, checkpoint="tiny-student")))
    assert [(s["solver"], s["steps"], s["guidance"]) for s in settings] == [("euler", 2, "none"), ("euler", 1, "none")]
    instant_config = student_config | {"defaults": {"sampler": "ode", "solver": "euler", "steps": 1, "guidance": "none"}}
    save_checkpoint(folder / "tiny-instant.safetensors", "denoiser", teacher.network, instant_config, {}, "instant")
    settings = judged_settings(Evaluator(replace(config, checkpoint="tiny-instant")))
    assert [s["steps"] for s in settings] == [1, 2]  # a one-step model: at its own step and at two, not twice at one
    assert [s["temperature"] for s in judged_settings(Evaluator(replace(config, checkpoint="tiny-nice")))] == [1.0]


def test_the_guided_realism_part_ranks_guided_rows_by_their_judges_mean(setup):
    from dataclasses import replace
    from statistics import fmean

    folder, config = setup
    config = replace(config, second_evaluator=tiny_second_evaluator(folder))
    results = Evaluator(config).run(parts=("guided-realism", "click-time"))
    rows = results["guided_realism"]
    assert [(r["method"], r["guidance"], r["scale"]) for r in rows] == [
        ("none", "none", 1.0), ("cfg", "cfg", 3.0), ("apg", "cfg", 3.0)]
    assert rows[2]["apg_momentum"] == -0.5 and {(r["solver"], r["steps"]) for r in rows} == {("dpm++2m", 2)}
    for row in rows:
        assert len(row["two_sample_judges"]) == 2 and row["two_sample_accuracy"] == fmean(row["two_sample_judges"])
        assert list(row["by_evaluator"]) == ["tiny-evaluator", "tiny-second-evaluator"]
        assert all(0 <= a <= 1 for a in row["by_evaluator"].values())
    # the click-time part timed each of these settings and the classic DDIM-50 with CFG 3 in the same run
    timed = results["click_time"]
    assert [(t["steps"], t["method"], t["scale"]) for t in timed["timings"]] == [(2, m, s) for m, _, s in
                                                                                 [(r["method"], 0, r["scale"]) for r in rows]]
    assert timed["classic"]["steps"] == 50 and timed["classic_seconds"] > max(t["seconds"] for t in timed["timings"])
    report = (Path(config.out_dir) / "tiny.md").read_text()
    assert "Guided realism" in report and "DDIM-50 with CFG 3 took" in report and "| time |" in report
    assert (Path(config.out_dir) / "tiny-guided-realism.png").exists()


def test_the_chosen_guided_setting_is_the_most_real_one_that_both_evaluators_call_accurate():
    from diffusion.evaluation.guided_realism import chosen, summary, time_shares

    def row(method, scale, accuracies, two_sample):
        return dict(method=method, scale=scale, steps=10, by_evaluator=dict(zip("ab", accuracies)),
                    two_sample_accuracy=two_sample)

    rows = [row("none", 1.0, (0.92, 0.91), 0.62),  # the most real, but not guided
            row("cfg", 3.0, (0.99, 0.99), 0.72),
            row("apg", 3.0, (0.99, 0.96), 0.64),  # one evaluator below the floor
            row("interval", 3.0, (0.98, 0.97), 0.67)]
    assert chosen(rows) is rows[3]
    assert chosen(rows[:1]) is None
    assert summary({"guided_realism": rows}).endswith("at 10 steps keeps class accuracy >= 0.97 at two-sample "
                                                      "accuracy 0.67 (no guidance: 0.62)")
    assert summary({"guided_realism": [{"method": 3}]}) == ""  # a recorded file is data
    # with the click-time part's figures, a setting slower than 0.3 of DDIM-50 with CFG 3 is not eligible
    timings = [dict(steps=10, method="cfg", scale=3.0, seconds=2.0), dict(steps=10, method="interval", scale=3.0,
                                                                          seconds=4.0)]
    results = {"guided_realism": rows, "click_time": {"classic_seconds": 10.0, "timings": timings}}
    assert time_shares(results) == {(10, "cfg", 3.0): 0.2, (10, "interval", 3.0): 0.4}
    assert chosen(rows, time_shares(results)) is rows[1]
    assert "CFG, scale 3 at 10 steps" in summary(results)
    assert time_shares({"click_time": {"classic_seconds": "<b>", "timings": timings}}) == {}


def test_the_guided_realism_grid_goes_beyond_generates_steps_and_can_be_cut_by_step_count(setup):
    from dataclasses import replace

    from diffusion.evaluation import click_time, guided_realism

    folder, config = setup
    full = Evaluator(replace(config, quick=False))
    rows = guided_realism.rows(full, (False,))
    by_steps = {steps: [(r["method"], r["scale"]) for r in rows if r["steps"] == steps] for steps in (10, 15, 20)}
    assert len(by_steps[10]) == 13 and ("cfg", 1.5) in by_steps[10]  # every method at 1.5, 2, 3, and no guidance
    for steps in (15, 20):
        assert by_steps[steps] == [("none", 1.0)] + [(m, s) for m in ("cfg-rescale", "interval", "apg") for s in (2.0, 3.0)]
    assert len(rows) == 27 and all(r["judge"]["widths"] == [32, 64, 128] or r["judge"]["widths"] == (32, 64, 128)
                                   for r in rows)
    cut = Evaluator(replace(config, quick=False, guided_steps=(20,)))
    assert {r["steps"] for r in guided_realism.rows(cut, (False,))} == {20}
    [timed] = click_time.rows(cut, (False,))
    assert len(timed["settings"]) == 7 and timed["rounds"] == click_time.ROUNDS and timed["classic"]["sampler"] == "ddim"
