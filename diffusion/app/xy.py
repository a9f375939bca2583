"""The X/Y grid tab: any request field on X and on Y, a list of values for each, the same noise in every cell; the
labelled grid, per-cell figures, a PNG and the JSON manifest that reproduces it (API /xy_grid)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import gradio as gr

from ..serving.backend import backend_for
from ..serving.engine import MAX_STEPS, ModelCache, RequestError
from ..core.sampling import ODE_SOLVERS
from ..serving.settings import png_info
from ..serving.xy import (AXIS_FIELDS, AXIS_LABELS, MAX_AXIS_TEXT, MAX_AXIS_VALUES, MAX_CELLS, axis_value,
                          grid_manifest, grid_picture, plan_grid)
from .outputs import output_path
from .common import markdown_text, save_picture, stream_result, user_error
from .controls import (DEFAULT_SCALES, SAMPLER_LABELS, SPACING_LABELS, RequestTarget, follow_study_checkpoint, make_request,
                       run_and_stop, settle_run)

TAB_SAMPLING = {"sampler": "ddim", "solver": "dpm++2m", "steps": 25, "guidance": "cfg"}  # where the tab starts

XY_TEXT = f"""Put any setting on **X** and another on **Y**, type the values (`1, 2, 4`; ranges `1-8 (+2)` or `0-1 [5]`;
`none` for an open interval bound or no class), and every cell samples from the **same noise**. Limits: at most
{MAX_AXIS_VALUES} values per axis, {MAX_CELLS} cells, and the app's work budget per request (its estimated time on this
machine from the networks' FLOPs: cells x images x network evaluations, CFG's two rows, autoguidance's second
model), checked before any work starts."""


def xy_grid(cache: ModelCache, checkpoint, sampler, solver, steps, spacing, guidance, class_index, scale, seed, images,
            x_field, x_values, y_field, y_values, progress=gr.Progress()):
    try:
        base = make_request(checkpoint, sampler, solver, steps, 0.0, spacing, guidance, class_index, scale, False,
                            seed, images)
        plan = plan_grid(cache, base, str(x_field), str(x_values), str(y_field or ""), str(y_values or ""))
    except RequestError as error:
        raise user_error(error) from None

    def work(emit):
        return backend_for(cache).run_grid(plan, progress=lambda cell, cells, done, total: emit((cell, cells, done, total)))

    def on_event(event):
        cell, cells, done, total = event
        progress((cell * total + done, cells * total), desc=f"cell {cell + 1}/{cells}: {done}/{total}")

    cells = yield from stream_result(work, on_event, outputs=4, limit_seconds=cache.budget.seconds)
    picture = grid_picture(plan, cells, columns=min(4, base.batch_size))
    first = cells[0][0].result
    study = {"tab": "xy", "x_field": str(x_field), "x_values": str(x_values), "y_field": str(y_field or ""),
             "y_values": str(y_values or "")}
    png = save_picture(picture, "xy-grid", png_info(base, first.class_names, first.checkpoint_sha256,
                                                    int(first.images.shape[-1]), study))
    manifest = output_path("xy-grid", ".json")
    Path(manifest).write_text(json.dumps(grid_manifest(cache, plan, cells), indent=2))
    yield png, cell_table(plan, cells), png, manifest


def cell_table(plan, cells) -> str:
    names = cells[0][0].result.class_names
    y_head = f"{AXIS_LABELS[plan.y_field]} | " if plan.y_field else ""
    lines = [f"| {y_head}{AXIS_LABELS[plan.x_field]} | NFE | seconds | class confidence | diversity |",
             "|" + "---|" * (5 + bool(plan.y_field))]
    for row in cells:
        for c in row:
            y_cell = f"{markdown_text(axis_value(plan.y_field, c.y, names))} | " if plan.y_field else ""
            confidence = "n/a" if c.confidence is None else f"{c.confidence:.3f}"
            lines.append(f"| {y_cell}{markdown_text(axis_value(plan.x_field, c.x, names))} | {c.result.nfe} | "
                         f"{c.result.seconds:.2f} | {confidence} | {c.diversity:.3f} |")
    return "\n".join(lines)


AXIS_EXAMPLES = {"sampler": "ddim, ode", "solver": "euler, heun, dpm++2m", "steps": "5, 10, 20", "scale": "1, 2, 4, 8",
                 "guidance": "none, cfg", "spacing": "uniform, log-snr", "seed": "0, 1, 2", "self_condition": "true, false",
                 "rescale": "0, 0.35, 0.7", "eta": "0, 0.5, 1", "threshold": "0, 0.95, 0.995",
                 "interval_low": "none, -2, 0", "interval_high": "none, 0, 2"}


def class_help(cache: ModelCache, checkpoint) -> str:
    """The classes an axis may name, for the chosen checkpoint (by name or index, any case)."""
    try:
        names = cache.get(str(checkpoint)).class_names
    except RequestError:
        return ""
    if not names:
        return "This checkpoint has no classes: a class axis takes `none` only."
    return ("Classes of this checkpoint, for a *class* axis (by name, any case, or index): "
            + ", ".join(f"{index} `{name}`" for index, name in enumerate(names)) + ".")


def axis_example(cache: ModelCache, checkpoint, field) -> str:
    """Values to start from when a field is chosen for an axis (the box kept another field's values before); empty
    where no example fits (the run then asks for values)."""
    if field == "class_index":
        try:
            names = cache.get(str(checkpoint)).class_names
        except RequestError:
            names = ()
        return ", ".join(names[:3]) if names else "none"
    if field == "checkpoint":
        return ", ".join(cache.names("denoiser")[:3])
    return AXIS_EXAMPLES.get(field, "")


def build_xy_tab(cache: ModelCache, names, default, classes, guidance_choices, guidance_default, sampling: dict):
    """The tab's widgets and events; call inside `with gr.Tab(...)`. Returns it as a RequestTarget."""
    gr.Markdown(XY_TEXT)
    with gr.Row():
        checkpoint = gr.Dropdown(names, value=default, label="Checkpoint")
        sampler = gr.Radio(SAMPLER_LABELS, value="ddim", label="Sampler")
        solver = gr.Dropdown(list(ODE_SOLVERS), value="dpm++2m", label="ODE solver")
        steps = gr.Slider(1, MAX_STEPS, value=25, step=1, label="Steps")
        spacing = gr.Radio(SPACING_LABELS, value="uniform", label="Time spacing")
    with gr.Row():
        guidance = gr.Radio(guidance_choices, value=guidance_default, label="Guidance")
        class_index = gr.Dropdown(classes, value=classes[0][1] if classes else None, label="Class")
        scale = gr.Slider(0, 15, value=DEFAULT_SCALES["cfg"], step=0.25, label="Guidance scale w")
        seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
        images = gr.Slider(1, 16, value=4, step=1, label="Images per cell")
    with gr.Row():
        fields = [(AXIS_LABELS[name], name) for name in AXIS_FIELDS]
        x_field = gr.Dropdown(fields, value="scale", label="X: field")
        x_values = gr.Textbox("1, 2, 4, 8", label="X: values", max_length=MAX_AXIS_TEXT)
        y_field = gr.Dropdown([("none (one row)", ""), *fields], value="sampler", label="Y: field")
        y_values = gr.Textbox("ddim, ode", label="Y: values", max_length=MAX_AXIS_TEXT)
    classes_note = gr.Markdown(class_help(cache, default) if default else "", elem_id="xy-classes")
    checkpoint.change(partial(class_help, cache), checkpoint, classes_note, api_name=False, show_progress="hidden")
    for field, values in ((x_field, x_values), (y_field, y_values)):  # .input: the user's choice, not a sent study's
        field.input(partial(axis_example, cache), [checkpoint, field], values, api_name=False, show_progress="hidden")
    run, stop = run_and_stop("Make grid")
    picture = gr.Image(label="X/Y grid", format="png", interactive=False)
    table = gr.Markdown(label="Per cell")
    with gr.Row():
        png = gr.File(label="PNG")
        manifest = gr.File(label="Manifest (JSON) to reproduce this grid")
    making = run.click(partial(xy_grid, cache), [checkpoint, sampler, solver, steps, spacing, guidance, class_index, scale, seed,
                                                 images, x_field, x_values, y_field, y_values],
                       [picture, table, png, manifest], api_name="xy_grid", show_progress="minimal", **sampling)
    settle_run(making, [picture, table, png, manifest], table, stop)
    controls = {"checkpoint": checkpoint, "sampler": sampler, "solver": solver, "steps": steps, "spacing": spacing,
                "guidance": guidance, "class_index": class_index, "scale": scale, "seed": seed, "batch_size": images,
                "x_field": x_field, "x_values": x_values, "y_field": y_field, "y_values": y_values}
    return RequestTarget("xy", "X/Y grid", controls, {"scale": (0, 15), "batch_size": (1, 16)},
                         follow_study_checkpoint(cache, TAB_SAMPLING, controls), table, "Make grid")
