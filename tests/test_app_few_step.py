"""Few-step models in the app (issue 15): defaults on selection, live mode, the teacher/student comparison and the
Trajectory tab's straightness readout."""

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

from conftest import browser_page, write_tiny_checkpoints
from test_app import CHROMIUM

from diffusion.formats.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

FEW_STEP_DEFAULTS = {"sampler": "ode", "solver": "euler", "steps": 2, "guidance": "none"}


def write_tiny_student(folder: Path, defaults=FEW_STEP_DEFAULTS, name="tiny-reflow"):
    """tiny-flow's network saved as a reflow student of it: few-step defaults and its teacher in the metadata."""
    teacher = load_checkpoint(folder / "tiny-flow.safetensors")
    config = teacher.config | {"defaults": defaults,
                               "reflow": {"teacher_name": "tiny-flow", "teacher_sha256": teacher.sha256, "scale": 2.0}}
    return save_checkpoint(folder / f"{name}.safetensors", "denoiser", teacher.network, config, {"steps": 0},
                           "A tiny few-step student.")


@pytest.fixture(scope="module")
def few_step_cache(tmp_path_factory):
    from diffusion.serving.engine import ModelCache

    folder = write_tiny_checkpoints(tmp_path_factory.mktemp("few-step") / "checkpoints")
    write_tiny_student(folder)
    return ModelCache(folder, capacity=8)


@pytest.fixture(scope="module")
def few_step_server(few_step_cache):
    import app

    with app.serve(few_step_cache) as url:
        yield url


@pytest.fixture(scope="module")
def few_step_client(few_step_server):
    from diffusion.serving.app_client import local_client

    return local_client(few_step_server)


@pytest.mark.parametrize("defaults, problem", [({"steps": 0}, "steps 0"), ({"steps": True}, "steps True"),
                                               ({"sampler": "<b>x</b>"}, "sampler"), ({"colour": 1}, "unknown field"),
                                               ("2 steps", "must be a JSON object")])
def test_hostile_sampling_defaults_are_refused_on_load(tmp_path, defaults, problem):
    folder = write_tiny_checkpoints(tmp_path)
    with pytest.raises(CheckpointError, match=problem):
        write_tiny_student(folder, defaults=defaults)  # save_checkpoint validates like load_checkpoint


def test_selecting_a_few_step_model_sets_its_defaults_and_offers_live_mode(few_step_cache):
    from diffusion.app.generate import APP_SAMPLING, on_checkpoint_change

    outputs = on_checkpoint_change(few_step_cache, Path("docs/evaluation"), "tiny-reflow", "ddim", False)
    sampler, solver, steps, scale, live, few_step = (outputs[i] for i in (4, 5, 6, 9, 13, 14))
    assert (sampler.value, solver.value, steps.value, solver.visible) == ("ode", "euler", 2, True)
    assert outputs[2].value == "none" and scale.value == 1.0
    assert live.visible is True and few_step is True
    back = on_checkpoint_change(few_step_cache, Path("docs/evaluation"), "tiny", "ode", True)
    assert (back[4].value, back[6].value, back[2].value, back[13].visible, back[14]) == (
        "ode", APP_SAMPLING["steps"], "cfg", False, False)
    assert back[5].value == "dpm++2m"  # the tab's own start: DPM-Solver++(2M), 15 steps
    kept = on_checkpoint_change(few_step_cache, Path("docs/evaluation"), "tiny-flow", "ode", False)
    assert kept[6].value is None or "value" not in kept[6].constructor_args  # a user's steps are kept between others


def test_live_handler_skips_unless_ticked_and_samples_when_it_is(few_step_cache):
    import gradio as gr

    from diffusion.app.generate import generate_live

    values = ["tiny-reflow", "ode", "euler", 2, 0.0, "uniform", "none", 1, 1.0, False, 5, 4]
    assert all(out is gr.skip() or isinstance(out, type(gr.skip())) for out in generate_live(few_step_cache, False, *values))
    gallery, grid, status, path = generate_live(few_step_cache, True, *values)
    assert len(gallery) == 4 and "NFE 2" in status and "(live)" in status and Path(path).exists()


def test_teacher_and_student_side_by_side_through_the_api(few_step_client):
    picture, table = few_step_client.predict("tiny-reflow", "1, 2, 4", 1, 0, 2, api_name="/compare_few_steps")
    assert "tiny\\-flow \\(teacher, CFG 2\\)" in table and "tiny\\-reflow \\(student\\)" in table
    assert table.count("NFE 1,") == 2 and table.count("NFE 4,") == 2  # one network call per Euler step, CFG batched
    width, height = Image.open(picture).size
    assert width > height  # three columns, two rows
    with pytest.raises(Exception, match="not a reflow student"):
        few_step_client.predict("tiny-flow", "1, 2", 1, 0, 2, api_name="/compare_few_steps")


def test_an_instant_model_is_compared_with_its_teacher_and_the_reflow_student_it_started_from(tmp_path):
    """Issue 41: the few-step view shows an adversarially distilled student beside the reflow student it was
    fine-tuned from, on the same noise, between the teacher and itself; a start_from not served here is left out."""
    from diffusion.serving.engine import ModelCache, SampleRequest
    from diffusion.serving.xy import few_step_plan

    folder = write_tiny_checkpoints(tmp_path / "checkpoints")
    write_tiny_student(folder)
    student = load_checkpoint(write_tiny_student(folder, name="tiny-instant"))
    save_checkpoint(folder / "tiny-instant.safetensors", "denoiser", student.network,
                    student.config | {"adversarial": {"start_from": "checkpoints/tiny-reflow.safetensors"}},
                    {"steps": 0}, "A tiny instant student.")
    save_checkpoint(folder / "tiny-orphan.safetensors", "denoiser", student.network,
                    student.config | {"adversarial": {"start_from": "elsewhere/not-here.safetensors"}},
                    {"steps": 0}, "A tiny instant student whose reflow student is not served.")
    cache = ModelCache(folder, capacity=8)
    base = SampleRequest(checkpoint="tiny-instant", class_index=1, seed=3, batch_size=2)
    plan = few_step_plan(cache, "tiny-instant", "1, 2", base)
    assert plan.y_values == ["tiny-flow (teacher, CFG 2)", "tiny-reflow (reflow student it started from)",
                             "tiny-instant (student)"]
    checkpoints = [[(r.checkpoint, r.steps, r.seed, r.guidance) for r in row] for row in plan.requests]
    assert checkpoints == [[("tiny-flow", n, 3, "cfg") for n in (1, 2)], [("tiny-reflow", n, 3, "none") for n in (1, 2)],
                           [("tiny-instant", n, 3, "none") for n in (1, 2)]]
    assert len(few_step_plan(cache, "tiny-orphan", "1", replace(base, checkpoint="tiny-orphan")).requests) == 2


def test_trajectory_reports_the_paths_straightness(few_step_client):
    strip, caption, gif, deviation = few_step_client.predict("tiny-flow", "ode", "euler", 6, "none", 0, 1.0, 1, 4,
                                                             api_name="/trajectory")
    assert "Straightness S =" in caption and "exact for DDIM" not in caption
    assert len(deviation["data"]) == 6  # one velocity per Euler step
    _, caption, _, _ = few_step_client.predict("tiny-flow", "ode", "heun", 6, "none", 0, 1.0, 1, 4, api_name="/trajectory")
    assert "exact for DDIM and ODE-Euler only" in caption


@pytest.mark.skipif(not shutil.which("chromium") and not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
                    reason="needs Debian's chromium (CI installs it)")
def test_browser_live_mode_drops_stale_changes(few_step_server, monkeypatch, tmp_path):
    """Six seed changes while each live run takes 0.6 s: the newest one runs, the ones overtaken while a run was
    going are dropped (Gradio's trigger_mode="always_last")."""
    import diffusion.serving.backend as backend_module

    seeds, real_run = [], backend_module.OPERATIONS["run_request"]

    def slow_run(cache, request, *args, **kwargs):
        seeds.append(request.seed)
        time.sleep(0.6)
        return real_run(cache, request, *args, **kwargs)

    monkeypatch.setitem(backend_module.OPERATIONS, "run_request", slow_run)  # every tab samples through the backend
    with browser_page(few_step_server, height=1200) as page:
        page.get_by_label("Checkpoint").first.click()
        page.get_by_role("option", name="tiny-reflow").click()
        live = page.get_by_label("Live: regenerate at once when the class, scale or seed changes")
        live.wait_for(state="visible", timeout=30_000)
        assert page.get_by_label("number input for Steps").input_value() == "2"
        live.check()
        page.wait_for_selector("text=(live)", timeout=30_000)
        seed = page.get_by_label("Seed").first
        for value in range(1, 7):
            seed.fill(str(value))
            seed.press("Enter")
            page.wait_for_timeout(50)
        # The newest change's images on screen: with always_last nothing older is left waiting behind them.
        page.wait_for_selector("text=(seed 6)", timeout=60_000)
        page.screenshot(path=str(tmp_path / "live.png"))
    live_runs = seeds[1:]  # after the run that ticking the box started
    assert live_runs and live_runs[-1] == 6 and seeds.count(6) == 1
    assert len(live_runs) < 6, f"stale changes ran: {seeds}"


def test_cancelling_the_few_step_comparison_stops_its_work(few_step_client):
    """Issue 26: every sampling endpoint stops at its next network evaluation when cancelled."""
    from test_app import cancel_while_sampling

    cancel_while_sampling(few_step_client.submit("tiny-reflow", "1000, 999, 998, 997", 1, 0, 16,
                                                 api_name="/compare_few_steps"))


def test_trajectory_and_xy_start_a_few_step_model_at_its_own_settings(few_step_cache):
    """Issue 27: a reflow student's defaults apply in every tab that samples, not only on Generate."""
    from diffusion.app.controls import on_study_checkpoint_change
    from diffusion.app.trajectory import TAB_SAMPLING

    student = on_study_checkpoint_change(few_step_cache, TAB_SAMPLING, "tiny-reflow", "cfg", False)
    assert (student[1].value, student[2].value, student[3].value, student[4].value, student[5].value) == \
        ("none", "ode", "euler", 2, 1.0)
    assert student[5].interactive is False and student[6] is True
    back = on_study_checkpoint_change(few_step_cache, TAB_SAMPLING, "tiny", "none", True)
    assert (back[1].value, back[2].value, back[3].value, back[4].value, back[6]) == ("cfg", "ddim", "heun", 50, False)
    kept = on_study_checkpoint_change(few_step_cache, TAB_SAMPLING, "tiny-flow", "cfg", False)
    assert "value" not in kept[2].constructor_args and "value" not in kept[4].constructor_args  # the user's choices
