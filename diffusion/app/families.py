"""The Families tab: one Gaussian noise through every kind of model, latent walks, and encoding an image.

Flows and diffusion models both map N(0, I) to data: NICE in one exact pass, the diffusion and flow-matching
models by integrating their probability-flow ODE. Feeding them the same noise shows it in one picture.
"""

from __future__ import annotations

from functools import lru_cache, partial

import gradio as gr
import torch

from ..formats.data import DataError, FASHION_MNIST_DIR, load_fashion_mnist, to_model_range
from ..serving.backend import backend_for
from ..serving.engine import GENERATIVE_KINDS, ModelCache, RequestError, check_seed, image_shape
from ..core.sampling import ODE_SOLVERS
from ..serving.studies import INVERSION_STEPS, MAX_FAMILY_COLUMNS, MAX_WALK_FRAMES, family_requests, walk_noise
from .common import SINGLE_PX, grid_pil, pil_images, save_gif, save_png, stream_result, user_error, widget_class, widget_names, widget_number
from .controls import run_and_stop, settle_run

INTRO = """**Same noise, three families.** A normalizing flow (NICE) turns Gaussian noise into an image in one exact,
invertible pass; a diffusion model and a rectified flow do it by integrating their probability-flow ODE. Give them
*the same* noise and compare: every row below starts from identical x_T (NICE decodes T x_T)."""


def _table(columns) -> str:
    rows = ["| row | checkpoint | family | how | NFE | time |", "|---|---|---|---|---|---|"]
    for row, c in enumerate(columns, 1):
        family = "normalizing flow" if c.kind == "normalizing-flow" else "ODE model"
        rows.append(f"| {row} | `{c.checkpoint}` | {family} | {c.how} | {c.result.nfe} | {c.result.seconds:.2f} s |")
    return "\n".join(rows)


@lru_cache(maxsize=1)
def _test_set():
    return load_fashion_mnist("test")


def test_image(index) -> tuple[torch.Tensor, int]:
    """Fashion-MNIST test image `index` as (1, 1, 28, 28) in [-1, 1], and its label."""
    index = widget_number(index, "test image", int)
    try:
        test = _test_set()
    except DataError:
        raise RequestError(f"the Fashion-MNIST test set is not installed (looked in {FASHION_MNIST_DIR}); install "
                           f"Debian's package with `apt install dataset-fashion-mnist` and restart the app") from None
    if not 0 <= index < len(test):
        raise RequestError(f"test image must be between 0 and {len(test) - 1}, got {index}")
    return to_model_range(test.images[index:index + 1]), int(test.labels[index])


# --- handlers (the backend is passed in) -------------------------------------------------------
def run_same_noise(cache: ModelCache, checkpoints, class_index, seed, batch_size, steps, solver, scale, temperature,
                   progress=gr.Progress()):
    try:
        requests = family_requests(cache, widget_names(checkpoints, "checkpoints"), class_index=widget_class(class_index),
                                   seed=widget_number(seed, "seed", int), batch_size=widget_number(batch_size, "images", int),
                                   steps=widget_number(steps, "ODE steps", int), solver=str(solver),
                                   scale=widget_number(scale, "guidance scale"),
                                   temperature=widget_number(temperature, "temperature"))
    except RequestError as error:
        raise user_error(error) from None
    columns = yield from _run(lambda emit: backend_for(cache).same_noise(requests, progress=lambda i, d, t: emit((i, d, t))),
                              progress, len(requests), outputs=3, limit_seconds=cache.budget.seconds)
    per_row = requests[0].batch_size  # one row per model: each column is one noise through every model
    everything = torch.cat([c.result.images for c in columns])
    yield (grid_pil(everything, per_row), _table(columns),
           save_png(everything, per_row, "same-noise"))


def run_latent_walk(cache: ModelCache, checkpoints, class_index, seed_a, seed_b, frames, steps, solver, scale,
                    temperature, progress=gr.Progress()):
    try:
        frames = widget_number(frames, "frames", int)
        requests = family_requests(cache, widget_names(checkpoints, "checkpoints"), class_index=widget_class(class_index), seed=0,
                                   batch_size=frames, steps=widget_number(steps, "ODE steps", int), solver=str(solver),
                                   scale=widget_number(scale, "guidance scale"),
                                   temperature=widget_number(temperature, "temperature"))
        shape = image_shape(cache.get(requests[0].checkpoint))
        x_T = walk_noise(shape, check_seed(widget_number(seed_a, "seed A", int), "seed A"),
                         check_seed(widget_number(seed_b, "seed B", int), "seed B"), frames)
    except RequestError as error:
        raise user_error(error) from None
    columns = yield from _run(lambda emit: backend_for(cache).same_noise(requests, x_T=x_T, progress=lambda i, d, t: emit((i, d, t))),
                              progress, len(requests), outputs=3, limit_seconds=cache.budget.seconds)
    strip = torch.cat([c.result.images for c in columns])  # one row per model
    gif_frames = [grid_pil(torch.stack([c.result.images[k] for c in columns]), len(columns), SINGLE_PX)
                  for k in range(frames)]
    gif_frames += gif_frames[-2:0:-1]  # there and back
    caption = ("Rows, top to bottom: " + "; ".join(f"`{c.checkpoint}` ({c.how})" for c in columns)
               + f". Columns: spherical interpolation from seed {seed_a} to seed {seed_b} in {frames} frames.")
    yield grid_pil(strip, frames), caption, save_gif(gif_frames, "latent-walk")


def run_encode(cache: ModelCache, checkpoints, index, progress=gr.Progress()):
    """Generator: the inversions run in a worker, so Stop or a cancelled API call ends them at the next network
    evaluation (a plain function would keep the CPU busy after its slot was freed)."""
    try:
        image, label = test_image(index)
        names = widget_names(checkpoints, "checkpoints")
    except RequestError as error:
        raise user_error(error) from None
    inversions = yield from _run(lambda emit: backend_for(cache).encode_image(names, image, label,
                                                           progress=lambda i, d, t: emit((i, d, t))),
                                 progress, max(len(names), 1), outputs=2,
                                 limit_seconds=cache.budget.seconds)
    model = cache.get(inversions[0].checkpoint)
    class_name = model.class_names[label] if label < len(model.class_names) else str(label)
    gallery = [(pil_images(image)[0], f"test image {index}: {class_name}")]
    rows = ["| checkpoint | how | steps each way | NFE | max error | mean error | time |", "|---|---|---|---|---|---|---|"]
    for inv in inversions:
        # Latents are N(0, I)-like: shown as (z / 3) so that +-3 standard deviations fill the grey range.
        gallery.append((pil_images((inv.latent / 3)[None])[0], f"{inv.checkpoint}: latent (z / 3)"))
        for r in inv.reconstructions:
            how = "exact (NICE)" if inv.kind == "normalizing-flow" else "DDIM inversion + DDIM"
            steps = "exact" if inv.kind == "normalizing-flow" else str(r.steps)
            gallery.append((pil_images(r.image[None])[0], f"{inv.checkpoint}: decoded ({steps})"))
            rows.append(f"| `{inv.checkpoint}` | {how} | {steps} | {r.nfe} | {r.max_error:.2e} | {r.mean_error:.2e} | "
                        f"{r.seconds:.2f} s |")
    likelihoods = [f"`{inv.checkpoint}`: **{inv.bits_per_dim:.2f} bits/dim** (exact)" for inv in inversions
                   if inv.bits_per_dim is not None]
    text = "\n".join(rows) + ("\n\nLikelihood of this image: " + "; ".join(likelihoods) if likelihoods else "")
    yield gallery, text


def _run(work, progress, columns: int, outputs: int, limit_seconds: float):
    """Generator: the study's result, with no-op updates while it runs (points where it can be cancelled)."""
    def on_event(event):
        i, done, total = event
        if progress is not None:
            progress((i * 1000 + done * 1000 // max(total, 1), columns * 1000), desc=f"model {i + 1}/{columns}")

    return (yield from stream_result(work, on_event, outputs, limit_seconds=limit_seconds))


# --- layout -----------------------------------------------------------------------------------
def build_families_tab(cache: ModelCache, class_choices, sampling: dict) -> list:
    """The tab's widgets and events; call inside `with gr.Tab(...)`. Returns its three checkpoint pickers."""
    names = cache.names(*GENERATIVE_KINDS)
    preferred = [n for n in ("fashion-nice", "fashion-diffusion", "fashion-flow") if n in names]
    default = preferred or names[:3]
    first_class = class_choices[0][1] if class_choices else None

    def checkpoints_box():
        return gr.CheckboxGroup(names, value=default, label=f"Checkpoints (up to {MAX_FAMILY_COLUMNS})")

    def ode_controls():
        with gr.Row():
            steps = gr.Slider(1, 200, value=20, step=1, label="ODE steps (diffusion / flow models)")
            solver = gr.Dropdown(list(ODE_SOLVERS), value="dpm++2m", label="ODE solver")
            scale = gr.Slider(0, 15, value=1.0, step=0.25, label="CFG scale w (1 = conditional model)")
            temperature = gr.Slider(0, 2, value=1.0, step=0.05, label="NICE temperature T")
        return steps, solver, scale, temperature

    gr.Markdown(INTRO)
    with gr.Accordion("Same noise", open=True):
        with gr.Row():
            n_checkpoints = checkpoints_box()
            n_class = gr.Dropdown(class_choices, value=first_class, label="Class")
            n_seed = gr.Number(value=0, precision=0, label="Seed", minimum=0)
            n_batch = gr.Slider(1, 16, value=8, step=1, label="Images")
        n_steps, n_solver, n_scale, n_temperature = ode_controls()
        n_run, n_stop = run_and_stop("Decode the same noise")
        n_gallery = gr.Image(label="One row per model (see the table); each column is one noise", format="png",
                             interactive=False)
        n_table = gr.Markdown(label="Models table")
        n_file = gr.File(label="PNG (rows in the table's order)")
        decoding = n_run.click(partial(run_same_noise, cache),
                    [n_checkpoints, n_class, n_seed, n_batch, n_steps, n_solver, n_scale, n_temperature],
                    [n_gallery, n_table, n_file], api_name="same_noise", show_progress="minimal", **sampling)
        settle_run(decoding, [n_gallery, n_table, n_file], n_table, n_stop)

    with gr.Accordion("Latent walk", open=False):
        gr.Markdown("Walk on the sphere from one seed's noise to another's (spherical interpolation keeps the "
                    "noise's norm) and decode every step with every model: the flow is smooth by construction; "
                    "the ODE models are smooth too, because their map from noise to data is a continuous flow.")
        with gr.Row():
            w_checkpoints = checkpoints_box()
            w_class = gr.Dropdown(class_choices, value=first_class, label="Class")
            w_seed_a = gr.Number(value=0, precision=0, label="Seed A", minimum=0)
            w_seed_b = gr.Number(value=1, precision=0, label="Seed B", minimum=0)
            w_frames = gr.Slider(2, MAX_WALK_FRAMES, value=10, step=1, label="Frames")
        w_steps, w_solver, w_scale, w_temperature = ode_controls()
        w_run, w_stop = run_and_stop("Walk")
        w_strip = gr.Image(label="Filmstrip: one row per model", format="png", interactive=False)
        w_caption = gr.Markdown(label="Caption")
        w_gif = gr.File(label="Animated GIF")
        walking = w_run.click(partial(run_latent_walk, cache),
                    [w_checkpoints, w_class, w_seed_a, w_seed_b, w_frames, w_steps, w_solver, w_scale, w_temperature],
                    [w_strip, w_caption, w_gif], api_name="latent_walk", show_progress="minimal", **sampling)
        settle_run(walking, [w_strip, w_caption, w_gif], w_caption, w_stop)

    with gr.Accordion("Encode an image", open=False):
        installed = (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists()
        gr.Markdown("Encode a Fashion-MNIST test image into noise and decode it back. NICE is exactly invertible "
                    "(error ~1e-6, float rounding); the ODE models invert by integrating their probability-flow "
                    f"ODE from t = 0 to 1 (DDIM inversion) and back, with {', '.join(map(str, INVERSION_STEPS))} "
                    "steps each way: the error is the solver's, and it shrinks with the steps."
                    + ("" if installed else f"\n\n**The test set is not installed** (looked in `{FASHION_MNIST_DIR}`): "
                       "`apt install dataset-fashion-mnist`, then restart the app."))
        with gr.Row():
            e_checkpoints = checkpoints_box()
            e_index = gr.Number(value=0, precision=0, label="Test image (0-9999)", minimum=0, maximum=9999)
        e_run = gr.Button("Encode and decode", variant="primary", interactive=installed)
        e_gallery = gr.Gallery(label="Original, then per model: latent and reconstructions", columns=6,
                               format="png", height="auto")
        e_table = gr.Markdown(label="Reconstruction errors")
        encoding = e_run.click(partial(run_encode, cache), [e_checkpoints, e_index], [e_gallery, e_table],
                               api_name="encode", show_progress="minimal", **sampling)
        settle_run(encoding, [e_gallery, e_table], e_table)
    return [n_checkpoints, w_checkpoints, e_checkpoints]
