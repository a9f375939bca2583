"""diffusion-playground: sample, compare and teach diffusion and flow models in the browser.

    python app.py [--host 127.0.0.1] [--port 7860] [--share] [--checkpoints checkpoints] [--add-model FOLDER ...]

Layout and wiring only: every handler turns widget values into a SampleRequest and calls the backend
(diffusion.engine / diffusion.studies). Sampling runs in a worker thread so the handler can stream
previews and progress.
"""

from __future__ import annotations

import argparse
import os
import random
from functools import partial
from pathlib import Path

import gradio as gr

from diffusion.app.compare import build_compare_tab
from diffusion.app.controls import (DEFAULT_SCALES, GUIDANCE_LABELS, SAMPLER_LABELS, SPACING_LABELS, class_and_guidance,
                                    make_request, on_sampler_checkpoint_change)
from diffusion.app.families import build_families_tab
from diffusion.app.lens import build_lens_tab
from diffusion.app.sweep import build_sweep_tab
from diffusion.app.trajectory import build_trajectory_tab
from diffusion.engine import (GENERATIVE_KINDS, MAX_BATCH, MAX_STEPS, MAX_TEMPERATURE, FlowRequest, ModelCache, RequestError, SamplingError, run_request)
from diffusion.app.common import (grid_pil, pil_images, save_png, stream_result, user_error, widget_class,
                                  widget_number)
from diffusion.evaluation import likelihood_summary, recorded_likelihood
from diffusion.sampling import ODE_SOLVERS

CHECKPOINT_DIR = Path(os.environ.get("PLAYGROUND_CHECKPOINTS", Path(__file__).parent / "checkpoints"))
EVALUATION_DIR = Path(__file__).parent / "docs" / "evaluation"  # `evaluate` results, shown on a file's card
DEFAULT_CHECKPOINT = "fashion-diffusion"
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
    classes, guidance_choices = class_and_guidance(cache, model)
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


def build_demo(queue_size: int = QUEUE_SIZE) -> gr.Blocks:
    names = denoiser_choices()  # the Compare, Sweep and Trajectory tabs need a sampler
    generative = cache.names(*GENERATIVE_KINDS)  # Generate also offers normalizing flows
    available = [e.name for e in cache.entries() if e.available]  # the Model card shows every loadable file
    default = DEFAULT_CHECKPOINT if DEFAULT_CHECKPOINT in names else (names[0] if names else None)
    classes, self_cond_ok, guidance_choices = [], False, GUIDANCE_LABELS[:1]
    if default:
        model = cache.get(default)
        classes, guidance_choices = class_and_guidance(cache, model)
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
                c_checkpoint, c_class, c_guidance, c_scale = build_compare_tab(
                    cache, names, default, classes, guidance_choices, guidance_default, sampling)

            with gr.Tab("Guidance sweep", id="sweep"):
                s_checkpoint, s_class = build_sweep_tab(cache, names, default, classes, guidance_choices, guidance_default,
                                                        sampling)

            with gr.Tab("Trajectory", id="trajectory"):
                t_checkpoint, t_class, t_guidance, t_scale = build_trajectory_tab(
                    cache, names, default, classes, guidance_choices, guidance_default, sampling)

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
                picker.change(partial(on_sampler_checkpoint_change, cache), [picker, mode], [class_box, mode], api_name=False)
            s_checkpoint.change(lambda name: on_sampler_checkpoint_change(cache, name, "none")[0], s_checkpoint, s_class,
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
