"""The Edit tab: image-to-image (SDEdit), inpainting with a painted mask (RePaint) and class swap by inversion, on
a test image, an image from Generate, or an upload. The input, the mask, the start and the result side by side.

The same edits are three API endpoints, /edit_sdedit, /edit_repaint and /edit_swap, taking an image file (and for
inpainting a mask file of the same size: white where the model paints, black where the input is kept)."""

from __future__ import annotations

import base64
import io
from functools import partial

import gradio as gr
import numpy as np
import torch
from PIL import Image

from ..formats.data import FASHION_MNIST_CLASSES, to_uint8
from ..serving.backend import backend_for
from ..serving.edits import EDIT_METHODS, EditRequest, strength_log_snr
from ..serving.engine import GENERATIVE_KINDS, FlowRequest, ModelCache, RequestError, image_shape
from ..formats.images import FITS, captioned_row, display_scale, fit_picture, is_colour, to_pil
from ..core.sampling import ODE_SOLVERS
from .common import grid_pil, markdown_text, save_png, stream_result, user_error, widget_class, widget_number
from .controls import (DEFAULT_SCALES, SAMPLER_LABELS, UNCONDITIONAL, allowed_guidance, checkpoint_choices,
                       make_request, run_and_stop, settle_run)
from .families import test_image
from .generate import PreviewClock
from .lens import uploaded_picture

EDITOR_SCALE = 10  # a 28 px image is shown at 280 px in the input box
METHOD_LABELS = [(label, name) for name, label in EDIT_METHODS.items()]
INTRO = """**Edit an image with a model.** *Image-to-image* (SDEdit, Meng et al. 2022) noises the input to a level t0
and lets the model denoise it: the strength decides how much of the input survives. *Inpainting* (RePaint, Lugmayr
et al. 2022) keeps the pixels you did not paint and lets the model fill the painted ones, going back and forth in
noise so both parts agree. *Class swap* inverts the image to noise with its own class (DDIM inversion) and decodes
that noise with another class: the pose stays, the garment changes. Load an image, paint the mask (inpainting), press
**Edit**."""
NO_FLOW_INPAINTING = ("A normalizing flow has no inpainting: its latent mixes every pixel, so the kept ones cannot "
                      "be held fixed. Image-to-image mixes its exact latent with noise; class swap is exact.")


# --- the input: the input box's picture and the mask canvas, or the API's files -> the model's tensors ---
def editor_picture(picture: Image.Image, shape, fit: str = "crop") -> tuple[torch.Tensor, str]:
    """A picture as the model's (1, C, H, W) in [-1, 1] (cropped or padded to its shape, then box-resized, where its
    size differs), and a note saying what was done to it ("" for the model's size enlarged by a whole factor)."""
    channels, height, width = shape
    enlarged = picture.width % width == 0 and picture.height % height == 0 and \
        picture.width // width == picture.height // height  # the model's size, enlarged by a whole factor
    try:
        fitted, note = fit_picture(picture, shape, str(fit))
    except ValueError as error:
        raise RequestError(str(error)) from None
    array = np.asarray(fitted, dtype=np.float32).reshape(height, width, channels)
    kept = enlarged and (channels == 3 or not is_colour(picture))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)[None] / 127.5 - 1, "" if kept else note


def painted_mask(painted: np.ndarray, shape) -> torch.Tensor:
    """(h, w) bool of painted display pixels -> the model's (H, W) mask: a pixel is painted where at least half of
    its area is."""
    _, height, width = shape
    coverage = Image.fromarray(painted.astype(np.float32)).resize((width, height), Image.Resampling.BOX)
    return torch.from_numpy((np.asarray(coverage) >= 0.5).astype(np.float32))


def fitted_mask(painted: np.ndarray, picture_size: tuple[int, int], shape, fit: str = "crop") -> torch.Tensor:
    """(h, w) bool painted over the whole picture (at any display size) -> the model's (H, W) mask, cropped or padded
    as editor_picture fits the picture (a padded band is never painted), a pixel painted where half its area is."""
    layer = Image.fromarray(painted.astype(np.uint8) * 255).resize(picture_size, Image.Resampling.NEAREST)
    try:
        fitted, _ = fit_picture(layer, (1, *shape[-2:]), str(fit), fill=0)
    except ValueError as error:
        raise RequestError(str(error)) from None
    return torch.from_numpy((np.asarray(fitted) >= 128).astype(np.float32))


def input_picture(source) -> Image.Image:
    """The input image box's raw value (Gradio's file record of what it shows: an upload, a test image, an image
    from Generate), decoded; None is the user's error."""
    if source is None:
        raise RequestError("load an image first: a test image, one from Generate (Send to Edit), or upload one into "
                           "the input box")
    return uploaded_picture(source)


MASK_CANVAS = 280  # page.js's mask canvas: the input picture stretched to 280 x 280 px, painted on at that size
MASK_PREFIX = "data:image/png;base64,"


def canvas_mask(data_url, shape, picture_size=None, fit="crop") -> torch.Tensor | None:
    """The mask canvas' paint (a PNG data URL that page.js writes into the hidden mask box at the end of each stroke;
    empty when nothing is painted) -> the model's (H, W) mask, or None if nothing is painted."""
    if data_url in (None, ""):
        return None
    unreadable = RequestError("the mask could not be read; clear it and paint it again")
    if not isinstance(data_url, str) or not data_url.startswith(MASK_PREFIX):
        raise unreadable
    try:
        picture = Image.open(io.BytesIO(base64.b64decode(data_url[len(MASK_PREFIX):], validate=True)))
    except (ValueError, OSError, Image.DecompressionBombError):
        raise unreadable from None
    if picture.size != (MASK_CANVAS, MASK_CANVAS):  # checked from the header, before decoding
        raise RequestError(f"the mask is {picture.width}x{picture.height} pixels; the canvas is {MASK_CANVAS}x{MASK_CANVAS}")
    try:
        painted = np.asarray(picture.convert("RGBA"))[..., 3] > 0
    except (ValueError, OSError):
        raise unreadable from None
    if not painted.any():
        return None
    return painted_mask(painted, shape) if picture_size is None else fitted_mask(painted, picture_size, shape, fit)


def edit_input(source, mask, shape, fit="crop") -> tuple[torch.Tensor, torch.Tensor | None, str]:
    """What the tab shows -> (image, mask or None if nothing is painted, a note on what was done to the picture)."""
    picture = input_picture(source)
    image, note = editor_picture(picture, shape, fit)
    return image, canvas_mask(mask, shape, picture.size, fit), note


def file_mask(upload, image_size: tuple[int, int], shape) -> torch.Tensor:
    """An API mask file: black (keep) and white (paint) only, the input image's size."""
    picture = uploaded_picture(upload).convert("L")
    if picture.size != image_size:
        raise RequestError(f"the mask is {picture.width}x{picture.height} pixels; the image is "
                           f"{image_size[0]}x{image_size[1]}: they must be the same size")
    values = np.asarray(picture)
    if not np.isin(values, (0, 255)).all():
        raise RequestError("the mask must be black (keep) and white (paint) only; it has grey pixels")
    return fitted_mask(values == 255, image_size, shape)  # the API's picture is centre-cropped


def shown_picture(image: torch.Tensor) -> Image.Image:
    """An image (C, H, W) in [-1, 1] as the input box shows it: enlarged by a whole factor (read back exactly)."""
    return to_pil(to_uint8(image), EDITOR_SCALE)


# --- handlers -------------------------------------------------------------------------------------
def edit_request(cache: ModelCache, checkpoint, method, strength, jump_length, resamplings, eta, source_class,
                 class_index, guidance, scale, sampler, solver, steps, seed, batch_size) -> tuple[EditRequest, object]:
    model = cache.get(str(checkpoint))
    if model.kind == "normalizing-flow":
        base = FlowRequest(checkpoint=str(checkpoint), class_index=widget_class(class_index),
                           seed=widget_number(seed, "seed", int), batch_size=widget_number(batch_size, "images", int))
    else:
        # The tab has no spacing control: uniform in t, but for the reverse SDE, whose Euler-Maruyama steps are
        # stable only on a grid uniform in log-SNR (no step count makes a uniform grid stable near t = 0).
        spacing = "log-snr" if sampler == "sde" else "uniform"
        base = make_request(checkpoint, sampler, solver, steps, 0.0, spacing, guidance, class_index, scale, None,
                            seed, batch_size)
    request = EditRequest(str(method), base, strength=widget_number(strength, "strength"),
                          jump_length=widget_number(jump_length, "jump length", int),
                          resamplings=widget_number(resamplings, "resamplings", int), eta=widget_number(eta, "eta"),
                          source_class=widget_class(source_class))
    return request, model


def caption(request: EditRequest, model, result, note: str) -> str:
    """What was done, in words and numbers."""
    base = request.base
    target = model.class_names[base.class_index] if base.class_index is not None and model.class_names else "none"
    how = {"sdedit": f"strength {request.strength:g}" + (
               f" (t0 = {request.strength:g}, log-SNR {strength_log_snr(model.schedule, request.strength):+.1f})"
               if model.kind == "denoiser" and 0 < request.strength < 1 else ""),
           "repaint": f"jump length {request.jump_length}, {request.resamplings} resamplings, eta {request.eta:g}",
           "swap": "from " + (model.class_names[request.source_class] if request.source_class is not None
                              else "no class (unconditional inversion)")}[request.method]
    sampling = "" if model.kind != "denoiser" else (
        f", {base.sampler if request.method == 'sdedit' else ('DDIM' if request.method == 'swap' else 'RePaint')}"
        f"-{base.steps}, {base.guidance} {base.scale:g}")
    return (f"**{EDIT_METHODS[request.method]}** with {model.name}: {how}; class {target}{sampling}; seed {base.seed}. "
            f"NFE {result.nfe} per image, {result.seconds:.2f} s." + (f" Input {note}." if note else ""))


def side_by_side(image, mask, result) -> Image.Image:
    """Input | mask | start | result 1 (the start shown as an image: clamped to [-1, 1])."""
    scale = display_scale(image.shape[-1], 112)
    parts = [image[0]] + ([mask.expand_as(image[0]) * 2 - 1] if mask is not None else []) + \
            [result.start[0].clamp(-1, 1), result.images[0]]
    captions = ["input"] + (["mask (white: painted)"] if mask is not None else []) + \
               [{"sdedit": "noised start", "repaint": "start (noise)", "swap": "inverted noise"}[result.request.method],
                "result"]
    return captioned_row([to_pil(to_uint8(p), scale) for p in parts], captions)


def perform_edit(cache: ModelCache, image, mask, request: EditRequest, model, note: str, progress):
    """The edit as the tab and the endpoints run it: progress, x0 previews, then (side by side, grid, caption)."""
    previews = PreviewClock()
    columns = min(8, int(request.base.batch_size))

    def work(emit):
        return backend_for(cache).run_edit(request, image, mask, progress=lambda done, total: emit(("progress", done, total)),
                        preview=lambda step, t, x_t, x0: emit(("preview", x0.float().cpu())) if previews.due() else None)

    def on_event(event):
        if event[0] == "progress":
            progress(event[1:], desc=f"network evaluation {event[1]}/{event[2]}")
            return None
        return gr.skip(), grid_pil(event[1], columns), gr.skip()

    result = yield from stream_result(work, on_event, outputs=3, limit_seconds=cache.budget.seconds)
    grid = save_png(result.images, columns, f"edit-{request.method}")
    yield side_by_side(image, mask, result), grid, caption(request, model, result, note)


def edit_from_tab(cache: ModelCache, source, mask_data, fit, checkpoint, method, strength, jump_length, resamplings, eta, source_class,
                  class_index, guidance, scale, sampler, solver, steps, seed, batch_size, progress=gr.Progress()):
    try:
        request, model = edit_request(cache, checkpoint, method, strength, jump_length, resamplings, eta,
                                      source_class, class_index, guidance, scale, sampler, solver, steps, seed,
                                      batch_size)
        image, mask, note = edit_input(source, mask_data, image_shape(model), fit)
        if request.method == "repaint" and mask is None:
            raise RequestError("inpainting needs a mask: paint the region the model should fill on the image")
    except RequestError as error:  # in the tab's own status: a pop-up stayed over every tab the user went on to
        yield None, None, f"**Not run:** {markdown_text(error)}"
        return
    yield from _checked(perform_edit(cache, image, mask if request.method == "repaint" else None, request, model, note,
                                     progress))


def edit_from_files(cache: ModelCache, method: str, upload, mask_upload, checkpoint, strength, jump_length,
                    resamplings, eta, source_class, class_index, guidance, scale, sampler, solver, steps, seed,
                    batch_size, progress=gr.Progress()):
    """The API's form: an image file (and a mask file for inpainting) instead of the tab's input box and canvas."""
    try:
        request, model = edit_request(cache, checkpoint, method, strength, jump_length, resamplings, eta,
                                      source_class, class_index, guidance, scale, sampler, solver, steps, seed,
                                      batch_size)
        if upload is None:
            raise RequestError("the edit needs an input image file")
        picture = uploaded_picture(upload)
        image, note = editor_picture(picture, image_shape(model))
        mask = file_mask(mask_upload, picture.size, image_shape(model)) if method == "repaint" else None
    except RequestError as error:
        raise user_error(error) from None
    yield from _checked(perform_edit(cache, image, mask, request, model, note, progress))


def _checked(steps):
    """An edit's outputs, with a RequestError raised while it runs (a bad mask, strength, ...) as the user's error."""
    try:
        yield from steps
    except RequestError as error:
        raise user_error(error) from None


def load_test_image(cache: ModelCache, index, checkpoint):
    """Test image `index` into the input box; for a Fashion-MNIST model its class as the swap's source class and as the
    target (change the target to swap)."""
    try:
        image, label = test_image(index)
        model = cache.get(str(checkpoint))
    except RequestError as error:
        raise user_error(error) from None
    same_classes = tuple(model.class_names) == tuple(FASHION_MNIST_CLASSES)
    classes = (label, label) if same_classes else (gr.skip(), gr.skip())
    return (shown_picture(image[0]), *classes,
            f"Test image {int(index)} ({FASHION_MNIST_CLASSES[label]}) loaded.")


def image_from_generate(cache: ModelCache, gallery, index, checkpoint, class_index, guidance, scale, seed):
    """Generate's clicked image (the first if none was clicked) into the input box, with its checkpoint, class (the
    target and the swap's source), guidance and seed; the Edit tab selected."""
    items = gallery if isinstance(gallery, list) else []
    if not items:
        raise user_error("Generate has no images yet: generate some, click one, then send it to Edit")
    index = index if isinstance(index, int) and 0 <= index < len(items) else 0
    item = items[index]
    record = item.get("image") if isinstance(item, dict) else None
    try:
        model = cache.get(str(checkpoint))
        image, _ = editor_picture(uploaded_picture(record), image_shape(model))
    except RequestError as error:
        raise user_error(error) from None
    label = "" if class_index in (None, "") else class_index
    return (shown_picture(image[0]), checkpoint, label, label, guidance, scale, seed,
            gr.Tabs(selected="edit"),
            f"Image {index + 1} of Generate's last run loaded, with its checkpoint, class and seed. Paint the mask "
            f"for inpainting, or press **Edit**.")


def send_to_edit(cache: ModelCache, generate, edit: dict, tabs: gr.Tabs) -> None:
    """Wire Generate's "Send to Edit" button (its gallery's raw records: uploaded_picture checks them)."""
    fields = ("checkpoint", "class_index", "guidance", "scale", "seed")
    generate.send_buttons["edit"].click(
        partial(image_from_generate, cache), [generate.gallery, generate.picked_index,
                                              *(generate.controls[f] for f in fields)],
        [edit["editor"], edit["checkpoint"], edit["class_index"], edit["source_class"], edit["guidance"],
         edit["scale"], edit["seed"], tabs, edit["note"]], api_name=False, preprocess=False)


def source_choices(classes, denoiser: bool) -> list:
    """The swap's source classes: the checkpoint's, and for a denoiser "unknown" (DDIM inversion with no class)."""
    return [(label, index) for label, index in classes if index != ""] + \
        ([("unknown (invert without a class)", "")] if denoiser else [])


def on_checkpoint_change(cache: ModelCache, name, method, guidance_value, class_index, source_class):
    """The checkpoint's classes (the chosen ones kept where it has them: Send to Edit sets them with the checkpoint)
    and guidance modes; a flow has no sampler, steps or guidance (and no inpainting)."""
    classes, guidance_choices = checkpoint_choices(cache, name)
    model = cache.get(name)
    denoiser = model.kind == "denoiser"
    guidance_value = allowed_guidance(guidance_choices, guidance_value)
    source_classes = source_choices(classes, denoiser)
    kept = lambda value, choices: value if value in [v for _, v in choices] else choices[0][1]  # noqa: E731
    return (gr.Dropdown(choices=classes, value=kept(class_index, classes)),
            gr.Radio(choices=guidance_choices, value=guidance_value, visible=denoiser),
            gr.Slider(visible=denoiser, interactive=guidance_value != "none"),
            gr.Dropdown(choices=source_classes, value=kept(source_class, source_classes)),
            *method_visibility(method, denoiser), NO_FLOW_INPAINTING if not denoiser else "")


def method_visibility(method, denoiser: bool = True):
    """Which settings the method reads: strength (SDEdit), jumps and eta (RePaint), the source class (swap); sampler
    and solver for SDEdit only (RePaint has its own step, the swap decodes by DDIM); steps for every denoiser."""
    return (gr.Slider(visible=method == "sdedit"), *(gr.Slider(visible=method == "repaint" and denoiser)
                                                     for _ in range(3)),
            gr.Dropdown(visible=method == "swap"), gr.Radio(visible=method == "sdedit" and denoiser),
            gr.Dropdown(visible=method == "sdedit" and denoiser), gr.Slider(visible=denoiser))


def strength_note(cache: ModelCache, name, strength) -> str:
    """Where SDEdit starts, on the checkpoint's own time axis and as log-SNR."""
    try:
        model, value = cache.get(str(name)), widget_number(strength, "strength")
    except RequestError:
        return ""
    if not 0 <= value <= 1:
        return ""
    if model.kind != "denoiser":
        keep = np.cos(np.pi * value / 2)
        return f"Keeps cos(π s/2) = {keep:.2f} of the image's exact latent and mixes in noise for the rest."
    lam = strength_log_snr(model.schedule, value)
    where = "the image itself" if value == 0 else "pure noise: plain generation" if value == 1 else \
        f"t0 = {value:g} on {model.name}'s time axis, log-SNR {lam:+.1f}"
    return f"Starts from {where}."


MASK_HELP = ("**The mask** (inpainting only): paint on the picture below what the model should redraw. Painting "
             "stays in your browser until you press **Edit**; a new picture clears it.")


def input_controls() -> dict:
    """The input: the picture (an upload, a paste, a test image or an image from Generate: what the box shows is
    what the run reads) and the mask, painted on a canvas of page.js's own (issue 37: Gradio's ImageEditor ignored a
    plain upload until painted on, and re-uploaded its layers some 550 times per run). Painting sends nothing; the
    end of each stroke writes the mask, a PNG data URL, into a hidden text box that the Edit button sends."""
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            source = gr.Image(label="Input image (upload or paste one, or load one)", type="filepath", format="png",
                              sources=("upload", "clipboard"), height=320, elem_id="edit-input")
            fit = gr.Radio(list(FITS), value="crop", label="An upload of another shape is", elem_id="edit-fit",
                           info="centre-cropped or padded to the model's square, never squashed")
            gr.Markdown("**The input:** a test image, an image from Generate (its *Send to Edit* button), or your own "
                        "upload into the box above.")
            index = gr.Number(value=0, precision=0, minimum=0, maximum=9999, label="Test image (0-9999)")
            load = gr.Button("Load test image")
        with gr.Column(scale=1, min_width=300):
            gr.Markdown(MASK_HELP)
            gr.HTML(f'<div id="edit-mask-canvas-host" data-size="{MASK_CANVAS}"></div>', elem_id="edit-mask-host")
            mask = gr.Textbox("", visible="hidden", label="Mask (written by the canvas)", elem_id="edit-mask")
    return {"source": source, "mask": mask, "fit": fit, "index": index, "load": load}


def method_controls(classes, sources, guidance_choices) -> dict:
    """Each method's settings, and the sampling settings that the methods share."""
    with gr.Row():
        with gr.Column(scale=1, min_width=300):
            strength = gr.Slider(0, 1, value=0.6, step=0.05, label="Strength (t0: 0 keeps the image, 1 is new)")
            strength_info = gr.Markdown()
            with gr.Row():
                jump_length = gr.Slider(1, 50, value=10, step=1, label="Jump length j", visible=False)
                resamplings = gr.Slider(1, 20, value=10, step=1, label="Resamplings r (1: none)", visible=False)
                eta = gr.Slider(0, 1, value=1.0, step=0.1, label="eta (1: DDPM step, 0: DDIM)", visible=False)
            source_class = gr.Dropdown(sources, value=sources[0][1] if sources else None, visible=False,
                                       label="The image's own class (inverted with it)")
        with gr.Column(scale=1, min_width=300):
            with gr.Row():
                class_index = gr.Dropdown(classes, value=classes[0][1] if classes else None, label="Class (the target)")
                guidance = gr.Radio(guidance_choices, value=allowed_guidance(guidance_choices, "cfg"), label="Guidance")
                scale = gr.Slider(0, 15, value=DEFAULT_SCALES["cfg"], step=0.25, label="Guidance scale w")
            with gr.Row():
                sampler = gr.Radio(SAMPLER_LABELS, value="ode", label="Sampler")
                solver = gr.Dropdown(list(ODE_SOLVERS), value="dpm++2m", label="ODE solver")
            with gr.Row():
                steps = gr.Slider(1, 200, value=20, step=1, label="Steps")
                seed = gr.Number(value=0, precision=0, minimum=0, label="Seed")
                batch_size = gr.Slider(1, 16, value=4, step=1, label="Images")
    return dict(strength=strength, strength_info=strength_info, jump_length=jump_length, resamplings=resamplings,
                eta=eta, source_class=source_class, class_index=class_index, guidance=guidance, scale=scale,
                sampler=sampler, solver=solver, steps=steps, seed=seed, batch_size=batch_size)


REQUEST_FIELDS = ("checkpoint", "method", "strength", "jump_length", "resamplings", "eta", "source_class",
                  "class_index", "guidance", "scale", "sampler", "solver", "steps", "seed", "batch_size")


def wire_edit(cache: ModelCache, sampling: dict, parts: dict, run, stop, outputs) -> None:
    """The Edit button (what the input box and the mask show, and the settings), the API's one endpoint per method,
    the test image, and the controls that follow the checkpoint and the method."""
    controls = [parts[name] for name in REQUEST_FIELDS]
    status = outputs[-1]
    editing = run.click(partial(edit_from_tab, cache), [parts["source"], parts["mask"], parts["fit"], *controls], outputs,
                        api_name=False, show_progress="hidden", **sampling)
    settle_run(editing, outputs, status, stop)
    # One endpoint per method, for API clients: files instead of the tab's input. Like every handler here they get
    # the raw file records (sampling's preprocess=False), which uploaded_picture checks for size before decoding.
    upload = gr.Image(type="filepath", visible=False)
    mask_upload = gr.Image(type="filepath", visible=False)
    for name in EDIT_METHODS:
        endpoint = gr.Button(visible=False)
        endpoint.click(partial(edit_from_files, cache, name), [upload, mask_upload, *controls[:1], *controls[2:]],
                       outputs, api_name=f"edit_{name}", **sampling)
    parts["load"].click(partial(load_test_image, cache), [parts["index"], parts["checkpoint"]],
                        [parts["source"], parts["source_class"], parts["class_index"], status], api_name=False)
    visibility = [parts[name] for name in ("strength", "jump_length", "resamplings", "eta", "source_class", "sampler",
                                           "solver", "steps")]
    checkpoint, method, guidance = parts["checkpoint"], parts["method"], parts["guidance"]
    checkpoint.change(partial(on_checkpoint_change, cache),
                      [checkpoint, method, guidance, parts["class_index"], parts["source_class"]],
                      [parts["class_index"], guidance, parts["scale"], parts["source_class"], *visibility,
                       parts["flow_note"]], api_name=False)
    method.change(lambda m, name: method_visibility(m, cache.get(name).kind == "denoiser"), [method, checkpoint],
                  visibility, api_name=False)
    guidance.input(lambda mode: gr.Slider(value=DEFAULT_SCALES.get(mode, 1.0), interactive=mode != "none"), guidance,
                   parts["scale"], api_name=False)
    for trigger in (parts["strength"].change, checkpoint.change):
        trigger(partial(strength_note, cache), [checkpoint, parts["strength"]], parts["strength_info"], api_name=False)


def build_edit_tab(cache: ModelCache, sampling: dict) -> dict:
    """The tab's widgets and events; call inside `with gr.Tab(...)`. Returns the controls Generate's "Send to Edit"
    fills: {"editor" (the input image), "checkpoint", "class_index", "source_class", "guidance", "scale", "seed",
    "note"}."""
    names = cache.names(*GENERATIVE_KINDS)
    default = "fashion-diffusion" if "fashion-diffusion" in names else (names[0] if names else None)
    model = cache.get(default) if default else None
    classes, guidance_choices = checkpoint_choices(cache, default) if default else ([UNCONDITIONAL], [])
    gr.Markdown(INTRO)
    with gr.Row(equal_height=True):
        checkpoint = gr.Dropdown(names, value=default, label="Checkpoint", scale=3, min_width=240,
                                 elem_id="edit-checkpoint")
        method = gr.Radio(METHOD_LABELS, value="sdedit", label="Edit", scale=4)
    run, stop = run_and_stop("Edit")
    parts = input_controls() | {"checkpoint": checkpoint, "method": method}
    denoiser = model is not None and model.kind == "denoiser"
    parts |= method_controls(classes, source_choices(classes, denoiser), guidance_choices)
    parts["flow_note"] = gr.Markdown(NO_FLOW_INPAINTING if model is not None and not denoiser else "")
    pair = gr.Image(label="Input, mask, start and result", format="png", interactive=False, elem_id="edit-pair")
    grid = gr.Image(label="Results (x0 estimates while running)", format="png", interactive=False, elem_id="edit-grid")
    status = gr.Markdown("Load an image, then press **Edit**.", label="Status", elem_id="edit-status")
    wire_edit(cache, sampling, parts, run, stop, [pair, grid, status])
    return {"editor": parts["source"], "checkpoint": checkpoint, "class_index": parts["class_index"],
            "guidance": parts["guidance"], "scale": parts["scale"], "seed": parts["seed"],
            "source_class": parts["source_class"], "note": status}
