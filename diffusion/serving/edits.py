"""Edit requests: an image (and for inpainting a mask) plus one generation request, run by editing.py's methods.

    EditRequest(method, base, strength, ...)   base: the SampleRequest (denoisers) or FlowRequest (normalizing
                                               flows) whose checkpoint, sampler, steps, guidance, target class,
                                               seed and batch size the edit uses
    run_edit(cache, request, image, mask)      -> EditResult: the edited images and the noised start

The input image is (C, H, W) or (1, C, H, W) in [-1, 1], the same for every image of the batch, whose variations
come from the per-image noise of (seed, index), as in generation; or (B, C, H, W), one input per image (the
evaluation edits many test images at once), and likewise the mask. The mask is (H, W) in {0, 1}: 1 where the
model paints, 0 where the input is kept (what AUTOMATIC1111 and ComfyUI call the inpainting mask).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from .budget import Work
from ..core.denoiser import Denoiser
from ..core.editing import mix_latent, repaint, repaint_nfe, sdedit_start, swap_class
from .engine import (FlowRequest, ModelCache, Preview, Progress, RequestError, SampleRequest, _autocast, _check_number,
                     _finite, _labels, _sampling_failures, _starting_noise, check_work, clip_x0,
                     expected_nfe, guidance_of, image_shape, load_for, prepare, request_work, self_conditioning,
                     validate_flow_request)
from ..core.sampling import SAMPLERS, image_generators
from ..core.schedules import Schedule, time_grid

EDIT_METHODS = {
    "sdedit": "image-to-image (SDEdit)",
    "repaint": "inpainting (RePaint)",
    "swap": "class swap by inversion",
}
MAX_JUMP = 50
MAX_RESAMPLINGS = 20


@dataclass(frozen=True)
class EditRequest:
    method: str = "sdedit"  # one of EDIT_METHODS
    base: SampleRequest | FlowRequest = SampleRequest()  # checkpoint, sampler, steps, guidance, target class, seed
    strength: float = 0.6  # sdedit: t0 on the checkpoint's own time axis (0 keeps the input, 1 generates anew)
    jump_length: int = 10  # repaint: levels per jump back (Lugmayr et al. 2022: 10)
    resamplings: int = 10  # repaint: passes over each jump (1: no resampling, the plain replacement sampler)
    eta: float = 1.0  # repaint: 1 the DDPM posterior step of the paper, 0 deterministic DDIM for the painted part
    source_class: int | None = None  # swap: the input's own class, used for the inversion (None: unconditional)


@dataclass
class EditResult:
    images: torch.Tensor  # (B, C, H, W) in [-1, 1], on the CPU
    start: torch.Tensor  # (B, C, H, W): what the edit started from (SDEdit's x_t0, the inverted noise, ...)
    nfe: int
    seconds: float
    request: EditRequest
    checkpoint_sha256: str = ""
    class_names: tuple = ()


def strength_log_snr(schedule: Schedule, strength: float) -> float:
    """The log-SNR of SDEdit's start t0 = strength (+inf at 0: the image itself)."""
    return float(schedule.log_snr(torch.tensor(float(strength), dtype=torch.float64)))


# --- validation -----------------------------------------------------------------------------------
def edit_image(image, shape: tuple[int, int, int], batch: int = 1) -> torch.Tensor:
    """The input as (1, C, H, W) (or one per image of the batch, (B, C, H, W)) float in [-1, 1], or a RequestError
    saying what is wrong with it."""
    if not isinstance(image, torch.Tensor):
        raise RequestError("the edit needs an input image")
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] not in (1, batch) or tuple(image.shape[1:]) != shape:
        raise RequestError(f"the input image has shape {tuple(image.shape)}; this checkpoint edits {shape} images "
                           f"(channels, height, width)")
    image = image.float()
    if not bool(torch.isfinite(image).all()) or float(image.abs().max()) > 1:
        raise RequestError("the input image's values must be finite and in [-1, 1]")
    return image


def paint_mask(mask, shape: tuple[int, int, int], batch: int = 1) -> torch.Tensor:
    """The inpainting mask as (1, 1, H, W) (or one per image, (B, 1, H, W)) with 1 = paint, or one sentence on why it
    cannot be used."""
    if not isinstance(mask, torch.Tensor):
        raise RequestError("inpainting needs a mask: paint the region the model should fill")
    height, width = shape[1:]
    mask = mask.float()
    if mask.ndim == 2:
        mask = mask[None, None]
    if mask.ndim != 4 or mask.shape[0] not in (1, batch) or mask.shape[1] != 1 or tuple(mask.shape[2:]) != (height, width):
        found = "x".join(str(n) for n in mask.shape[-2:]) if mask.ndim >= 2 else str(tuple(mask.shape))
        raise RequestError(f"the mask is {found} pixels; the image is {height}x{width}: paint on the image itself")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise RequestError("the mask must be 0 (keep) or 1 (paint) in every pixel; it has values in between")
    painted = mask.flatten(1).sum(1)
    if bool((painted == 0).any()):
        raise RequestError("the mask is empty: paint the region the model should fill")
    if bool((painted == height * width).any()):
        raise RequestError("the mask covers the whole image, so nothing of the input is kept: use Generate, or "
                           "image-to-image at strength 1")
    return mask


def validate_edit(request: EditRequest, model) -> None:
    if request.method not in EDIT_METHODS:
        raise RequestError(f"unknown edit method {request.method!r:.40}; choose one of {', '.join(EDIT_METHODS)}")
    _check_number("strength", request.strength, 0.0, 1.0)
    if model.kind == "normalizing-flow":
        if request.method == "repaint":
            raise RequestError(f"checkpoint {model.name!r:.60} is a normalizing flow: inpainting has no exact "
                               f"counterpart there (its latent mixes every pixel, so the kept ones cannot be held "
                               f"fixed); use a denoiser")
        validate_flow_request(request.base, model)
    if request.method == "repaint":
        _check_number("jump length", request.jump_length, 1, MAX_JUMP, integer=True)
        _check_number("resamplings", request.resamplings, 1, MAX_RESAMPLINGS, integer=True)
        _check_number("eta", request.eta, 0.0, 1.0)
    if request.method == "sdedit" and model.kind == "denoiser" and request.base.spacing == "leading" \
            and 0 < request.strength < 1:
        raise RequestError("'leading' spacing is diffusers' fixed timesteps from pure noise; image-to-image below "
                           "strength 1 takes 'uniform' or 'uniform in log-SNR' spacing")
    if request.method == "swap" and request.source_class is not None:
        _check_number("source class", request.source_class, 0, max(len(model.class_names) - 1, 0), integer=True)
        if not model.class_names:
            raise RequestError(f"checkpoint {model.name!r:.60} is unconditional: it has no classes to swap")


def edit_nfe(request: EditRequest) -> int:
    """Network evaluations per image (a flow's exact passes count as one each)."""
    base = request.base
    if isinstance(base, FlowRequest):
        return 2  # encode, decode
    if request.method == "sdedit":
        return 0 if request.strength == 0 else expected_nfe(base)
    if request.method == "repaint":
        return repaint_nfe(int(base.steps), int(request.jump_length), int(request.resamplings))
    return 2 * int(base.steps)  # swap: inversion, then decoding


def edit_work(cache: ModelCache, request: EditRequest, model) -> Work:
    """The edit's cost: the base request's per-evaluation cost times the edit's evaluations."""
    base = request.base
    per_evaluation = request_work(cache, replace(base, steps=1, sampler="ddim") if isinstance(base, SampleRequest)
                                  else base, model)
    return per_evaluation * edit_nfe(request)


# --- running --------------------------------------------------------------------------------------
def run_edit(cache: ModelCache, request: EditRequest, image: torch.Tensor, mask: torch.Tensor | None = None,
             progress: Progress | None = None, preview: Preview | None = None) -> EditResult:
    """Run one edit. RequestError for bad input (said in one sentence), SamplingError for a failure while running."""
    base = request.base
    model = load_for(cache, base)
    classifier = guide = None
    if model.kind == "denoiser":
        model, classifier, guide = prepare(cache, base, model)
    validate_edit(request, model)
    shape = image_shape(model)
    image = edit_image(image, shape, int(base.batch_size))
    keep = 1 - paint_mask(mask, shape, int(base.batch_size)) if request.method == "repaint" else None
    check_work(cache, [], "this edit", extra=edit_work(cache, request, model))
    device, batch = cache.device, int(base.batch_size)
    generators = image_generators(int(base.seed), batch, int(base.first_index))
    started = time.perf_counter()
    with _sampling_failures("editing"), torch.inference_mode(), _autocast(device):
        x = image.to(device).expand(batch, *shape)
        if model.kind == "normalizing-flow":
            images, start, nfe = _edit_flow(request, model, x, generators, device)
        else:
            denoise = Denoiser(model.network, model.schedule, model.parameterization, labels=_labels(base, device),
                               guidance=guidance_of(base), classifier=classifier.network if classifier else None,
                               guide=(guide.network, guide.parameterization) if guide else None,
                               self_condition=self_conditioning(base, model), clip_x0=clip_x0(base, model))
            images, start, nfe = _edit_denoiser(request, model, x, keep, denoise, generators, device, progress,
                                                 preview)
        images = _finite(images.float(), base).clamp(-1, 1).cpu()
    return EditResult(images, start.float().cpu(), nfe, time.perf_counter() - started, request, model.sha256,
                      model.class_names)


def _reporting(progress: Progress | None, total: int):
    """Wraps denoisers so that every network evaluation of the edit, whichever denoiser makes it, is reported as
    progress(done, total)."""
    done = [0]

    def wrap(denoise):
        if progress is None:
            return denoise

        def counted(x_t, t):
            out = denoise(x_t, t)
            done[0] += 1
            progress(done[0], total)
            return out

        return counted

    return wrap


def _edit_denoiser(request, model, x, keep, denoise, generators, device, progress, preview):
    """(images, start, network evaluations) of an edit with a denoiser."""
    base, schedule = request.base, model.schedule
    counted = _reporting(progress, edit_nfe(request))

    def callback(step, t, x_t, x0_hat):
        if preview:
            preview(step, t, x_t, x0_hat)

    noise = _starting_noise(base, model, None, device, generators)  # every method's first draw, as generation's x_T
    if request.method == "sdedit":
        strength = float(request.strength)
        if strength == 0:
            return x.clone(), x.clone(), 0
        if strength == 1:  # plain generation: the same x_T, whatever alpha_1 the schedule leaves of the input
            start = noise
        else:
            alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(strength, dtype=torch.float64)))
            start = sdedit_start(x, noise, alpha, sigma)
        grid = time_grid(schedule, int(base.steps), base.spacing, t_start=strength)
        options = {name: getattr(base, name) for name in SAMPLERS[base.sampler].options}
        images = SAMPLERS[base.sampler].sample(counted(denoise), start, grid, schedule=schedule, generators=generators,
                                               callback=callback, **options)
        return images, start, denoise.nfe
    grid = time_grid(schedule, int(base.steps), base.spacing)
    if request.method == "repaint":
        images = repaint(counted(denoise), noise, x, keep.to(device), grid, schedule=schedule, generators=generators,
                         jump_length=int(request.jump_length), resamplings=int(request.resamplings),
                         eta=float(request.eta), callback=callback)
        return images, noise, denoise.nfe
    source = None if request.source_class is None else torch.full((len(x),), int(request.source_class), device=device)
    invert = Denoiser(model.network, schedule, model.parameterization, labels=source, clip_x0=clip_x0(base, model))
    latent, images = swap_class(counted(invert), counted(denoise), x, grid, schedule=schedule,
                                parameterization=model.parameterization, callback=callback)
    return images, latent, invert.nfe + denoise.nfe


def _edit_flow(request, model, x, generators, device):
    """(images, start, passes) of an edit with a normalizing flow: exact encode, then SDEdit's latent mix or a
    decode with the target class. Strength 0 is the input itself; strength 1 decodes the seed's noise alone."""
    base = request.base
    target = _labels(base, device)
    own = None if request.source_class is None else torch.full((len(x),), int(request.source_class), device=device)
    source = target if request.method == "sdedit" else own
    if request.method == "sdedit" and float(request.strength) == 0:
        return x.clone(), x.clone(), 0
    noise = float(base.temperature) * _starting_noise(base, model, None, device, generators)
    if request.method == "sdedit" and float(request.strength) == 1:
        return model.network.decode(noise, target), noise, 1
    latent = model.network.encode(x, source)
    if request.method == "sdedit":
        latent = mix_latent(latent, noise, float(request.strength))
    return model.network.decode(latent, target), latent, 2
