"""The 2-D lab tab (issue 29): samplers, guidance and reflow on 2-D mixtures whose denoiser and density are known
exactly, so every picture comes with exact numbers. The backend is diffusion.lab2d (view: the numbers; figures: the
pictures); this module turns widget values into a LabRequest and the view into outputs."""

from __future__ import annotations

import math
from functools import partial

import gradio as gr
import pandas as pd

from ..serving.engine import RequestError
from ..lab2d.figures import comparisons, samples_and_field
from ..lab2d.metrics import SUPPORT_QUANTILE
from ..lab2d.mixture import DISTRIBUTIONS
from ..lab2d.run import stoppable
from ..lab2d.view import GUIDANCE, LIKELIHOOD_POINTS, MODELS, RANGES, LabRequest, LabView, lab_view
from ..core.sampling import ODE_SOLVERS, SAMPLERS
from ..core.schedules import SCHEDULES
from .common import TICK, stream_result, user_error, widget_number
from .controls import settle_run

GUIDANCE_LABELS = [("none (the conditional model)", "none"), ("classifier-free (CFG)", "cfg"),
                   ("autoguidance (a worse model of the same kind)", "autoguidance")]
assert [value for _, value in GUIDANCE_LABELS] == list(GUIDANCE)


def lab_number(value, name: str):
    """A widget or API number for field `name` of RANGES, or a RequestError naming the field and its range."""
    low, high, whole = RANGES[name]
    try:
        return widget_number(value, name, int if whole else float)
    except RequestError:
        kind = "a whole number" if whole else "a number"
        bounds = f"[{low}, {high}]" if whole else f"[{low:g}, {high:g}]"  # never 2.14748e+09 for a seed
        raise RequestError(f"{name.replace('_', ' ')} must be {kind} in {bounds}, "
                           f"got {str(value)[:40]!r}") from None


def lab_request(distribution, model, sampler, solver, steps, schedule, guidance, scale, rescale, apg_eta, seed,
                noise_level, arrows, points) -> LabRequest:
    """Widget values -> LabRequest, which checks every choice and range (ValueError with a sentence)."""
    numbers = {name: lab_number(value, name) for name, value in
               (("steps", steps), ("scale", scale), ("rescale", rescale), ("apg_eta", apg_eta), ("seed", seed),
                ("noise_level", noise_level), ("points", points))}
    return LabRequest(distribution=str(distribution), model=str(model), sampler=str(sampler), solver=str(solver),
                      schedule=str(schedule), guidance=str(guidance), arrows=str(arrows), **numbers)


def numbers_table(view: LabView) -> pd.DataFrame:
    q, w = view.quality, view.request.scale if view.request.guidance != "none" else 3.0
    rows = [("distance (sliced W2) of the samples to the true distribution", f"{q.distance:.3f}",
             f"noise floor {q.noise_floor:.3f} (exact samples of this size)"),
            ("share of samples outside their class's support", f"{q.outside_share:.1%}",
             f"exact samples: {SUPPORT_QUANTILE:.0%} (the support's definition)"),
            (f"CFG at w = {w:g}: outside / distance", f"{view.cfg_quality.outside_share:.1%} / "
             f"{view.cfg_quality.distance:.3f}", "same model, same noise")]
    if view.autoguidance_quality is not None:
        rows.append((f"autoguidance at w = {w:g}: outside / distance", f"{view.autoguidance_quality.outside_share:.1%}"
                     f" / {view.autoguidance_quality.distance:.3f}", "guided away from a worse model of the same kind"))
    rows += [(f"PF-ODE log-likelihood, mean of {LIKELIHOOD_POINTS} exact points (nats)", f"{view.log_likelihood:.3f}",
              f"exact log-density {view.exact_log_density:.3f}"),
             ("straightness S of the reflow student's paths", f"{view.straightness['student']:.4f}",
              f"its exact teacher: {view.straightness['teacher']:.3f}"),
             ("network evaluations of the run", str(view.run.nfe), "")]
    return pd.DataFrame(rows, columns=["reading", "value", "exact answer / for comparison"])


def caption(view: LabView) -> str:
    notes = " ".join(view.notes)
    q = view.quality
    floor = ("at the noise floor: as close as exact samples of this size get" if q.distance <= 1.2 * q.noise_floor
             else f"{q.distance / q.noise_floor:.1f}x the noise floor")
    text = (f"**Distance** (sliced Wasserstein-2 to the true distribution): lower is better; the noise floor is what "
            f"exact samples of the same size score, so nothing can do better than it. This run: {floor}. "
            f"A sample of class y is **outside its class's support** when its exact density log p(x | y) is below the "
            f"{SUPPORT_QUANTILE:.0%} quantile of exact samples' densities (so exact samples score {SUPPORT_QUANTILE:.0%}). "
            f"**S** measures how much the sampling paths bend: 0 for straight lines, which one Euler step follows "
            f"exactly; reflow lowers it.")
    auto = view.autoguidance_quality
    if auto is not None and auto.outside_share > view.cfg_quality.outside_share and view.request.model != "exact":
        text += (f" Here autoguidance puts more samples outside their class ({auto.outside_share:.1%}) than CFG "
                 f"({view.cfg_quality.outside_share:.1%}): its guide is a second learned network, whose errors are not "
                 f"a blurred copy of the model's, so guidance amplifies the difference between two networks' mistakes. "
                 f"With the exact model and a widened exact guide (the model 'exact') it is the other way round, as "
                 f"Karras et al. 2024 describe.")
    return f"{text} {notes}".strip()


def show_lab2d(distribution, model, sampler, solver, steps, schedule, guidance, scale, rescale, apg_eta, seed,
               noise_level, arrows, points, limit_seconds: float = math.inf):
    """A generator handler: the lab's work runs in a worker thread whose every network evaluation and training step
    is a stop point (lab2d.run.stoppable), so Stop or a closed tab ends it, first-use training included, instead of
    leaving it to run on beside the next job."""
    try:
        request = lab_request(distribution, model, sampler, solver, steps, schedule, guidance, scale, rescale,
                              apg_eta, seed, noise_level, arrows, points)
    except ValueError as error:  # RequestError too: a sentence naming the field
        raise user_error(error) from None

    def work(emit):
        with stoppable(lambda: emit(TICK)):  # emit raises Cancelled once the handler is closed
            try:
                return lab_view(request)
            except ValueError as error:
                raise RequestError(str(error)) from None

    view = yield from stream_result(work, lambda event: None, 4, limit_seconds=limit_seconds)
    yield samples_and_field(view), comparisons(view), numbers_table(view), caption(view)


def build_lab2d_tab(sampling: dict, limit_seconds: float = math.inf):
    """The tab's widgets and events; call inside `with gr.Tab("2-D lab", id="lab2d")`. Every change redraws (well
    under a second); a learned model is trained at its first use for a distribution, in a few seconds. A run past
    twice `limit_seconds` (the app's per-request budget) is stopped, first-use training included."""
    gr.Markdown("Distributions in two dimensions whose denoiser and density are known exactly: watch a sampler, "
                "guidance or reflow act, with exact numbers beside the pictures. The first run for a distribution "
                "trains its small learned models (a few seconds); later changes reuse them.")
    with gr.Row():
        distribution = gr.Dropdown(list(DISTRIBUTIONS), value="tree", label="Distribution")
        model = gr.Radio([(label, key) for key, label in MODELS.items()], value="exact", label="Model")
        schedule = gr.Radio(list(SCHEDULES), value="flow", label="Schedule")
    with gr.Row():
        sampler = gr.Dropdown([(spec.label, name) for name, spec in SAMPLERS.items()], value="ode", label="Sampler")
        solver = gr.Dropdown(list(ODE_SOLVERS), value="heun", label="ODE solver")
        steps = gr.Slider(*RANGES["steps"][:2], value=20, step=1, label="Steps")
        points = gr.Slider(*RANGES["points"][:2], value=500, step=50, label="Samples")
        seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
    with gr.Row():
        guidance = gr.Radio(GUIDANCE_LABELS, value="none", label="Guidance")
        scale = gr.Slider(*RANGES["scale"][:2], value=3.0, step=0.25, label="Guidance scale w")
        rescale = gr.Slider(*RANGES["rescale"][:2], value=0.0, step=0.05, label="CFG rescale phi (0: off)")
        apg_eta = gr.Slider(*RANGES["apg_eta"][:2], value=1.0, step=0.05, label="APG eta (1: plain guidance)")
        noise_level = gr.Slider(*RANGES["noise_level"][:2], value=0.5, step=0.01, label="Noise level t of the field")
        arrows = gr.Radio([("x0 estimate", "x0"), ("velocity", "velocity")], value="x0", label="Field arrows")
    run = gr.Button("Draw", variant="primary")
    picture = gr.Image(label="Samples and paths | the field at t", format="png", interactive=False,
                       elem_id="lab2d-picture")
    compared = gr.Image(label="CFG | autoguidance at the same w | exact teacher against reflow student", format="png",
                        interactive=False)
    numbers = gr.Dataframe(label="Exact numbers", interactive=False)
    note = gr.Markdown(label="Reading")
    controls = [distribution, model, sampler, solver, steps, schedule, guidance, scale, rescale, apg_eta, seed,
                noise_level, arrows, points]
    sliders = [steps, scale, rescale, apg_eta, noise_level, points]
    triggers = [run.click, seed.submit] + [c.change for c in controls if c not in sliders and c is not seed] \
        + [s.release for s in sliders]
    drawing = gr.on(triggers, partial(show_lab2d, limit_seconds=limit_seconds), controls, [picture, compared, numbers, note], api_name="lab2d",
                    show_progress="minimal", **sampling)
    settle_run(drawing, [picture, compared, numbers, note], note)  # a refused setting: its sentence, no stale plots
