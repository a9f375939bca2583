"""diffusion-playground: sample, compare and teach diffusion and flow models in the browser.

    python app.py [--host 127.0.0.1] [--port 7860] [--share] [--checkpoints checkpoints] [--add-model FOLDER ...]

Layout and wiring only: every handler turns widget values into a SampleRequest and calls the backend
(diffusion.engine / diffusion.studies). Sampling runs in a worker thread so the handler can stream
previews and progress.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from dataclasses import replace
from pathlib import Path

import gradio as gr
import pandas as pd
import torch

from diffusion.app.families import build_families_tab
from diffusion.app.lens import build_lens_tab
from diffusion.engine import (GENERATIVE_KINDS, MAX_BATCH, MAX_STEPS, MAX_TEMPERATURE, FlowRequest, ModelCache, image_shape,
                              RequestError, SampleRequest, SamplingError, run_request)
from diffusion.app.common import (EXPORT_PX, SINGLE_PX, grid_pil, output_path, pil_images, save_gif, save_png, stream_result, user_error, widget_bool, widget_class,
                                  widget_number)
from diffusion.evaluation import likelihood_summary, recorded_likelihood
from diffusion.sampling import ODE_SOLVERS
from diffusion.studies import compare_samplers, difference_map, guidance_sweep, parse_scales, trajectory

CHECKPOINT_DIR = Path(os.environ.get("PLAYGROUND_CHECKPOINTS", Path(__file__).parent / "checkpoints"))
EVALUATION_DIR = Path(__file__).parent / "docs" / "evaluation"  # `evaluate` results, shown on a file's card
DEFAULT_CHECKPOINT = "fashion-diffusion"
SAMPLER_LABELS = [("DDPM (ancestral)", "ddpm"), ("DDIM", "ddim"), ("ODE (probability flow)", "ode")]
# Each guidance mode's own starting scale: classifier guidance with our small noisy classifier needs ~8 to reach
# 90 % evaluator accuracy (docs/evaluation), where classifier-free guidance is at 99 % by 3.
DEFAULT_SCALES = {"none": 1.0, "cfg": 3.0, "classifier": 8.0}
GUIDANCE_LABELS = [("none (the model as it is)", "none"), ("classifier-free", "cfg"), ("classifier", "classifier")]
SPACING_LABELS = [("uniform in t", "uniform"), ("uniform in log-SNR", "log-snr"),
                  ("diffusers' 'leading' (discrete-step models)", "leading")]
UNCONDITIONAL = ("no class (unconditional model)", "")  # widget_class("") is None
# Queue policy: sampling saturates the device, so sampling events share one worker ("sampling", limit 1);
# running two at once only makes both slower. At most QUEUE_SIZE requests wait; beyond that Gradio answers
# "Queue is full! Please try again." at once instead of letting a class of students wait minutes.
QUEUE_SIZE = 32
# Nothing in the app takes a file, but Gradio keeps its upload route open; bound it so that it cannot be used
# to store data on the server. Every launch (here and in the tests) passes these options.
LAUNCH_OPTIONS = {"max_file_size": 1024}

cache = ModelCache(CHECKPOINT_DIR, capacity=4)


def configure(checkpoint_dir, extra_folders=()) -> None:
    """Point the app at another checkpoint folder and/or diffusers folders elsewhere (tests, --checkpoints, --add-model)."""
    global cache, CHECKPOINT_DIR
    CHECKPOINT_DIR = Path(checkpoint_dir)
    cache = ModelCache(CHECKPOINT_DIR, capacity=4, extra_folders=extra_folders)


# --- helpers ----------------------------------------------------------------------------------
def denoiser_choices():
    return cache.names("denoiser")


def checkpoint_table() -> str:
    rows = ["| checkpoint | kind | status |", "|---|---|---|"]
    for entry in cache.entries():
        status = "available" if entry.available else f"unavailable: {entry.error}"
        name, status = (text.replace("|", "\\|").replace("`", "'") for text in (entry.name, status))  # data, not markup
        rows.append(f"| `{name}` | {entry.kind or '?'} | {status} |")
    return "\n".join(rows)


def model_summary(name: str) -> str:
    try:
        model = cache.get(name)
    except RequestError as error:
        return f"**{name}** is unavailable: {error}"
    config, training = model.config, model.training
    parameters = sum(p.numel() for p in model.network.parameters())
    size = f"{parameters / 1e6:.2f} M parameters, {training.get('steps', '?')} training steps"
    likelihood = likelihood_summary(recorded_likelihood(model, EVALUATION_DIR))
    measured = f"\n\n**Likelihood:** {likelihood}." if likelihood else ""
    if model.kind == "normalizing-flow":
        bits = training.get("test_bits_per_dim")
        return (f"{model.card}\n\n*normalizing flow ({config['network']}), {size}"
                + (f", {bits:.2f} bits/dim on the test set" if isinstance(bits, (int, float)) else "") + ".*" + measured)
    if model.kind != "denoiser":
        return f"{model.card}\n\n*{model.kind}, {size}.*"
    schedule = model.schedule
    steps = f" ({schedule.discrete.steps} {schedule.discrete.kind} betas)" if schedule.name == "vp-discrete" else ""
    shape = f"{config['image_channels']} x {config['image_size']}^2 px"
    return (f"{model.card}\n\n*{schedule.name} schedule{steps}, {config.get('parameterization')}-prediction, "
            f"{shape}, {size}, self-conditioning {'yes' if model.self_condition else 'no'}.*" + measured)


def class_and_guidance(model):
    """The class choices and the guidance modes that apply to a checkpoint: classifier-free guidance needs a null
    class, classifier guidance a noisy classifier of the model's image shape and classes."""
    classes = [(label, index) for index, label in enumerate(model.class_names)]
    if not classes or model.config.get("null_class") is not None:  # a null class can also sample with no class
        classes.append(UNCONDITIONAL)
    allowed = {"none"}
    if model.config.get("null_class") is not None:
        allowed.add("cfg")
    classifier = cache.first_of_kind("noisy-classifier")
    if classifier is not None and model.class_names and image_shape(classifier) == image_shape(model) \
            and classifier.class_names == model.class_names:
        allowed.add("classifier")
    return classes, [g for g in GUIDANCE_LABELS if g[1] in allowed]


def on_sampler_checkpoint_change(name, guidance_value):
    """Compare, Sweep and Trajectory: the checkpoint's classes and the guidance modes it allows."""
    try:
        model = cache.get(name)
    except RequestError as error:
        raise user_error(error) from None
    classes, guidance_choices = class_and_guidance(model)
    values = [g[1] for g in guidance_choices]
    guidance_value = guidance_value if guidance_value in values else ("cfg" if "cfg" in values else "none")
    return gr.Dropdown(choices=classes, value=classes[0][1]), gr.Radio(choices=guidance_choices, value=guidance_value)


def make_request(checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale, self_condition,
                 seed, batch_size) -> SampleRequest:
    """Widget values -> SampleRequest; the engine validates ranges, this only converts types."""
    return SampleRequest(checkpoint=str(checkpoint), sampler=str(sampler), solver=str(solver),
                         steps=widget_number(steps, "steps", int), eta=widget_number(eta, "eta"), spacing=str(spacing),
                         guidance=str(guidance), class_index=widget_class(class_index),
                         scale=widget_number(scale, "guidance scale"), self_condition=widget_bool(self_condition, "self-conditioning"),
                         seed=widget_number(seed, "seed", int), batch_size=widget_number(batch_size, "batch size", int))


# --- Generate ---------------------------------------------------------------------------------
def generate(checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale, self_condition, seed,
             batch_size, progress=gr.Progress()):
    try:
        request = make_request(checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale,
                               self_condition, seed, batch_size)
    except RequestError as error:
        raise user_error(error) from None
    preview_every = max(1, request.steps // 10)
    columns = min(8, request.batch_size)

    def work(emit):
        return run_request(cache, request, progress=lambda done, total: emit(("progress", done, total)),
                           preview=lambda step, t, x_t, x0: emit(("preview", step, x0.float().cpu()))
                           if step % preview_every == 0 else None)

    def on_event(event):
        if event[0] == "progress":
            progress((event[1], event[2]), desc=f"network evaluation {event[1]}/{event[2]}")
            return None
        if event[0] == "preview":
            preview = grid_pil(event[2], columns)
            return gr.skip(), preview, f"step {event[1] + 1}/{request.steps}: x0 estimate", gr.skip()
        return None

    result = yield from stream_result(work, on_event, outputs=4)
    status = (f"**{len(result.images)} images**, NFE {result.nfe}, {result.seconds:.2f} s, "
              f"{len(result.images) / result.seconds:.1f} images/s on {cache.device}")
    path = save_png(result.images, columns, "samples")
    yield pil_images(result.images), grid_pil(result.images, columns), status, path


def generate_flow(checkpoint, class_index, temperature, seed, batch_size):
    """A normalizing flow: x = decode(T z, y), one exact pass, so no progress bar is needed."""
    try:
        request = FlowRequest(checkpoint=str(checkpoint), temperature=widget_number(temperature, "temperature"),
                              class_index=widget_class(class_index), seed=widget_number(seed, "seed", int),
                              batch_size=widget_number(batch_size, "batch size", int))
        result = run_request(cache, request)
    except (RequestError, SamplingError) as error:
        raise user_error(error) from None
    columns = min(8, request.batch_size)
    status = (f"**{len(result.images)} images**, one exact pass (NFE 1), {result.seconds:.3f} s, "
              f"{len(result.images) / max(result.seconds, 1e-9):.0f} images/s on {cache.device}")
    return (pil_images(result.images), grid_pil(result.images, columns), status,
            save_png(result.images, columns, "samples"))


def on_checkpoint_change(name, sampler):
    """Class names, the controls that apply to the checkpoint's kind, and its card.

    A denoiser shows the sampler, steps, guidance and self-conditioning; a normalizing flow shows a
    temperature instead, and its own Generate button (API /generate_flow)."""
    try:
        model = cache.get(name)
    except RequestError as error:
        raise user_error(error) from None
    classes, guidance_choices = class_and_guidance(model)
    denoiser = model.kind == "denoiser"
    self_cond = gr.Checkbox(value=model.self_condition, interactive=model.self_condition, visible=denoiser,
                            info="feed the previous x0 estimate back into the network" if model.self_condition
                            else "this checkpoint was not trained with self-conditioning")
    guidance_value = "cfg" if any(g[1] == "cfg" for g in guidance_choices) else "none"
    return (gr.Dropdown(choices=classes, value=classes[0][1]), self_cond,
            gr.Radio(choices=guidance_choices, value=guidance_value, visible=denoiser), model_summary(name),
            gr.Radio(visible=denoiser), gr.Dropdown(visible=denoiser and sampler == "ode"),
            gr.Slider(visible=denoiser), gr.Slider(visible=denoiser and sampler == "ddim"), gr.Radio(visible=denoiser),
            gr.Slider(visible=denoiser), gr.Slider(visible=not denoiser),
            gr.Button(visible=denoiser), gr.Button(visible=not denoiser))


def random_seed():
    return random.randint(0, 2**31 - 1)


# --- Compare ----------------------------------------------------------------------------------
def compare(checkpoint, guidance, class_index, scale, seed, batch_size, spacing, ddpm_steps, ddim_steps, eta,
            ode_steps, solver, column_a, column_b, progress=gr.Progress()):
    try:
        base = make_request(checkpoint, "ddim", solver, 1, eta, spacing, guidance, class_index, scale, False, seed,
                            batch_size)
        requests = [replace(base, sampler="ddpm", steps=widget_number(ddpm_steps, "DDPM steps", int), eta=0.0),
                    replace(base, sampler="ddim", steps=widget_number(ddim_steps, "DDIM steps", int)),
                    replace(base, sampler="ode", steps=widget_number(ode_steps, "ODE steps", int), eta=0.0)]
    except RequestError as error:
        raise user_error(error) from None

    def work(emit):
        return compare_samplers(cache, requests, progress=lambda i, done, total: emit((i, done, total)))

    def on_event(event):
        i, done, total = event
        progress((i * 1000 + done * 1000 // total, 3000), desc=f"{requests[i].sampler.upper()}: {done}/{total}")

    results, manifest = yield from stream_result(work, on_event, outputs=10)
    columns = min(4, results[0].request.batch_size)
    galleries = [grid_pil(r.images, columns) for r in results]
    labels = [f"**{r.request.sampler.upper()}** {r.request.steps} steps"
              + (f", eta {r.request.eta}" if r.request.sampler == "ddim" else "")
              + (f", {r.request.solver}" if r.request.sampler == "ode" else "")
              + f": NFE {r.nfe}, {r.seconds:.2f} s" for r in results]
    manifest_path = output_path("comparison", ".json")
    Path(manifest_path).write_text(json.dumps(manifest, indent=2))
    state = {r.request.sampler: r.images for r in results}
    diff_image, diff_text = render_difference(state, column_a, column_b)
    yield (*galleries, *labels, diff_image, diff_text, manifest_path, state)


def render_difference(state, column_a, column_b):
    if not state or column_a not in state or column_b not in state:
        return None, "Run a comparison first."
    diff = difference_map(state[column_a], state[column_b])  # (B, 1, H, W) in 0..2
    peak = max(float(diff.max()), 1e-6)
    heat = diff / peak * 2 - 1  # black = identical, white = the largest difference in this comparison
    text = (f"mean |{column_a.upper()} - {column_b.upper()}| = {float(diff.mean()):.3f}, max {peak:.3f} "
            f"(pixel values span 2). Black = identical, white = {peak:.3f}.")
    return grid_pil(heat, min(4, len(diff))), text


# --- Guidance sweep ---------------------------------------------------------------------------
def sweep(checkpoint, class_index, scales_text, modes, seed, per_row, sampler, steps, progress=gr.Progress()):
    try:
        scales = parse_scales(scales_text)
        base = make_request(checkpoint, sampler, "heun", steps, 0.0, "uniform", "cfg", class_index, 1.0, False, seed,
                            per_row)
    except RequestError as error:
        raise user_error(error) from None

    def work(emit):
        return guidance_sweep(cache, base, scales, list(modes or []),
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
    table = "| mode | scale | class confidence | accuracy | diversity |\n|---|---|---|---|---|\n" + "\n".join(
        f"| {r.mode} | {r.scale:g} | {_fmt(r.confidence)} | {_fmt(r.accuracy)} | {r.diversity:.3f} |" for r in rows)
    labels = ", ".join(f"row {i + 1}: {r.mode} w={r.scale:g}" for i, r in enumerate(rows))
    yield grid, labels, metrics, diversity, strength, table


def _fmt(value):
    return "n/a" if value is None else f"{value:.2f}"


# --- Trajectory -------------------------------------------------------------------------------
def show_trajectory(checkpoint, sampler, solver, steps, guidance, class_index, scale, seed, frames,
                    progress=gr.Progress()):
    try:
        request = make_request(checkpoint, sampler, solver, steps, 0.0, "uniform", guidance, class_index, scale,
                               False, seed, 1)
        frames = widget_number(frames, "frames", int)
    except RequestError as error:
        raise user_error(error) from None

    def work(emit):
        return trajectory(cache, request, frames, progress=lambda done, total: emit((done, total)))

    def on_event(event):
        progress(event, desc="sampling")

    result, picked = yield from stream_result(work, on_event, outputs=3)
    strip = grid_pil(torch.stack([p[3] for p in picked] + [p[4] for p in picked]), columns=len(picked))
    axis = " | ".join(f"t={t:.2f}, λ={lam:+.1f}" if lam != float("inf") else "t=0 (data)" for _, t, lam, _, _ in picked)
    frames_pil = [grid_pil(torch.stack([p[3], p[4]]), columns=2, target_px=SINGLE_PX) for p in picked]
    gif_path = save_gif(frames_pil, "trajectory", duration_ms=400)
    caption = f"Top row: x_t; bottom row: x0 estimate. Noise level axis (left = noisy): {axis}"
    yield strip, caption, gif_path


# --- Model card -------------------------------------------------------------------------------
def model_card(name):
    try:
        model = cache.get(name)
    except RequestError as error:
        raise user_error(error) from None
    return model_summary(name), {"kind": model.kind, "config": model.config, "training": model.training}


def rescan():
    """New, removed or replaced files in the checkpoint folder, without a restart: every checkpoint list anew."""
    generative, denoisers = cache.names(*GENERATIVE_KINDS), cache.names("denoiser")
    available = [e.name for e in cache.entries() if e.available]
    pickers = [gr.Dropdown(choices=generative), *(gr.Dropdown(choices=denoisers) for _ in range(3)),
               gr.Dropdown(choices=available), *(gr.CheckboxGroup(choices=generative) for _ in range(4)),
               gr.Dropdown(choices=generative)]
    return (*pickers, "### Files in the checkpoint folder\n" + checkpoint_table())


# --- layout -----------------------------------------------------------------------------------
INTRO = """# diffusion-playground
Sample class-conditional Fashion-MNIST images from a diffusion model, a rectified-flow model and a normalizing flow
(NICE), compare samplers and model families on the *same noise*, and see what the guidance scale does. Every image is a pure function of (checkpoint, settings, seed, index)."""

SWEEP_TEXT = """**Guidance in one paragraph.** A class-conditional model predicts the noise twice per step: with the class
(`eps_c`) and without it (`eps_u`). Classifier-free guidance uses `eps_u + w (eps_c - eps_u)`: `w = 0` ignores the class,
`w = 1` is the plain conditional model, `w > 1` exaggerates what makes the image *this* class. Classifier guidance instead
pushes the unconditional model along the gradient of a noisy classifier's `log p(class | x_t)`. Watch the rows: as `w`
grows, the garments become more typical (confidence rises) and more alike (diversity falls)."""


def build_demo(queue_size: int = QUEUE_SIZE) -> gr.Blocks:
    names = denoiser_choices()  # the Compare, Sweep and Trajectory tabs need a sampler
    generative = cache.names(*GENERATIVE_KINDS)  # Generate also offers normalizing flows
    available = [e.name for e in cache.entries() if e.available]  # the Model card shows every loadable file
    default = DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT in names else (names[0] if names else None)
    classes, self_cond_ok, guidance_choices = [], False, GUIDANCE_LABELS[:1]
    if default:
        model = cache.get(default)
        classes, guidance_choices = class_and_guidance(model)
        self_cond_ok = model.self_condition
    guidance_default = "cfg" if any(g[1] == "cfg" for g in guidance_choices) else "none"
    # One sampling job at a time per device. preprocess=False: the handlers get the raw values and check them
    # themselves (diffusion.app.common.widget_number, the engine), so every wrong input, through the browser or
    # the API, gets one sentence naming its field instead of a component's anonymous bounds error.
    sampling = {"concurrency_limit": 1, "concurrency_id": "sampling", "preprocess": False}

    with gr.Blocks(title="diffusion-playground", fill_width=True) as demo:
        gr.Markdown(INTRO)
        if not names:
            gr.Markdown(f"**No usable checkpoint in `{CHECKPOINT_DIR}`.**\n\n{checkpoint_table()}")
        with gr.Tabs():
            with gr.Tab("Generate", id="generate"):
                with gr.Row():
                    with gr.Column(scale=1, min_width=320):
                        checkpoint = gr.Dropdown(generative, value=default, label="Checkpoint")
                        card = gr.Markdown(model_summary(default) if default else "")
                        sampler = gr.Radio(SAMPLER_LABELS, value="ddim", label="Sampler")
                        solver = gr.Dropdown(list(ODE_SOLVERS), value="heun", label="ODE solver", visible=False)
                        steps = gr.Slider(1, MAX_STEPS, value=50, step=1, label="Steps")
                        eta = gr.Slider(0, 1, value=0.0, step=0.05, label="DDIM eta (0 = deterministic, 1 = DDPM-like)")
                        spacing = gr.Radio(SPACING_LABELS, value="uniform", label="Time spacing")
                        guidance = gr.Radio(guidance_choices, value=guidance_default, label="Guidance")
                        class_index = gr.Dropdown(classes, value=classes[0][1] if classes else None, label="Class")
                        scale = gr.Slider(0, 15, value=3.0, step=0.25, label="Guidance scale w")
                        temperature = gr.Slider(0, MAX_TEMPERATURE, value=1.0, step=0.05, visible=False,
                                                label="Temperature T (z ~ N(0, T^2 I); below 1: smoother, less varied)")
                        self_condition = gr.Checkbox(value=self_cond_ok, label="Self-conditioning", interactive=self_cond_ok,
                                                     info="feed the previous x0 estimate back into the network"
                                                     if self_cond_ok else "this checkpoint was not trained with it")
                        with gr.Row():
                            seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
                            dice = gr.Button("Random seed", size="sm")
                        batch_size = gr.Slider(1, MAX_BATCH, value=16, step=1, label="Images")
                        run = gr.Button("Generate", variant="primary")
                        run_flow = gr.Button("Generate", variant="primary", visible=False)  # normalizing flows
                        stop = gr.Button("Stop", variant="stop", size="sm")
                    with gr.Column(scale=2):
                        status = gr.Markdown("Press **Generate**.", label="Status")
                        preview = gr.Image(label="Grid (live x0 estimates while sampling)", format="png",
                                           interactive=False, height=320)
                        gallery = gr.Gallery(label="Images", columns=8, format="png", height="auto")
                        download = gr.File(label="Download PNG grid")
                inputs = [checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale,
                          self_condition, seed, batch_size]
                generating = run.click(generate, inputs, [gallery, preview, status, download], api_name="generate",
                                       show_progress="minimal", show_progress_on=[status], **sampling)
                stop.click(None, None, None, cancels=[generating], api_name=False)
                dice.click(random_seed, None, seed, api_name=False)
                sampler.change(lambda s: (gr.Dropdown(visible=s == "ode"), gr.Slider(visible=s == "ddim")),
                               sampler, [solver, eta], api_name=False)
                run_flow.click(generate_flow, [checkpoint, class_index, temperature, seed, batch_size],
                               [gallery, preview, status, download], api_name="generate_flow", **sampling)
                checkpoint.change(on_checkpoint_change, [checkpoint, sampler],
                                  [class_index, self_condition, guidance, card, sampler, solver, steps, eta, spacing,
                                   scale, temperature, run, run_flow], api_name=False)

            with gr.Tab("Compare samplers", id="compare"):
                gr.Markdown("The same seed gives every column the same starting noise and the same per-step noise "
                            "stream, so differences come from the samplers alone.")
                with gr.Row():
                    c_checkpoint = gr.Dropdown(names, value=default, label="Checkpoint")
                    c_guidance = gr.Radio(guidance_choices, value=guidance_default, label="Guidance")
                    c_class = gr.Dropdown(classes, value=classes[0][1] if classes else None, label="Class")
                    c_scale = gr.Slider(0, 15, value=3.0, step=0.25, label="Guidance scale w")
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
                with gr.Row():
                    c_run = gr.Button("Compare", variant="primary", scale=4)
                    c_stop = gr.Button("Stop", variant="stop", scale=1)
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
                comparing = c_run.click(compare, [c_checkpoint, c_guidance, c_class, c_scale, c_seed, c_batch, c_spacing, c_ddpm,
                                      c_ddim, c_eta, c_ode, c_solver, c_a, c_b],
                            [*col_images, *col_labels, c_diff, c_diff_text, c_manifest, c_state],
                            api_name="compare", show_progress="minimal", **sampling)
                c_stop.click(None, None, None, cancels=[comparing], api_name=False)
                for picker in (c_a, c_b):
                    picker.change(render_difference, [c_state, c_a, c_b], [c_diff, c_diff_text], api_name=False)

            with gr.Tab("Guidance sweep", id="sweep"):
                gr.Markdown(SWEEP_TEXT)
                with gr.Row():
                    s_checkpoint = gr.Dropdown(names, value=default, label="Checkpoint")
                    s_class = gr.Dropdown(classes, value=classes[0][1] if classes else None, label="Class")
                    s_scales = gr.Textbox("0, 1, 2, 4, 8", label="Guidance scales (one row each)")
                    s_modes = gr.CheckboxGroup([g for g in guidance_choices if g[1] != "none"],
                                               value=["cfg"] if guidance_default == "cfg" else [],
                                               label="Guidance modes")
                with gr.Row():
                    s_seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
                    s_per_row = gr.Slider(2, 16, value=8, step=1, label="Images per row")
                    s_sampler = gr.Radio(SAMPLER_LABELS, value="ddim", label="Sampler")
                    s_steps = gr.Slider(1, 200, value=25, step=1, label="Steps")
                with gr.Row():
                    s_run = gr.Button("Sweep", variant="primary", scale=4)
                    s_stop = gr.Button("Stop", variant="stop", scale=1)
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
                sweeping = s_run.click(sweep, [s_checkpoint, s_class, s_scales, s_modes, s_seed, s_per_row, s_sampler, s_steps],
                            [s_grid, s_rows, s_conf, s_div, s_strength, s_table], api_name="sweep",
                            show_progress="minimal", **sampling)
                s_stop.click(None, None, None, cancels=[sweeping], api_name=False)

            with gr.Tab("Trajectory", id="trajectory"):
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
                    t_scale = gr.Slider(0, 15, value=3.0, step=0.25, label="Guidance scale w")
                    t_seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
                    t_frames = gr.Slider(2, 16, value=10, step=1, label="Frames")
                with gr.Row():
                    t_run = gr.Button("Show trajectory", variant="primary", scale=4)
                    t_stop = gr.Button("Stop", variant="stop", scale=1)
                t_strip = gr.Image(label="Filmstrip", format="png", interactive=False)
                t_caption = gr.Markdown(label="Caption")
                t_gif = gr.File(label="Animated GIF")
                tracing = t_run.click(show_trajectory, [t_checkpoint, t_sampler, t_solver, t_steps, t_guidance, t_class, t_scale,
                                              t_seed, t_frames], [t_strip, t_caption, t_gif], api_name="trajectory",
                            show_progress="minimal", **sampling)
                t_stop.click(None, None, None, cancels=[tracing], api_name=False)

            with gr.Tab("Families", id="families"):
                family_pickers = build_families_tab(cache, classes, sampling)

            with gr.Tab("Likelihood", id="likelihood"):
                lens_checkpoints, lens_sample_checkpoint = build_lens_tab(cache, classes, sampling)

            with gr.Tab("Model card", id="card"):
                m_checkpoint = gr.Dropdown(available, value=default, label="Checkpoint")
                m_card = gr.Markdown(model_summary(default) if default else "", label="Card")
                m_json = gr.JSON(label="Metadata")
                m_files = gr.Markdown("### Files in the checkpoint folder\n" + checkpoint_table(), label="Files")
                m_rescan = gr.Button("Re-scan the checkpoint folder", size="sm")
                m_checkpoint.change(model_card, m_checkpoint, [m_card, m_json], api_name="model_card")
                demo.load(model_card, m_checkpoint, [m_card, m_json], api_name=False)
                m_rescan.click(rescan, None, [checkpoint, c_checkpoint, s_checkpoint, t_checkpoint, m_checkpoint,
                                              *family_pickers, lens_checkpoints, lens_sample_checkpoint, m_files],
                               api_name="rescan")
            for picker, class_box, mode in ((c_checkpoint, c_class, c_guidance), (t_checkpoint, t_class, t_guidance)):
                picker.change(on_sampler_checkpoint_change, [picker, mode], [class_box, mode], api_name=False)
            s_checkpoint.change(lambda name: on_sampler_checkpoint_change(name, "none")[0], s_checkpoint, s_class,
                                api_name=False)
            for mode, value in ((guidance, scale), (c_guidance, c_scale), (t_guidance, t_scale)):
                mode.change(lambda m: DEFAULT_SCALES.get(m, 1.0), mode, value, api_name=False)
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--share", action="store_true", help="create a public gradio.live link (off by default)")
    parser.add_argument("--checkpoints", default=None, help="checkpoint folder (default: ./checkpoints); diffusers "
                        "pipeline folders inside it are served too")
    parser.add_argument("--add-model", action="append", default=[], metavar="FOLDER",
                        help="also serve this diffusers pipeline folder (UNet2DModel + DDPM-style scheduler, "
                             "safetensors weights); repeatable")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    if args.checkpoints or args.add_model:
        configure(args.checkpoints or CHECKPOINT_DIR, args.add_model)
    demo = build_demo()
    demo.launch(server_name=args.host, server_port=args.port, share=args.share, **LAUNCH_OPTIONS)
