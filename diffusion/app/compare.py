"""The Compare samplers tab: DDPM, DDIM and the probability-flow ODE on one seed, side by side, with a difference map
and a manifest that reproduces the comparison."""

from __future__ import annotations

import json
from dataclasses import replace
from functools import partial
from pathlib import Path

import gradio as gr

from ..serving.backend import backend_for
from ..serving.engine import MAX_STEPS, ModelCache, RequestError
from ..core.sampling import ODE_SOLVERS
from ..serving.settings import png_info
from ..serving.studies import difference_map
from ..serving.xy import MAX_AXIS_TEXT, few_step_plan, grid_picture, real_sharpness
from .outputs import output_path
from .common import GRID_PX, grid_pil, markdown_text, save_png, stream_result, user_error, widget_number
from .controls import (DEFAULT_SCALES, SPACING_LABELS, RequestTarget, make_request, on_compare_checkpoint_change, run_and_stop,
                       settle_run)


COLUMNS = ("ddpm", "ddim", "ode")  # the comparison's columns, as the difference map names them
TAB_SAMPLING = {"guidance": "cfg", "ddim_steps": 50, "ode_steps": 10, "solver": "dpm++2m"}  # where the tab starts


def compare(cache: ModelCache, checkpoint, guidance, class_index, scale, seed, batch_size, spacing, ddpm_steps, ddim_steps, eta,
            ode_steps, solver, column_a, column_b, progress=gr.Progress()):
    try:
        base = make_request(checkpoint, "ddim", solver, 1, eta, spacing, guidance, class_index, scale, False, seed,
                            batch_size)
        requests = [replace(base, sampler="ddpm", steps=widget_number(ddpm_steps, "DDPM steps", int), eta=0.0),
                    replace(base, sampler="ddim", steps=widget_number(ddim_steps, "DDIM steps", int)),
                    replace(base, sampler="ode", steps=widget_number(ode_steps, "ODE steps", int), eta=0.0)]
        for name, column in (("difference column A", column_a), ("difference column B", column_b)):
            if column not in COLUMNS:
                raise RequestError(f"{name} must be one of {', '.join(COLUMNS)}, got {str(column)[:40]!r}")
    except RequestError as error:
        raise user_error(error) from None

    def work(emit):
        return backend_for(cache).compare_samplers(requests, progress=lambda i, done, total: emit((i, done, total)))

    def on_event(event):
        i, done, total = event
        progress((i * 1000 + done * 1000 // total, 3000), desc=f"{requests[i].sampler.upper()}: {done}/{total}")

    results, manifest = yield from stream_result(work, on_event, outputs=10, limit_seconds=cache.budget.seconds)
    columns = min(4, results[0].request.batch_size)
    study = {"tab": "compare", "ddpm_steps": requests[0].steps, "ddim_steps": requests[1].steps,
             "ode_steps": requests[2].steps}
    galleries = [save_png(r.images, columns, f"compare-{r.request.sampler}", target_px=GRID_PX,
                          pnginfo=png_info(r.request, r.class_names, r.checkpoint_sha256, int(r.images.shape[-1]), study))
                 for r in results]
    labels = [f"**{r.request.sampler.upper()}** {r.request.steps} steps"
              + (f", eta {r.request.eta}" if r.request.sampler == "ddim" else "")
              + (f", {r.request.solver}" if r.request.sampler == "ode" else "")
              + f": NFE {r.nfe}, {r.seconds:.2f} s" for r in results]
    manifest_path = output_path("comparison", ".json")
    Path(manifest_path).write_text(json.dumps(manifest, indent=2))
    state = {r.request.sampler: r.images for r in results} | {"about": comparison_words(results)}
    diff_image, diff_text = render_difference(state, column_a, column_b)
    yield (*galleries, *labels, diff_image, diff_text, manifest_path, state)


def compare_few_steps(cache: ModelCache, student, steps_text, class_index, seed, batch_size, progress=gr.Progress()):
    """A reflow student and its teacher on the same noise at a few Euler steps each (xy.few_step_plan). A generator
    over a worker, as every sampling handler: cancelled, it stops at the next network evaluation."""
    try:
        base = make_request(student, "ode", "euler", 1, 0.0, "uniform", "none", class_index, 1.0, False, seed, batch_size)
        plan = few_step_plan(cache, str(student), str(steps_text), base)
    except RequestError as error:
        raise user_error(error) from None

    def on_event(event):
        cell, cells, done, total = event
        progress((cell * total + done, cells * total), desc=f"cell {cell + 1}/{cells}")

    cells = yield from stream_result(lambda emit: backend_for(cache).run_grid(plan, progress=lambda *event: emit(event)),
                                     on_event, outputs=2, limit_seconds=cache.budget.seconds)
    picture = grid_picture(plan, cells, columns=min(4, base.batch_size))
    yield picture, few_step_table(plan, cells)


def few_step_cell(cell) -> str:
    """NFE and time; the evaluator's accuracy and confidence; and sharpness, so a blur cannot read as the best."""
    judged = (f", accuracy {cell.accuracy:.2f}, confidence {cell.confidence:.2f}" if cell.confidence is not None
              else "")
    return f"NFE {cell.result.nfe}, {cell.result.seconds:.2f} s{judged}, sharpness {cell.sharpness:.3f}"


def few_step_table(plan, cells) -> str:
    table = "| | " + " | ".join(f"{n} steps" for n in plan.x_values) + " |\n|---|" + "---|" * len(plan.x_values) + "\n"
    for label, row in zip(plan.y_values, cells):
        table += f"| {markdown_text(label)} | " + " | ".join(few_step_cell(c) for c in row) + " |\n"
    real = real_sharpness(tuple(cells[0][0].result.images.shape[1:]))
    reference = f" Fashion-MNIST test images: **{real:.3f}**." if real is not None else ""
    return table + (
        "\n*Accuracy*: the share of images the evaluation classifier assigns to the class asked for; *confidence*: "
        "its mean probability for that class. A blurred garment can still be recognised with high confidence, so "
        "*sharpness* (mean absolute Laplacian of the pixels: lower is blurrier) says whether the detail is there."
        + reference)


def comparison_words(results) -> str:
    """The comparison in words, for the difference map's alt text: model, each column's steps, class, scale, seed."""
    first = results[0]
    request, names = first.request, first.class_names
    label = names[request.class_index] if request.class_index is not None and request.class_index < len(names) else "no class"
    columns = ", ".join(f"{r.request.sampler.upper()} {r.request.steps} steps" for r in results)
    return (f"{request.checkpoint} ({columns}), class {label}, guidance {request.guidance} {request.scale:g}, "
            f"seed {request.seed}")


def render_difference(state, column_a, column_b):
    if not state or column_a not in state or column_b not in state:
        return None, "Run a comparison first."
    diff = difference_map(state[column_a], state[column_b])  # (B, 1, H, W) in 0..2
    peak = max(float(diff.max()), 1e-6)
    heat = diff / peak * 2 - 1  # black = identical, white = the largest difference in this comparison
    text = (f"mean |{column_a.upper()} - {column_b.upper()}| = {float(diff.mean()):.3f}, max {peak:.3f} "
            f"(pixel values span 2). Black = identical, white = {peak:.3f}.")
    picture = grid_pil(heat, min(4, len(diff)))
    # PNG's own "Description" keyword, which page.js turns into the picture's alt text (issue 37, item 13)
    picture.info["Description"] = f"|{column_a.upper()} - {column_b.upper()}| of {state.get('about', 'a comparison')}"
    return picture, text


def on_checkpoint_switch(cache: ModelCache, name, guidance_value, was_few_step, sent):
    """A new checkpoint: its classes, guidance and few-step settings (on_compare_checkpoint_change), and the previous
    model's columns, difference map and manifest cleared, so no column shows another model's images (issue 37,
    item 9). Settings sent from another tab keep the status line that says so."""
    settings = on_compare_checkpoint_change(cache, TAB_SAMPLING, name, guidance_value, was_few_step, sent)
    status = gr.skip() if sent else f"Now **{markdown_text(name)}**: press **Compare** for its columns."
    titles = [f"**{column.upper()}**" for column in COLUMNS]
    return (*settings, *([None] * len(COLUMNS)), *titles, None, status, None, {})


def build_compare_tab(cache: ModelCache, names, default, classes, guidance_choices, guidance_default, sampling: dict):
    """The tab's widgets and events; call inside `with gr.Tab(...)`. Returns it as a RequestTarget, and the few-step
    student picker."""
    gr.Markdown("The same seed gives every column the same starting noise and the same per-step noise "
                "stream, so differences come from the samplers alone.")
    with gr.Row():
        c_checkpoint = gr.Dropdown(names, value=default, label="Checkpoint")
        c_guidance = gr.Radio(guidance_choices, value=guidance_default, label="Guidance")
        c_class = gr.Dropdown(classes, value=classes[0][1] if classes else None, label="Class")
        c_scale = gr.Slider(0, 15, value=DEFAULT_SCALES["cfg"], step=0.25, label="Guidance scale w")
    with gr.Row():
        c_seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
        c_batch = gr.Slider(1, 16, value=8, step=1, label="Images")
        c_spacing = gr.Radio(SPACING_LABELS, value="uniform", label="Time spacing")
    with gr.Row():
        c_ddpm = gr.Slider(1, MAX_STEPS, value=100, step=1, label="DDPM steps")
        c_ddim = gr.Slider(1, MAX_STEPS, value=50, step=1, label="DDIM steps")
        c_eta = gr.Slider(0, 1, value=0.0, step=0.05, label="DDIM eta")
        c_ode = gr.Slider(1, MAX_STEPS, value=10, step=1, label="ODE steps")
        c_solver = gr.Dropdown(list(ODE_SOLVERS), value="dpm++2m", label="ODE solver")
    c_run, c_stop = run_and_stop("Compare")
    with gr.Row():
        col_images, col_labels = [], []
        for title in ("DDPM", "DDIM", "ODE"):
            with gr.Column():
                col_labels.append(gr.Markdown(f"**{title}**", label=f"{title} column"))
                col_images.append(gr.Image(label=title, format="png", interactive=False))
    with gr.Row():
        c_a = gr.Dropdown([("DDPM", "ddpm"), ("DDIM", "ddim"), ("ODE", "ode")], value="ddim", label="Difference: A")
        c_b = gr.Dropdown([("DDPM", "ddpm"), ("DDIM", "ddim"), ("ODE", "ode")], value="ode", label="B")
        c_manifest = gr.File(label="Manifest (JSON) to reproduce this comparison")
    c_diff_text = gr.Markdown(label="Difference summary")
    c_diff = gr.Image(label="|A - B| per pixel", format="png", interactive=False)
    c_state = gr.State({})
    comparing = c_run.click(partial(compare, cache), [c_checkpoint, c_guidance, c_class, c_scale, c_seed, c_batch, c_spacing, c_ddpm,
                          c_ddim, c_eta, c_ode, c_solver, c_a, c_b],
                [*col_images, *col_labels, c_diff, c_diff_text, c_manifest, c_state],
                api_name="compare", show_progress="minimal", **sampling)
    settle_run(comparing, [*col_images, *col_labels, c_diff, c_diff_text, c_manifest, c_state], c_diff_text, c_stop)
    for picker in (c_a, c_b):
        picker.change(render_difference, [c_state, c_a, c_b], [c_diff, c_diff_text], api_name=False)
    students = cache.few_step_names()
    with gr.Accordion("Few steps: a reflow student beside its teacher", open=bool(students)):
        gr.Markdown("The same noise (seed, class and images above) through the teacher and through its reflow "
                    "student, with 1, 2, 4 ... Euler steps of the probability-flow ODE. The teacher gets the guidance "
                    "its training pairs were made with; the student runs as it is, since the pairs carry it. Curved "
                    "paths need many steps; straightened ones do not. An instant model (a reflow student distilled "
                    "further for one step) shows the reflow student it started from between them.")
        with gr.Row():
            f_student = gr.Dropdown(students, value=students[0] if students else None, label="Student (few-step checkpoint)")
            f_steps = gr.Textbox("1, 2, 4", label="Euler steps (list or range, at most 8 values)", max_length=MAX_AXIS_TEXT)
        f_run = gr.Button("Compare few steps", variant="primary")
        f_picture = gr.Image(label="Rows: teacher, student; columns: steps", format="png", interactive=False)
        f_table = gr.Markdown(label="Few-step figures")
    few_step, sent = gr.State(False), gr.State(None)
    c_checkpoint.change(partial(on_checkpoint_switch, cache), [c_checkpoint, c_guidance, few_step, sent],
                        [c_class, c_guidance, c_scale, c_ddim, c_ode, c_solver, few_step, sent,
                         *col_images, *col_labels, c_diff, c_diff_text, c_manifest, c_state], api_name=False)
    few_steps = f_run.click(partial(compare_few_steps, cache), [f_student, f_steps, c_class, c_seed, c_batch],
                            [f_picture, f_table], api_name="compare_few_steps", **sampling)
    settle_run(few_steps, [f_picture, f_table], f_table)
    target = RequestTarget("compare", "Compare samplers", {
        "checkpoint": c_checkpoint, "guidance": c_guidance, "class_index": c_class, "scale": c_scale, "seed": c_seed,
        "batch_size": c_batch, "spacing": c_spacing, "ddpm_steps": c_ddpm, "ddim_steps": c_ddim, "eta": c_eta, "ode_steps": c_ode,
        "solver": c_solver}, {"scale": (0, 15), "batch_size": (1, 16)}, sent, c_diff_text, "Compare")
    return target, f_student
