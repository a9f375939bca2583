"""The Guidance sweep tab: one row per guidance scale and mode, with the evaluator's class confidence, diversity
and the per-step guidance strength."""

from __future__ import annotations

import json
from dataclasses import asdict
from functools import partial
from pathlib import Path

import gradio as gr
from PIL import Image

from ..serving.backend import backend_for
from ..serving.engine import ModelCache, RequestError
from ..core.guidance import GUIDANCE_METHODS
from ..core.sampling import ODE_SOLVERS
from ..serving.settings import png_info
from ..formats.images import labelled_rows
from ..serving.studies import MAX_SCALES_TEXT, parse_scales
from .outputs import output_path
from .common import EXPORT_PX, grid_pil, save_picture, stream_result, user_error, widget_names
from .controls import (SAMPLER_LABELS, RequestTarget, make_request, method_choices, on_methods_checkpoint_change,
                       run_and_stop, settle_run)

SWEEP_TEXT = """**Guidance in one paragraph.** A class-conditional model predicts the noise twice per step: with the class
(`eps_c`) and without it (`eps_u`). Classifier-free guidance uses `eps_u + w (eps_c - eps_u)`: `w = 0` ignores the class,
`w = 1` is the plain conditional model, `w > 1` exaggerates what makes the image *this* class. (That reading of `w = 0`
holds for plain CFG. APG changes the update it scales: it keeps the conditional prediction and removes at most a
bounded, orthogonal part of the class's pull, so its `w = 0` row still shows the class.) Classifier guidance instead
pushes the unconditional model along the gradient of a noisy classifier's `log p(class | x_t)`. Watch the rows: as `w`
grows, the garments become more typical (confidence rises) and more alike (diversity falls). Tick several **methods** to
see how the fixes for CFG's side effects (rescale, interval, APG, thresholding, autoguidance) trade confidence against
diversity on one chart; each is CFG with the paper's suggested setting (Generate's *Guidance methods* has the knobs)."""


def sweep(cache: ModelCache, checkpoint, class_index, scales_text, methods, seed, per_row, sampler, steps,
          solver="heun", progress=gr.Progress()):
    try:
        scales = parse_scales(scales_text)
        methods = widget_names(methods, "guidance methods")
        base = make_request(checkpoint, sampler, solver, steps, 0.0, "uniform", "cfg", class_index, 1.0, False, seed,
                            per_row)
    except RequestError as error:
        raise user_error(error) from None

    def work(emit):
        return backend_for(cache).guidance_sweep(base, scales, methods,
                              progress=lambda row, rows, done, total: emit((row, rows, done, total)))

    def on_event(event):
        row, rows, done, total = event
        progress((row * total + done, rows * total), desc=f"row {row + 1}/{rows}")

    rows = yield from stream_result(work, on_event, outputs=5, limit_seconds=cache.budget.seconds)
    labels = [row_label(r) for r in rows]
    study = {"tab": "sweep", "scales": str(scales_text), "methods": methods}
    grid = save_picture(labelled_rows([grid_pil(r.result.images, columns=base.batch_size, target_px=EXPORT_PX)
                                       for r in rows], labels),
                        "sweep", png_info(base, rows[0].result.class_names, rows[0].result.checkpoint_sha256,
                                          int(rows[0].result.images.shape[-1]), study))
    table = "| method | scale | class confidence | accuracy | diversity |\n|---|---|---|---|---|\n" + "\n".join(
        f"| {GUIDANCE_METHODS[r.mode].label} | {r.scale:g} | {_fmt(r.confidence)} | {_fmt(r.accuracy)} | "
        f"{r.diversity:.3f} |" for r in rows)
    caption = "Rows, top to bottom: " + "; ".join(labels) + "."
    data = [{"method": r.mode, "label": GUIDANCE_METHODS[r.mode].label, "scale": r.scale, "confidence": r.confidence,
             "accuracy": r.accuracy, "diversity": r.diversity, "request": asdict(r.result.request),
             "guidance_strength": [{"log_snr": lam, "strength": value} for lam, value in r.result.guidance_trace]}
            for r in rows]
    data_path = output_path("sweep", ".json")
    Path(data_path).write_text(json.dumps({"checkpoint": base.checkpoint, "rows": data}, indent=1))
    yield grid, caption, plot_sweep(rows), table, data_path


def row_label(row) -> str:
    return f"{GUIDANCE_METHODS[row.mode].label}, w = {row.scale:g}"


def plot_sweep(rows) -> Image.Image:
    """The sweep's three charts, drawn anew for every sweep (one line per guidance method): class confidence and
    accuracy against the scale, diversity against the scale, and the guidance strength per step against log-SNR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.mode for r in rows))
    colours = {m: f"C{i}" for i, m in enumerate(methods)}
    figure, (confidence, diversity, strength) = plt.subplots(1, 3, figsize=(13, 3.6))
    for method in methods:
        mine = [r for r in rows if r.mode == method]
        scales = [r.scale for r in mine]
        label, colour = GUIDANCE_METHODS[method].label, colours[method]
        if mine[0].confidence is not None:
            confidence.plot(scales, [r.confidence for r in mine], "o-", color=colour, label=f"{label}: confidence")
            confidence.plot(scales, [r.accuracy for r in mine], "s--", color=colour, alpha=0.6,
                            label=f"{label}: accuracy")
        diversity.plot(scales, [r.diversity for r in mine], "o-", color=colour, label=label)
        for r, shade in zip((r for r in mine if r.scale > 0), (0.35, 0.5, 0.65, 0.8, 0.9, 1.0, 1.0, 1.0)):
            trace = r.result.guidance_trace
            if trace:
                strength.plot([lam for lam, _ in trace], [s for _, s in trace], color=colour, alpha=shade,
                              label=f"{label}, w = {r.scale:g}")
    confidence.set(title="Evaluator: class confidence (o) and accuracy (s)", xlabel="guidance scale w", ylim=(0, 1.02))
    diversity.set(title="Diversity (mean feature distance)", xlabel="guidance scale w")
    strength.set(title="Guidance strength per step", xlabel="log-SNR (noisy to clean)",
                 ylabel="|eps_c - eps_u| or classifier term")
    for axis in (confidence, diversity, strength):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    if rows[0].confidence is None:
        confidence.text(0.5, 0.5, "no evaluator for this checkpoint", ha="center", transform=confidence.transAxes)
    figure.tight_layout()
    path = output_path("sweep-plots", ".png")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Image.open(path)


def _fmt(value):
    return "n/a" if value is None else f"{value:.2f}"


def build_sweep_tab(cache: ModelCache, names, default, classes, guidance_choices, guidance_default, sampling: dict):
    """The tab's widgets and events; call inside `with gr.Tab(...)`. Returns it as a RequestTarget."""
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
        s_solver = gr.Dropdown(list(ODE_SOLVERS), value="heun", label="ODE solver", visible=False)
        s_steps = gr.Slider(1, 200, value=25, step=1, label="Steps")
    s_run, s_stop = run_and_stop("Sweep")
    with gr.Row():
        with gr.Column(scale=3):
            s_grid = gr.Image(label="One row per scale", format="png", interactive=False)
            s_rows = gr.Markdown(label="Rows")
        with gr.Column(scale=2):
            s_table = gr.Markdown(label="Metrics table")
            s_data = gr.File(label="The sweep's numbers and requests (JSON)")
    s_plots = gr.Image(label="Confidence, diversity and guidance strength", format="png", interactive=False,
                       elem_id="sweep-charts")  # the full width: three charts side by side
    sweeping = s_run.click(partial(sweep, cache), [s_checkpoint, s_class, s_scales, s_methods, s_seed, s_per_row, s_sampler, s_steps, s_solver],
                [s_grid, s_rows, s_plots, s_table, s_data], api_name="sweep",
                show_progress="minimal", **sampling)
    settle_run(sweeping, [s_grid, s_rows, s_plots, s_table, s_data], s_table, s_stop)
    few_step, sent = gr.State(False), gr.State(None)
    s_checkpoint.change(partial(on_methods_checkpoint_change, cache, TAB_SAMPLING), [s_checkpoint, s_methods, few_step, sent],
                        [s_class, s_methods, s_sampler, s_solver, s_steps, few_step, sent], api_name=False)
    s_sampler.change(lambda sampler: gr.Dropdown(visible=sampler == "ode"), s_sampler, s_solver, api_name=False)
    return RequestTarget("sweep", "Guidance sweep", {
        "checkpoint": s_checkpoint, "class_index": s_class, "methods": s_methods, "scales": s_scales, "seed": s_seed, "batch_size": s_per_row,
        "sampler": s_sampler, "steps": s_steps, "solver": s_solver}, {"batch_size": (2, 16), "steps": (1, 200)}, sent,
        s_table, "Sweep")


TAB_SAMPLING = {"sampler": "ddim", "solver": "heun", "steps": 25}  # where the tab starts
