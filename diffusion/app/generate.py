"""The Generate tab: one checkpoint, every sampler and guidance option (or a normalizing flow's temperature), live
progress and x0 previews, then the gallery, NFE and time, and a PNG download."""

from __future__ import annotations

import random
from dataclasses import asdict
from functools import partial
from pathlib import Path

import gradio as gr

from ..engine import MAX_BATCH, MAX_STEPS, MAX_TEMPERATURE, FlowRequest, ModelCache, RequestError, SamplingError, run_request
from ..sampling import ODE_SOLVERS
from ..settings import request_from_png
from .card import model_summary
from .common import grid_pil, markdown_text, result_pngs, stream_result, user_error, widget_bool, widget_class, widget_number
from .controls import (DEFAULT_SCALES, SAMPLER_LABELS, SELF_CONDITION_CHOICE, SPACING_LABELS, class_and_guidance,
                       guidance_method_controls, make_request, method_settings, self_condition_control, stop_cancels,
                       stochastic_sampler_controls, stochastic_settings, stochastic_visibility)


def generate_request(checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale, self_condition,
                     seed, batch_size, rescale=0.0, interval_low=None, interval_high=None, apg_eta=1.0, apg_norm=0.0,
                     apg_momentum=0.0, threshold=0.0, stochasticity=1.0, predictor="ddpm", correctors=1, snr=0.16,
                     langevin_steps=5, step_size=1.0):
    """The Generate tab's widget values -> SampleRequest (the user's error if one does not convert)."""
    try:
        methods = method_settings(rescale, interval_low, interval_high, apg_eta, apg_norm, apg_momentum, threshold)
        methods |= stochastic_settings(stochasticity, predictor, correctors, snr, langevin_steps, step_size)
        return make_request(checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale,
                            self_condition, seed, batch_size, methods)
    except RequestError as error:
        raise user_error(error) from None


def generate(cache: ModelCache, checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale, self_condition, seed,
             batch_size, rescale=0.0, interval_low=None, interval_high=None, apg_eta=1.0, apg_norm=0.0,
             apg_momentum=0.0, threshold=0.0, stochasticity=1.0, predictor="ddpm", correctors=1, snr=0.16,
             langevin_steps=5, step_size=1.0, progress=gr.Progress()):
    request = generate_request(checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale,
                               self_condition, seed, batch_size, rescale, interval_low, interval_high, apg_eta,
                               apg_norm, apg_momentum, threshold, stochasticity, predictor, correctors, snr,
                               langevin_steps, step_size)
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
    yield finished(cache, result, columns)


def finished(cache: ModelCache, result, columns: int, note: str = ""):
    """Gallery, grid, status line and PNG download of a finished request."""
    status = (f"**{len(result.images)} images**, NFE {result.nfe}, {result.seconds:.2f} s, "
              f"{len(result.images) / result.seconds:.1f} images/s on {cache.device}{note}")
    singles, grid = result_pngs(result, columns, "samples")  # every file carries the request that made it
    return singles, grid_pil(result.images, columns), status, grid


def generate_live(cache: ModelCache, live, *values):
    """Live mode: one request at once, without progress or previews, when a class, scale or seed changes and the box
    is ticked. Stale events are dropped before they reach this handler: its events are wired with
    trigger_mode="always_last", so while one runs the browser keeps only the newest change and sends that next."""
    if not widget_bool(live, "live mode"):
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    request = generate_request(*values)
    try:
        result = run_request(cache, request)
    except (RequestError, SamplingError) as error:
        raise user_error(error) from None
    return finished(cache, result, min(8, request.batch_size), note=" (live)")


def generate_flow(cache: ModelCache, checkpoint, class_index, temperature, seed, batch_size):
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
    singles, grid = result_pngs(result, columns, "samples")
    return singles, grid_pil(result.images, columns), status, grid


APP_SAMPLING = {"sampler": "ddim", "solver": "heun", "steps": 50}  # where the tab starts for most denoisers


def on_checkpoint_change(cache: ModelCache, evaluation_dir: Path, name, sampler, few_step_before, loaded=None):
    """Class names, the controls that apply to the checkpoint's kind, and its card.

    A denoiser shows the sampler, steps, guidance and self-conditioning; a normalizing flow shows a temperature
    instead, and its own Generate button (API /generate_flow). A few-step model (one whose file names its sampling
    defaults, e.g. a reflow student) sets the sampler, steps and guidance to them and offers live mode; leaving one
    puts the tab's own defaults back. Settings just loaded from a PNG for this checkpoint (`loaded`, a request's
    fields) are restored instead of any defaults. The last outputs are whether a few-step model is now selected, the
    normalizing flow /generate_flow samples (kept when a denoiser is chosen), and `loaded` cleared."""
    try:
        model = cache.get(name)
    except RequestError as error:
        raise user_error(error) from None
    classes, guidance_choices = class_and_guidance(cache, model)
    denoiser = model.kind == "denoiser"
    defaults = model.sampling_defaults if denoiser else {}
    few_step = bool(defaults)
    self_cond = self_condition_control(model, visible=denoiser)
    modes = [g[1] for g in guidance_choices]
    guidance_value = defaults.get("guidance", "cfg" if "cfg" in modes else "none")
    guidance_value = guidance_value if guidance_value in modes else "none"
    if not denoiser:
        sampler = ""
    setting = defaults if few_step else APP_SAMPLING if few_step_before else {}  # {}: keep the user's choices
    if setting:
        setting = setting | {"scale": DEFAULT_SCALES.get(guidance_value, 1.0)}
    class_value = classes[0][1]
    restore = loaded if isinstance(loaded, dict) and loaded.get("checkpoint") == name else None
    if restore:  # a PNG's settings win over every default
        setting = {key: restore[key] for key in ("sampler", "solver", "steps", "eta", "spacing", "scale", "temperature")
                   if key in restore}
        guidance_value = restore.get("guidance", guidance_value)
        class_value = "" if restore.get("class_index") is None else restore["class_index"]
        self_cond = self_condition_control(model, SELF_CONDITION_CHOICE.get(restore.get("self_condition"), "own"),
                                           visible=denoiser)
    sampler = setting.get("sampler", sampler)
    return (gr.Dropdown(choices=classes, value=class_value), self_cond,
            gr.Radio(choices=guidance_choices, value=guidance_value, visible=denoiser), model_summary(cache, evaluation_dir, name),
            gr.Radio(visible=denoiser, **_value(setting, "sampler")),
            gr.Dropdown(visible=denoiser and sampler == "ode", **_value(setting, "solver")),
            gr.Slider(visible=denoiser, **_value(setting, "steps")),
            gr.Slider(visible=denoiser and sampler == "ddim", **_value(setting, "eta")),
            gr.Radio(visible=denoiser, **_value(setting, "spacing")),
            gr.Slider(visible=denoiser, interactive=guidance_value != "none", **_value(setting, "scale")),
            gr.Slider(visible=not denoiser, **_value(setting, "temperature")), gr.Button(visible=denoiser),
            gr.Button(visible=not denoiser), gr.Checkbox(visible=few_step, value=False), few_step,
            gr.Dropdown(value=name) if model.kind == "normalizing-flow" else gr.skip(), None,
            gr.Accordion(visible=denoiser), *stochastic_visibility(sampler if denoiser else ""),
            *_switched(name, model.kind, bool(restore)))


PREVIEW_LABEL = {"denoiser": "Grid (live x0 estimates while sampling)", "normalizing-flow": "Grid (one exact decode)"}


def _switched(name: str, kind: str, restoring: bool):
    """A new checkpoint clears the last one's results (gallery, grid, download) and says so; settings being restored
    from a PNG keep their own status line."""
    status = gr.skip() if restoring else f"Now **{markdown_text(name)}**: press **Generate**."
    return None, gr.Image(value=None, label=PREVIEW_LABEL.get(kind, PREVIEW_LABEL["denoiser"])), status, None


def sampler_controls(cache: ModelCache, sampler, name):
    """The controls of the chosen sampler (solver, eta, score-SDE settings), for denoisers only: a flow shows none."""
    try:
        denoiser = cache.get(name).kind == "denoiser"
    except RequestError:
        denoiser = True
    shown = sampler if denoiser else ""
    return (gr.Dropdown(visible=shown == "ode"), gr.Slider(visible=shown == "ddim"), *stochastic_visibility(shown))


METHOD_FIELDS = ("rescale", "interval_low", "interval_high", "apg_eta", "apg_norm", "apg_momentum", "threshold")
STOCHASTIC_FIELDS = ("stochasticity", "predictor", "correctors", "snr", "langevin_steps", "step_size")


def load_settings(cache: ModelCache, file):
    """A PNG made by this app (its grid or any one image) -> every Generate control, a status line, and the request's
    fields, which the checkpoint change that may follow restores instead of the new checkpoint's defaults."""
    path = file.get("path") if isinstance(file, dict) else file
    try:
        if not isinstance(path, str):
            raise RequestError("drop a PNG that this app (or `python -m diffusion sample`) saved")
        request, sha256 = request_from_png(path)
        model = cache.get(request.checkpoint)
    except RequestError as error:
        raise user_error(error) from None
    fields = asdict(request)
    flow = isinstance(request, FlowRequest)
    same_file = not sha256 or sha256 == model.sha256
    status = (f"Settings loaded: **{markdown_text(request.checkpoint)}**, seed {request.seed}, {request.batch_size} "
              f"image(s). Press **Generate** for the same pixels."
              + ("" if same_file else " The checkpoint file has changed since that PNG was made: the pixels may differ."))
    value = lambda key: gr.skip() if flow else fields[key]  # noqa: E731 (a flow has no sampler settings)
    return (request.checkpoint, *(value(key) for key in ("sampler", "solver", "steps", "eta", "spacing", "guidance")),
            "" if request.class_index is None else request.class_index, value("scale"),
            gr.skip() if flow else SELF_CONDITION_CHOICE.get(request.self_condition, "own"), request.seed,
            request.batch_size, *(value(key) for key in METHOD_FIELDS + STOCHASTIC_FIELDS),
            fields["temperature"] if flow else gr.skip(), status, fields)


def _value(setting: dict, key: str) -> dict:
    return {"value": setting[key]} if key in setting else {}


def random_seed():
    return random.randint(0, 2**31 - 1)


def build_generate_tab(cache: ModelCache, evaluation_dir: Path, generative, default, classes, guidance_choices,
                       guidance_default, sampling: dict):
    """The tab's widgets and events; call inside `with gr.Tab(...)`. Returns (checkpoint, guidance, scale)."""
    default_model = cache.get(default) if default else None
    default_few_step = bool(default_model and default_model.kind == "denoiser" and default_model.sampling_defaults)
    with gr.Row():
        with gr.Column(scale=1, min_width=320):
            checkpoint = gr.Dropdown(generative, value=default, label="Checkpoint")
            card = gr.Markdown(model_summary(cache, evaluation_dir, default) if default else "")
            sampler = gr.Radio(SAMPLER_LABELS, value="ddim", label="Sampler")
            solver = gr.Dropdown(list(ODE_SOLVERS), value="heun", label="ODE solver", visible=False)
            steps = gr.Slider(1, MAX_STEPS, value=50, step=1, label="Steps")
            eta = gr.Slider(0, 1, value=0.0, step=0.05, label="DDIM eta (0 = deterministic, 1 = DDPM-like)")
            stochastic = stochastic_sampler_controls()
            spacing = gr.Radio(SPACING_LABELS, value="uniform", label="Time spacing")
            guidance = gr.Radio(guidance_choices, value=guidance_default, label="Guidance")
            class_index = gr.Dropdown(classes, value=classes[0][1] if classes else None, label="Class")
            scale = gr.Slider(0, 15, value=3.0, step=0.25, label="Guidance scale w", interactive=guidance_default != "none")
            methods_box, methods = guidance_method_controls()
            temperature = gr.Slider(0, MAX_TEMPERATURE, value=1.0, step=0.05, visible=False,
                                    label="Temperature T (z ~ N(0, T^2 I); below 1: smoother, less varied)")
            self_condition = self_condition_control(default_model)
            with gr.Row():
                seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
                dice = gr.Button("Random seed", size="sm")
            batch_size = gr.Slider(1, MAX_BATCH, value=16, step=1, label="Images")
            live = gr.Checkbox(False, label="Live: regenerate at once when the class, scale or seed changes",
                               info="for few-step models; the newest change wins, stale ones are dropped",
                               visible=default_few_step)
            with gr.Accordion("Load settings from a PNG made here", open=False):
                settings_png = gr.File(label="Drop a grid or an image this app saved", file_types=[".png"],
                                       type="filepath")
            run = gr.Button("Generate", variant="primary")
            run_flow = gr.Button("Generate", variant="primary", visible=False)  # normalizing flows
            stop = gr.Button("Stop", variant="stop", size="sm")
        with gr.Column(scale=2):
            status = gr.Markdown("Press **Generate**.", label="Status")
            preview = gr.Image(label=PREVIEW_LABEL[default_model.kind if default_model else "denoiser"], format="png",
                               interactive=False, height=320)
            gallery = gr.Gallery(label="Images", columns=8, format="png", height="auto")
            download = gr.File(label="Download PNG grid")
    inputs = [checkpoint, sampler, solver, steps, eta, spacing, guidance, class_index, scale,
              self_condition, seed, batch_size, *methods, *stochastic]
    generating = run.click(partial(generate, cache), inputs, [gallery, preview, status, download], api_name="generate",
                           show_progress="minimal", show_progress_on=[status], **sampling)
    stop_cancels(stop, generating, [gallery, preview, status, download], status)
    dice.click(random_seed, None, seed, api_name=False)
    sampler.change(partial(sampler_controls, cache), [sampler, checkpoint], [solver, eta, *stochastic], api_name=False)
    # /generate_flow reads its own (hidden) checkpoint, which follows the picker to flows only: its API default is a
    # flow, where the shared picker's default is a denoiser that it would refuse.
    flows = cache.names("normalizing-flow")
    flow_checkpoint = gr.Dropdown(flows, value=flows[0] if flows else None, visible=False, allow_custom_value=True,
                                  label="Normalizing flow")
    run_flow.click(partial(generate_flow, cache), [flow_checkpoint, class_index, temperature, seed, batch_size],
                   [gallery, preview, status, download], api_name="generate_flow", **sampling)
    few_step = gr.State(default_few_step)
    loaded = gr.State(None)  # a PNG's request fields until the checkpoint change they cause has restored them
    checkpoint.change(partial(on_checkpoint_change, cache, evaluation_dir), [checkpoint, sampler, few_step, loaded],
                      [class_index, self_condition, guidance, card, sampler, solver, steps, eta, spacing,
                       scale, temperature, run, run_flow, live, few_step, flow_checkpoint, loaded,
                       methods_box, *stochastic, gallery, preview, status, download], api_name=False)
    settings_png.upload(partial(load_settings, cache), settings_png, [*inputs, temperature, status, loaded],
                        api_name="load_settings")
    for trigger in (live, class_index, scale, seed):
        trigger.change(partial(generate_live, cache), [live, *inputs], [gallery, preview, status, download],
                       api_name=False, trigger_mode="always_last", show_progress="hidden", **sampling)
    return checkpoint, guidance, scale
