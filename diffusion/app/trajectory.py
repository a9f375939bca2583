"""The Trajectory tab: one sample's x_t and x0 estimate on its way from noise to data, as a filmstrip and a GIF, and
how straight its path is (straightness S and the velocity's distance from z - x along the way)."""

from __future__ import annotations

from functools import partial

import gradio as gr
import pandas as pd
import torch

from ..serving.backend import backend_for
from ..serving.engine import ModelCache, RequestError
from ..core.sampling import ODE_SOLVERS
from .common import SINGLE_PX, grid_pil, save_gif, stream_result, user_error, widget_number
from .controls import DEFAULT_SCALES, RequestTarget, SAMPLER_LABELS, follow_study_checkpoint, make_request, run_and_stop, settle_run


def show_trajectory(cache: ModelCache, checkpoint, sampler, solver, steps, guidance, class_index, scale, seed, frames,
                    progress=gr.Progress()):
    try:
        request = make_request(checkpoint, sampler, solver, steps, 0.0, "uniform", guidance, class_index, scale,
                               False, seed, 1)
        frames = widget_number(frames, "frames", int)
    except RequestError as error:
        raise user_error(error) from None

    def work(emit):
        return backend_for(cache).trajectory(request, frames, progress=lambda done, total: emit((done, total)))

    def on_event(event):
        progress(event, desc="sampling")

    result, picked, readout = yield from stream_result(work, on_event, outputs=4, limit_seconds=cache.budget.seconds)
    strip = grid_pil(torch.stack([p[3] for p in picked] + [p[4] for p in picked]), columns=len(picked))
    axis = " | ".join(f"t={t:.2f}, λ={lam:+.1f}" if lam != float("inf") else "t=0 (data)" for _, t, lam, _, _ in picked)
    frames_pil = [grid_pil(torch.stack([p[3], p[4]]), columns=2, target_px=SINGLE_PX) for p in picked]
    gif_path = save_gif(frames_pil, "trajectory", duration_ms=400)
    exact = request.sampler == "ddim" and request.eta == 0 or request.sampler == "ode" and request.solver == "euler"
    caption = f"Top row: x_t; bottom row: x0 estimate. Noise level axis (left = noisy): {axis}\n\n"
    if readout is None:
        caption += ("**Straightness:** not defined for annealed Langevin, which runs a Markov chain at each noise level "
                    "instead of stepping along one path from noise to data.")
        deviation = pd.DataFrame({"flow time s (1 = noise)": [], "rms of v - (z - x)": []})
    else:
        caption += (f"**Straightness S = {readout.mean:.4f}** per pixel (Liu et al. 2022: the integral over the path of "
                    f"|v - (z - x)|², 0 for a straight path, which one Euler step follows exactly)"
                    + ("" if exact else "; velocities are each step's first evaluation: exact for DDIM and ODE-Euler only"))
        deviation = pd.DataFrame({"flow time s (1 = noise)": readout.s[:-1].numpy(),
                                  "rms of v - (z - x)": readout.deviation[:, 0].numpy()})
    yield strip, caption, gif_path, deviation


def build_trajectory_tab(cache: ModelCache, names, default, classes, guidance_choices, guidance_default, sampling: dict):
    """The tab's widgets and events; call inside `with gr.Tab(...)`. Returns it as a RequestTarget."""
    gr.Markdown("One sample on its way from noise (left) to data (right): the noisy state x_t and the "
                "model's current guess of the clean image.")
    with gr.Row():
        t_checkpoint = gr.Dropdown(names, value=default, label="Checkpoint")
        t_sampler = gr.Radio(SAMPLER_LABELS, value="ddim", label="Sampler")
        t_solver = gr.Dropdown(list(ODE_SOLVERS), value="heun", label="ODE solver")
        t_steps = gr.Slider(2, 200, value=50, step=1, label="Steps")
    with gr.Row():
        t_guidance = gr.Radio(guidance_choices, value=guidance_default, label="Guidance")
        t_class = gr.Dropdown(classes, value=classes[0][1] if classes else None, label="Class")
        t_scale = gr.Slider(0, 15, value=DEFAULT_SCALES["cfg"], step=0.25, label="Guidance scale w")
        t_seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
        t_frames = gr.Slider(2, 16, value=10, step=1, label="Frames")
    t_run, t_stop = run_and_stop("Show trajectory")
    t_strip = gr.Image(label="Filmstrip", format="png", interactive=False, elem_id="trajectory-strip")
    t_caption = gr.Markdown(label="Caption")
    t_gif = gr.File(label="Animated GIF")
    t_path = gr.LinePlot(x="flow time s (1 = noise)", y="rms of v - (z - x)", label="How far each step's velocity is "
                         "from the straight line z - x (flat at 0: a straight path)", height=260)
    tracing = t_run.click(partial(show_trajectory, cache), [t_checkpoint, t_sampler, t_solver, t_steps, t_guidance, t_class, t_scale,
                                  t_seed, t_frames], [t_strip, t_caption, t_gif, t_path], api_name="trajectory",
                show_progress="minimal", **sampling)
    settle_run(tracing, [t_strip, t_caption, t_gif, t_path], t_caption, t_stop)
    controls = {"checkpoint": t_checkpoint, "sampler": t_sampler, "solver": t_solver, "steps": t_steps,
                "guidance": t_guidance, "class_index": t_class, "scale": t_scale, "seed": t_seed}
    sent = follow_study_checkpoint(cache, TAB_SAMPLING, controls)
    return RequestTarget("trajectory", "Trajectory", controls, {"steps": (2, 200), "scale": (0, 15)}, sent, t_caption,
                         "Show trajectory")

TAB_SAMPLING = {"sampler": "ddim", "solver": "heun", "steps": 50, "guidance": "cfg"}  # where the tab starts
