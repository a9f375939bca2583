"""The Guidance sweep tab: one row per guidance scale and mode, with the evaluator's class confidence, diversity
and the per-step guidance strength."""

from __future__ import annotations

from functools import partial

import gradio as gr
import pandas as pd
import torch

from ..engine import ModelCache, RequestError
from ..studies import MAX_SCALES_TEXT, guidance_sweep, parse_scales
from .common import EXPORT_PX, grid_pil, stream_result, user_error, widget_names
from .controls import SAMPLER_LABELS, make_request, method_choices, run_and_stop, stop_cancels

SWEEP_TEXT = """**Guidance in one paragraph.** A class-conditional model predicts the noise twice per step: with the class
(`eps_c`) and without it (`eps_u`). Classifier-free guidance uses `eps_u + w (eps_c - eps_u)`: `w = 0` ignores the class,
`w = 1` is the plain conditional model, `w > 1` exaggerates what makes the image *this* class. Classifier guidance instead
pushes the unconditional model along the gradient of a noisy classifier's `log p(class | x_t)`. Watch the rows: as `w`
grows, the garments become more typical (confidence rises) and more alike (diversity falls). Tick several **methods** to
see how the fixes for CFG's side effects (rescale, interval, APG, thresholding, autoguidance) trade confidence against
diversity on one chart; each is CFG with the paper's suggested setting (Generate's *Guidance methods* has the knobs)."""


def sweep(cache: ModelCache, checkpoint, class_index, scales_text, methods, seed, per_row, sampler, steps, progress=gr.Progress()):
    try:
        scales = parse_scales(scales_text)
        methods = widget_names(methods, "guidance methods")
        base = make_request(checkpoint, sampler, "heun", steps, 0.0, "uniform", "cfg", class_index, 1.0, False, seed,
                            per_row)
    except RequestError as error:
        raise user_error(error) from None

    def work(emit):
        return guidance_sweep(cache, base, scales, methods,
                              progress=lambda row, rows, done, total: emit((row, rows, done, total)))

    def on_event(event):
        row, rows, done, total = event
        progress((row * total + done, rows * total), desc=f"row {row + 1}/{rows}")

    rows = yield from stream_result(work, on_event, outputs=6)
    grid = grid_pil(torch.cat([r.result.images for r in rows]), columns=base.batch_size, target_px=EXPORT_PX)
    metrics = pd.DataFrame(
        [{"scale": r.scale, "value": v, "series": f"{name} ({r.mode})"} for r in rows
         for name, v in (("class confidence", r.confidence), ("accuracy", r.accuracy)) if v is not None])
    diversity = pd.DataFrame([{"scale": r.scale, "diversity": r.diversity, "series": r.mode} for r in rows])
    strength = pd.DataFrame([{"log-SNR": lam, "strength": s, "series": f"{r.mode} w={r.scale:g}"}
                             for r in rows if r.scale > 0 for lam, s in r.result.guidance_trace])
    table = "| method | scale | class confidence | accuracy | diversity |\n|---|---|---|---|---|\n" + "\n".join(
        f"| {r.mode} | {r.scale:g} | {_fmt(r.confidence)} | {_fmt(r.accuracy)} | {r.diversity:.3f} |" for r in rows)
    labels = ", ".join(f"row {i + 1}: {r.mode} w={r.scale:g}" for i, r in enumerate(rows))
    yield grid, labels, metrics, diversity, strength, table


def _fmt(value):
    return "n/a" if value is None else f"{value:.2f}"


def build_sweep_tab(cache: ModelCache, names, default, classes, guidance_choices, guidance_default, sampling: dict):
    """The tab's widgets and events; call inside `with gr.Tab(...)`. Returns (checkpoint, class)."""
    gr.Markdown(SWEEP_TEXT)
    with gr.Row():
        s_checkpoint = gr.Dropdown(names, value=default, label="Checkpoint")
        s_class = gr.Dropdown(classes, value=classes[0][1] if classes else None, label="Class")
        s_scales = gr.Textbox("0, 1, 2, 4, 8", label="Guidance scales (one row each)", max_length=MAX_SCALES_TEXT)
        s_methods = gr.CheckboxGroup(method_choices(guidance_choices),
                                   value=["cfg"] if guidance_default == "cfg" else [],
                                   label="Guidance methods")
    with gr.Row():
        s_seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
        s_per_row = gr.Slider(2, 16, value=8, step=1, label="Images per row")
        s_sampler = gr.Radio(SAMPLER_LABELS, value="ddim", label="Sampler")
        s_steps = gr.Slider(1, 200, value=25, step=1, label="Steps")
    s_run, s_stop = run_and_stop("Sweep")
    with gr.Row():
        with gr.Column(scale=3):
            s_grid = gr.Image(label="One row per scale", format="png", interactive=False)
            s_rows = gr.Markdown(label="Rows")
            s_table = gr.Markdown(label="Metrics table")
        with gr.Column(scale=2):
            s_conf = gr.LinePlot(x="scale", y="value", color="series", label="Class confidence plot", title="Evaluator: class confidence",
                                 y_lim=[0, 1])
            s_div = gr.LinePlot(x="scale", y="diversity", color="series", label="Diversity plot", title="Diversity (mean feature distance)")
            s_strength = gr.LinePlot(x="log-SNR", y="strength", color="series", label="Guidance strength plot",
                                     title="Guidance strength per step (|eps_c - eps_u| or classifier term)")
    sweeping = s_run.click(partial(sweep, cache), [s_checkpoint, s_class, s_scales, s_methods, s_seed, s_per_row, s_sampler, s_steps],
                [s_grid, s_rows, s_conf, s_div, s_strength, s_table], api_name="sweep",
                show_progress="minimal", **sampling)
    stop_cancels(s_stop, sweeping, [s_grid, s_rows, s_conf, s_div, s_strength, s_table], s_table)
    return s_checkpoint, s_class, s_methods
