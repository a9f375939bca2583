"""Image editing (editing.py, edits.py): SDEdit, RePaint against diffusers' RePaintPipeline, class swap by
inversion, every family, and one sentence for each bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_diffusers_folder, write_tiny_checkpoints

from diffusion.core.editing import repaint_nfe, repaint_positions
from diffusion.serving.edits import EditRequest, run_edit, strength_log_snr
from diffusion.serving.engine import FlowRequest, ModelCache, RequestError, SampleRequest, run_request
from diffusion.core.sampling import image_generators
from diffusion.core.schedules import Schedule, time_grid
from diffusion.serving.studies import encode_image

SIZE = 8


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edit") / "checkpoints"
    write_tiny_checkpoints(folder, image_size=SIZE)
    write_tiny_checkpoints(folder / "x0", parameterization="x0", schedule="vp-linear", image_size=SIZE)
    (folder / "x0" / "tiny.safetensors").rename(folder / "tiny-x0.safetensors")
    return ModelCache(folder, device="cpu")


def picture(channels=1, size=SIZE, seed=3):
    """A smooth test image in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    return torch.tanh(torch.nn.functional.avg_pool2d(torch.randn(1, channels, size + 2, size + 2, generator=g), 3,
                                                     stride=1) * 2)


def centre_mask(size=SIZE):
    mask = torch.zeros(size, size)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    return mask


def base(checkpoint="tiny", **changes):
    fields = dict(checkpoint=checkpoint, sampler="ddim", steps=8, class_index=1, scale=2.0, batch_size=3, seed=7)
    return SampleRequest(**{**fields, **changes})


# --- SDEdit ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("checkpoint", ["tiny", "tiny-flow", "tiny-x0"])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "ode"])
def test_strength_zero_is_the_input_and_strength_one_is_plain_generation(cache, checkpoint, sampler):
    image = picture()
    request = base(checkpoint, sampler=sampler)
    kept = run_edit(cache, EditRequest("sdedit", request, strength=0.0), image)
    assert kept.nfe == 0 and torch.equal(kept.images, image.expand(3, -1, -1, -1))
    anew = run_edit(cache, EditRequest("sdedit", request, strength=1.0), image)
    assert torch.equal(anew.images, run_request(cache, request).images)


def test_sdedit_keeps_more_of_the_input_at_lower_strength_and_is_deterministic(cache):
    image = picture()
    distances = []
    for strength in (0.1, 0.4, 0.7, 1.0):
        result = run_edit(cache, EditRequest("sdedit", base(), strength=strength), image)
        distances.append(float((result.images - image).pow(2).mean()))
        assert result.nfe == 8  # all the steps spent between t0 and 0
    assert distances == sorted(distances) and distances[0] < 0.5 * distances[-1]
    again = run_edit(cache, EditRequest("sdedit", base(), strength=0.4), image).images
    assert torch.equal(again, run_edit(cache, EditRequest("sdedit", base(), strength=0.4), image).images)


def test_sdedit_start_is_the_forward_process_at_t0(cache):
    image, request = picture(), base(batch_size=2)
    result = run_edit(cache, EditRequest("sdedit", request, strength=0.5), image)
    schedule = cache.get("tiny").schedule
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(0.5, dtype=torch.float64)))
    noise = torch.stack([torch.randn(1, SIZE, SIZE, generator=g) for g in image_generators(7, 2)])
    assert torch.allclose(result.start, alpha * image + sigma * noise, atol=1e-6)
    assert strength_log_snr(schedule, 0.5) == pytest.approx(2 * np.log(alpha / sigma), abs=1e-6)


def test_partial_grid_starts_at_t0_with_every_spacing():
    schedule = Schedule("vp-cosine")
    uniform = time_grid(schedule, 4, "uniform", t_start=0.5)
    assert torch.allclose(uniform, torch.tensor([0.5, 0.375, 0.25, 0.125, 0.0], dtype=torch.float64))
    log_snr = time_grid(schedule, 5, "log-snr", t_start=0.5)
    assert float(log_snr[0]) == 0.5 and float(log_snr[-1]) == 0 and bool((log_snr.diff() < 0).all())
    steps = schedule.log_snr(log_snr[1:-1]).diff()
    assert torch.allclose(steps, steps[0].expand_as(steps), atol=1e-6)  # evenly spaced in log-SNR
    assert torch.equal(time_grid(schedule, 7, "log-snr"), time_grid(schedule, 7, "log-snr", t_start=1.0))


# --- RePaint --------------------------------------------------------------------------------------
def test_jump_schedule_walks_down_with_jumps_back_up():
    positions = repaint_positions(10, 2, 3)
    moves = np.diff([0, *positions])
    assert set(moves.tolist()) == {1, -1} and positions[-1] == 10
    # jumps at levels 0, 2, 4, 6 (not 8: the last jump_length levels), each twice, each 2 up and 2 down again
    assert repaint_nfe(10, 2, 3) == 10 + 4 * 2 * 2 == int((moves == 1).sum())
    assert repaint_positions(10, 2, 1) == list(range(1, 11))  # resamplings 1: no jumps


@pytest.mark.parametrize("checkpoint", ["tiny", "tiny-flow", "tiny-x0"])
def test_repaint_keeps_the_known_region_exactly_and_paints_the_rest(cache, checkpoint):
    image, mask = picture(), centre_mask()
    request = EditRequest("repaint", base(checkpoint, steps=6), jump_length=2, resamplings=2)
    result = run_edit(cache, request, image, mask)
    kept = (mask == 0).expand_as(result.images)
    assert torch.equal(result.images[kept], image.expand_as(result.images)[kept])
    assert float((result.images - image).abs()[~kept].mean()) > 0.05
    assert result.nfe == repaint_nfe(6, 2, 2)


@pytest.mark.parametrize("eta", [1.0, 0.0])
def test_repaint_equals_diffusers_repaint_pipeline(tmp_path, eta):
    """One training step per grid step (50 of 50), the only setting in which diffusers' re-noising is the
    forward process q(x_t | x_s): with N // steps = n > 1 its undo_step draws n noises with betas[t_last + i],
    i < n, an interval n - 1 training steps above the one crossed. Its per-step noise comes from the first
    generator of the list, so each image is compared with a one-image run of its own generator."""
    diffusers = pytest.importorskip("diffusers")
    steps, jump_length, resamplings = 50, 5, 3
    folder, unet, scheduler = write_diffusers_folder(tmp_path / "peer", channels=3, num_train_timesteps=steps)
    cache = ModelCache(tmp_path, device="cpu")
    image, mask = picture(channels=3, size=16), centre_mask(16)
    request = EditRequest("repaint", SampleRequest(checkpoint="peer", steps=steps, guidance="none", class_index=None,
                                                   batch_size=2, seed=5, clip_x0=False),
                          jump_length=jump_length, resamplings=resamplings, eta=eta)
    ours = run_edit(cache, request, image, mask).images
    pipe = diffusers.RePaintPipeline(unet=unet, scheduler=diffusers.RePaintScheduler.from_config(scheduler.config,
                                                                                                 clip_sample=False))
    pipe.set_progress_bar_config(disable=True)
    for index, generator in enumerate(image_generators(5, 2)):
        with torch.no_grad():
            theirs = pipe(image=image, mask_image=1 - mask[None, None], num_inference_steps=steps, eta=eta,
                          jump_length=jump_length, jump_n_sample=resamplings, generator=[generator],
                          output_type="np").images[0]
        mine = (ours[index] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).numpy()
        assert np.abs(mine - theirs).max() < 1e-4  # measured: 3.9e-6 at eta 1, 2.0e-6 at eta 0
        assert theirs.std() > 0.05


# --- class swap -----------------------------------------------------------------------------------
@pytest.mark.parametrize("checkpoint", ["tiny", "tiny-flow"])
def test_swap_to_the_same_class_is_the_families_round_trip(cache, checkpoint):
    image = picture()
    request = EditRequest("swap", base(checkpoint, guidance="none", batch_size=1, steps=10), source_class=1)
    result = run_edit(cache, request, image)
    inversion = encode_image(cache, [checkpoint], image, 1, step_counts=(10,))[0]
    assert torch.equal(result.images[0], inversion.reconstructions[0].image.clamp(-1, 1))
    assert torch.equal(result.start[0], inversion.latent)
    assert result.nfe == 20


def test_swap_changes_what_the_class_changes_and_nice_is_exact(cache):
    image = picture()
    swapped = run_edit(cache, EditRequest("swap", base(batch_size=1, class_index=2), source_class=1), image)
    same = run_edit(cache, EditRequest("swap", base(batch_size=1, class_index=1, guidance="none"), source_class=1),
                    image)
    assert float((swapped.images - same.images).abs().max()) > 1e-3
    nice = FlowRequest(checkpoint="tiny-nice", class_index=1, batch_size=1)
    exact = run_edit(cache, EditRequest("swap", nice, source_class=1), image)
    assert float((exact.images - image).abs().max()) < 1e-4  # encode then decode with the same class


def test_nice_sdedit_mixes_the_latent(cache):
    image = picture()
    nice = FlowRequest(checkpoint="tiny-nice", class_index=1, batch_size=2, seed=3)
    assert torch.equal(run_edit(cache, EditRequest("sdedit", nice, strength=0.0), image).images,
                       image.expand(2, -1, -1, -1))
    assert torch.allclose(run_edit(cache, EditRequest("sdedit", nice, strength=1.0), image).images,
                          run_request(cache, nice).images)
    near = run_edit(cache, EditRequest("sdedit", nice, strength=0.2), image).images
    far = run_edit(cache, EditRequest("sdedit", nice, strength=0.8), image).images
    assert float((near - image).abs().mean()) < float((far - image).abs().mean())


# --- one sentence per bad input -------------------------------------------------------------------
@pytest.mark.parametrize("mask, message", [
    (torch.ones(5, 5), "the mask is 5x5 pixels; the image is 8x8"),
    (torch.zeros(SIZE, SIZE), "the mask is empty"),
    (torch.ones(SIZE, SIZE), "covers the whole image"),
    (torch.full((SIZE, SIZE), 0.5), "0 \\(keep\\) or 1 \\(paint\\)"),
    (None, "inpainting needs a mask"),
])
def test_bad_masks_get_one_sentence(cache, mask, message):
    with pytest.raises(RequestError, match=message):
        run_edit(cache, EditRequest("repaint", base()), picture(), mask)


@pytest.mark.parametrize("request_, image, message", [
    (EditRequest("sdedit", base(), strength=1.5), picture(), "strength must be between 0.0 and 1.0, got 1.5"),
    (EditRequest("sdedit", base(), strength=float("nan")), picture(), "strength must be finite"),
    (EditRequest("blur", base()), picture(), "unknown edit method 'blur'"),
    (EditRequest("sdedit", base()), picture(channels=3), "shape \\(1, 3, 8, 8\\); this checkpoint edits \\(1, 8, 8\\)"),
    (EditRequest("sdedit", base()), picture() * 3, "finite and in \\[-1, 1\\]"),
    (EditRequest("sdedit", base()), None, "needs an input image"),
    (EditRequest("repaint", FlowRequest(checkpoint="tiny-nice", class_index=1)), picture(), "no exact counterpart"),
    (EditRequest("repaint", base(), jump_length=0), picture(), "jump length must be between 1 and 50"),
    (EditRequest("swap", base(), source_class=9), picture(), "source class must be between 0 and"),
])
def test_bad_requests_get_one_sentence(cache, request_, image, message):
    with pytest.raises(RequestError, match=message):
        run_edit(cache, request_, image, centre_mask())


# --- every family: a DiT and a user's colour diffusers folder ----------------------------------------
@pytest.fixture(scope="module")
def more_families(tmp_path_factory):
    from test_dit import tiny_dit

    from diffusion.formats.checkpoint import model_config, save_checkpoint

    folder = tmp_path_factory.mktemp("families")
    dit = tiny_dit()
    save_checkpoint(folder / "dit.safetensors", "denoiser", dit,
                    model_config("denoiser", dit, class_names=("a", "b", "c"),
                                 schedule="flow", parameterization="flow"), {"steps": 0}, "A tiny DiT.")
    write_diffusers_folder(folder / "colour", channels=3, size=16)
    return ModelCache(folder, device="cpu")


@pytest.mark.parametrize("method", ["sdedit", "repaint", "swap"])
@pytest.mark.parametrize("checkpoint, channels, size, classes", [("dit", 1, 8, 1), ("colour", 3, 16, None)])
def test_every_method_edits_a_dit_and_a_colour_diffusers_model(more_families, method, checkpoint, channels, size,
                                                             classes):
    image = picture(channels=channels, size=size)
    guided = dict(class_index=classes, guidance="cfg" if classes is not None else "none")
    request = EditRequest(method, base(checkpoint, steps=4, batch_size=2, **guided), jump_length=2, resamplings=2,
                          source_class=classes)
    result = run_edit(more_families, request, image, centre_mask(size))
    assert result.images.shape == (2, channels, size, size) and bool(torch.isfinite(result.images).all())
    assert float((result.images - image).abs().mean()) > 0  # it did something
    if method == "repaint":
        kept = (centre_mask(size) == 0).expand_as(result.images)
        assert torch.equal(result.images[kept], image.expand_as(result.images)[kept])
