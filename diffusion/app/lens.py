"""The Likelihood tab: bits/dim of one image and of its out-of-distribution probes under each model, and where
along the probability-flow ODE's path (in t) that likelihood is gained."""

from __future__ import annotations

from functools import partial

import gradio as gr
import numpy as np
import torch
from PIL import Image

from ..formats.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, to_uint8
from ..formats.images import FITS, FORMATS_SENTENCE, fit_picture, open_picture
from ..serving.backend import backend_for
from ..serving.engine import (GENERATIVE_KINDS, MAX_SEED, FlowRequest, ModelCache, RequestError, SampleRequest,
                              image_shape)
from ..serving.lens import PROBES, probe_images
from ..serving.studies import MAX_FAMILY_COLUMNS
from .outputs import output_path
from .common import pil_images, stream_result, user_error, widget_class, widget_names, widget_number
from .controls import on_class_checkpoint_change, run_and_stop, settle_run
from .families import test_image

SOURCES = ("test image", "uploaded image", "a sample")

INTRO = """**How likely is this image?** Every model here defines an exact density: NICE by its change of variables,
the diffusion and flow models through their probability-flow ODE (integrated with an adaptive solver, the divergence
by Hutchinson's estimator). Lower bits/dim = more likely. The probes ask the question of Nalisnick et al. 2019
(*Do Deep Generative Models Know What They Don't Know?*): are images unlike the training data rated *less* likely?
Each image is uniformly dequantized and scored by the unconditional model (a probe has no label): the null class of
a diffusion or flow model, the mixture over classes for NICE. An ODE model takes 5-30 s here."""


def picked_image(cache: ModelCache, source, index, upload, sample_checkpoint, sample_class, sample_seed,
                 shape, fit="crop") -> tuple[torch.Tensor, str]:
    """The image to probe as uint8 (C, H, W) of the models' `shape`, and a caption."""
    source = str(source)
    if source == "test image":
        image, label = test_image(index)
        return to_uint8(image[0]), f"test image {int(index)} ({FASHION_MNIST_CLASSES[label]})"
    if source == "uploaded image":
        if upload is None:
            raise RequestError("upload an image first (or pick another source)")
        channels, height, width = shape
        try:
            picture, note = fit_picture(uploaded_picture(upload), shape, str(fit))
        except ValueError as error:
            raise RequestError(str(error)) from None
        array = np.asarray(picture, dtype=np.uint8).reshape(height, width, channels)
        return torch.from_numpy(array.copy()).permute(2, 0, 1), f"uploaded image, {note}"
    if source == "a sample":
        model = cache.get(str(sample_checkpoint))
        common = dict(checkpoint=str(sample_checkpoint), class_index=widget_class(sample_class),
                      seed=widget_number(sample_seed, "sample seed", int), batch_size=1)
        guided = model.config.get("null_class") is not None and common["class_index"] is not None
        request = (FlowRequest(**common) if model.kind == "normalizing-flow" else
                   SampleRequest(**common, guidance="cfg" if guided else "none"))
        result = backend_for(cache).run_request(request, model=model)
        if tuple(result.images.shape[1:]) != shape:
            raise RequestError(f"checkpoint {sample_checkpoint!r} makes {tuple(result.images.shape[1:])} images, "
                               f"the models to score take {shape}")
        how = "T = 1" if model.kind == "normalizing-flow" else f"DDIM-50, {request.guidance} {request.scale:g}"
        return to_uint8(result.images[0]), f"a sample of {sample_checkpoint} ({how}, seed {common['seed']})"
    raise RequestError(f"image source must be one of {SOURCES}, got {source[:40]!r}")


MAX_UPLOAD_PIXELS = 4096 * 4096  # a small PNG can claim a huge canvas: refuse before decoding it


def uploaded_picture(upload) -> Image.Image:
    """The raw upload (Gradio's file record, its path already checked to be one Gradio received) decoded by PIL."""
    path = upload.get("path") if isinstance(upload, dict) else None
    if not isinstance(path, str):
        raise RequestError("the upload must be an image file")
    unreadable = RequestError(f"the upload is not an image this app can read: {FORMATS_SENTENCE}")
    try:
        picture = open_picture(path)  # reads the header only, with the four decoders
    except ValueError as error:
        raise RequestError(str(error).replace("the file", "the upload")) from None
    if picture.width * picture.height > MAX_UPLOAD_PIXELS:  # outside the try: this sentence must reach the user
        raise RequestError(f"the uploaded image is {picture.width}x{picture.height} = {picture.width * picture.height:,} "
                           f"pixels; at most {MAX_UPLOAD_PIXELS:,} are accepted")
    try:
        picture.load()
    except (OSError, ValueError, Image.DecompressionBombError):
        raise unreadable from None
    return picture


def lens_table(columns) -> str:
    header = "| probe | " + " | ".join(f"`{c.checkpoint}`" for c in columns) + " |"
    rows = [header, "|---" * (len(columns) + 1) + "|"]
    for p, probe in enumerate(PROBES):
        best = min(c.bits_per_dim[p] for c in columns)
        cells = [f"**{c.bits_per_dim[p]:.2f}**" if c.bits_per_dim[p] == best else f"{c.bits_per_dim[p]:.2f}"
                 for c in columns]
        rows.append(f"| {probe} | " + " | ".join(cells) + " |")
    cost = ["one exact pass" if c.nfe == 0 else f"{c.nfe} ODE evaluations" for c in columns]
    rows.append("| *cost* | " + " | ".join(f"*{how}, {c.seconds:.1f} s*" for how, c in zip(cost, columns)) + " |")
    return "bits/dim (lower = more likely; bold: the lowest of the row):\n\n" + "\n".join(rows)


def verdict(columns) -> str:
    """One sentence per model: which probes it rates more likely than the image itself."""
    lines = []
    for c in columns:
        original = c.bits_per_dim[0]
        likelier = [probe for probe, bits in zip(PROBES[1:], c.bits_per_dim[1:]) if bits < original]
        lines.append(f"- `{c.checkpoint}`: " + (f"rates **{', '.join(likelier)}** more likely than the image itself."
                                                if likelier else "rates every probe less likely than the image."))
    return "\n".join(lines)


def plot_paths(columns) -> Image.Image | None:
    """Per ODE model, bits/dim gained by the path from t_start to t against t (log axis), one line per probe."""
    ode_columns = [c for c in columns if c.times is not None]
    if not ode_columns:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(ode_columns), figsize=(4.6 * len(ode_columns), 3.4), squeeze=False,
                                sharey=True)
    for axis, column in zip(axes[0], ode_columns):
        for p, probe in enumerate(PROBES):
            axis.plot(column.times.numpy(), column.path_bits[:, p].numpy(), label=probe)
        axis.set_xscale("log")
        axis.set_title(column.checkpoint, fontsize=10)
        axis.set_xlabel("t (0 = data, 1 = noise)")
        axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("bits/dim gained, t_start to t")
    axes[0][-1].legend(fontsize=7)
    figure.tight_layout()
    path = output_path("likelihood-paths", ".png")
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return Image.open(path)


def run_lens(cache: ModelCache, checkpoints, source, index, upload, sample_checkpoint, sample_class, sample_seed,
             seed, fit="crop", progress=gr.Progress()):
    try:
        names = list(dict.fromkeys(widget_names(checkpoints, "checkpoints")))
        if not names:
            raise RequestError("choose at least one checkpoint to score the image with")
        seed = widget_number(seed, "probe seed", int)
        if not 0 <= seed <= MAX_SEED:
            raise RequestError(f"probe seed must be between 0 and {MAX_SEED}, got {seed}")
        shape = image_shape(cache.get(names[0]))
        image, caption = picked_image(cache, source, index, upload, sample_checkpoint, sample_class, sample_seed, shape,
                                      fit)
    except RequestError as error:
        raise user_error(error) from None

    def on_event(event):
        column, fraction = event
        progress((column + fraction, len(names)), desc=f"model {column + 1}/{len(names)}: solving the ODE")

    columns = yield from stream_result(
        lambda emit: backend_for(cache).likelihood_lens(names, image, seed, progress=lambda column, fraction: emit((column, fraction))),
        on_event, outputs=4, limit_seconds=cache.budget.seconds)
    probes = likelihood_probes_gallery(image, seed, columns)
    yield probes, lens_table(columns) + "\n\n" + verdict(columns), plot_paths(columns), caption


def likelihood_probes_gallery(image: torch.Tensor, seed: int, columns):
    images = probe_images(image, seed).float() / 127.5 - 1
    return [(picture, f"{probe}: " + ", ".join(f"{c.bits_per_dim[p]:.2f}" for c in columns) + " bits/dim")
            for p, (probe, picture) in enumerate(zip(PROBES, pil_images(images)))]


def build_lens_tab(cache: ModelCache, class_choices, sampling: dict) -> list:
    """The tab's widgets and events; call inside `with gr.Tab(...)`. Returns its checkpoint pickers."""
    names = cache.names(*GENERATIVE_KINDS)
    default = [n for n in ("fashion-nice", "fashion-diffusion", "fashion-flow") if n in names] or names[:3]
    installed = (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists()
    gr.Markdown(INTRO + ("" if installed else f"\n\n**The test set is not installed** (looked in `{FASHION_MNIST_DIR}`): "
                                               "upload an image or score a sample instead."))
    with gr.Row():
        checkpoints = gr.CheckboxGroup(names, value=default, label=f"Score with (up to {MAX_FAMILY_COLUMNS})")
        seed = gr.Number(value=0, precision=0, minimum=0, label="Probe seed (dequantization, noise probe, Hutchinson)")
    with gr.Row():
        source = gr.Radio(list(SOURCES), value=SOURCES[0] if installed else SOURCES[2], label="Image")
        index = gr.Number(value=0, precision=0, minimum=0, maximum=9999, label="Test image (0-9999)")
        with gr.Column(min_width=200):
            upload = gr.Image(type="filepath", label="Upload (fitted to the models' size)", height=160,
                              sources=["upload", "clipboard"])
            fit = gr.Radio(list(FITS), value="crop", label="An upload of another shape is", elem_id="lens-fit",
                           info="centre-cropped or padded to the models' square, never squashed")
    with gr.Row():
        sample_checkpoint = gr.Dropdown(names, value=names[0] if names else None, label="Sample from")
        sample_class = gr.Dropdown(class_choices, value=class_choices[0][1] if class_choices else None, label="Class")
        sample_seed = gr.Number(value=0, precision=0, minimum=0, label="Sample seed")
    run, stop = run_and_stop("How likely?")
    gallery = gr.Gallery(label="The image and its probes (bits/dim per model, in the table's order)", columns=5,
                         format="png", height="auto")
    table = gr.Markdown(label="bits/dim table")
    plot = gr.Image(label="Where along t the likelihood is gained", format="png", interactive=False)
    caption = gr.Markdown(label="Image source")
    # With preprocess off the handler gets the upload's file record; Gradio has still checked that its path is a
    # file it received (a raw API call cannot point it elsewhere), and uploaded_picture decodes it.
    scoring = run.click(partial(run_lens, cache),
                        [checkpoints, source, index, upload, sample_checkpoint, sample_class, sample_seed, seed, fit],
                        [gallery, table, plot, caption], api_name="likelihood", show_progress="minimal", **sampling)
    settle_run(scoring, [gallery, table, plot, caption], caption, stop)
    sample_checkpoint.change(partial(on_class_checkpoint_change, cache), sample_checkpoint, sample_class, api_name=False)
    # An upload or a test image number is the user choosing that source: the radio follows, so what is scored is
    # what was just given (a newcomer uploaded an image and had test image 0 scored).
    upload.upload(lambda: "uploaded image", None, source, api_name=False)
    index.input(lambda: "test image", None, source, api_name=False)
    sample_checkpoint.input(lambda: "a sample", None, source, api_name=False)
    return [checkpoints, sample_checkpoint]
