"""What the app's tabs compute, with no UI: sampler comparisons, guidance sweeps, trajectories, and the
families views (one noise through several kinds of model, latent walks, encode and decode).

Each study is a set of engine requests sharing a seed, so every column/row starts from the same noise
and draws the same per-step noise stream (image i of seed s always uses generator (s, i)).
"""

from __future__ import annotations

import platform
import time
from dataclasses import asdict, dataclass, replace

import torch

from ..formats.data import to_uint8
from ..core.denoiser import Denoiser
from ..formats.model_build import LoadedModel
from .budget import Work
from .engine import (GENERATIVE_KINDS, FlowRequest, ModelCache, RequestError, SampleRequest, SampleResult, check_request,
                     check_work, image_shape, run_request)
from ..core.guidance import GUIDANCE_METHODS
from ..core.likelihood import model_log_likelihood, uniform_dequantize
from ..core.metrics import evaluator_outputs, mean_pairwise_distance
from ..core.sampling import draw_noise, image_generators, invert_ddim, sample_ddim, slerp
from ..core.schedules import time_grid
from ..core.straightness import readout_from_trajectory

MAX_SWEEP_SCALES = 8


# --- compare samplers -------------------------------------------------------------------------
def compare_samplers(cache: ModelCache, requests: list[SampleRequest], progress=None) -> tuple[list[SampleResult], dict]:
    """Run the same seed through several sampler settings; returns results and a reproducibility manifest."""
    seeds = {(r.checkpoint, r.seed, r.batch_size, r.class_index) for r in requests}
    if len(seeds) != 1:
        raise RequestError("a comparison needs the same checkpoint, seed, batch size and class in every column")
    model = pinned_model(cache, requests, "this comparison")
    results = []
    for index, request in enumerate(requests):
        step_progress = (lambda done, total, i=index: progress(i, done, total)) if progress else None
        results.append(run_request(cache, request, progress=step_progress, model=model))
    return results, comparison_manifest(cache, results, model)


def pinned_model(cache: ModelCache, requests: list, what: str = "this study") -> LoadedModel:
    """Load a study's checkpoint once and validate every cell against it, and their total work against the
    budget, before any sampling starts: a file replaced mid-study cannot mix two models, and a bad last cell or an
    hour of work fails at once, not minutes in."""
    model = cache.get(requests[0].checkpoint)
    for request in requests:
        check_request(cache, request, model)
    check_work(cache, requests, what, model=model)
    return model


def comparison_manifest(cache: ModelCache, results: list[SampleResult], model: LoadedModel) -> dict:
    return {
        "what": "diffusion-playground sampler comparison",
        "checkpoint": {"file": model.path.name, "sha256": model.sha256},  # the bytes that were sampled
        "columns": [{"request": asdict(r.request), "nfe": r.nfe, "seconds": round(r.seconds, 3)} for r in results],
        "noise": "image i uses a CPU torch.Generator seeded from sha256(f'{seed}:{i}'); x_T and every "
                 "per-step noise draw come from it, in step order",
        "device": str(cache.device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "reproduce": "python -m diffusion sample --checkpoint FILE --sampler S --steps N ... with the request fields above",
    }


def difference_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-pixel |a - b| averaged over channels, (B, 1, H, W), in image units (data range [-1, 1] gives 0..2)."""
    return (a - b).abs().mean(dim=1, keepdim=True)


# --- guidance sweep ---------------------------------------------------------------------------
@dataclass
class SweepRow:
    mode: str
    scale: float
    result: SampleResult
    confidence: float | None  # evaluator's mean probability of the requested class
    accuracy: float | None  # share of images the evaluator assigns to the requested class
    diversity: float  # mean pairwise distance (evaluator features, or pixels without an evaluator)


def guidance_sweep(cache: ModelCache, base: SampleRequest, scales: list[float], methods: list[str],
                   progress=None) -> list[SweepRow]:
    """One row per (guidance method, scale); methods are names in guidance.GUIDANCE_METHODS."""
    if not scales or len(scales) > MAX_SWEEP_SCALES:
        raise RequestError(f"give between 1 and {MAX_SWEEP_SCALES} guidance scales")
    if not methods:
        raise RequestError("choose at least one guidance method")
    unknown = [m for m in methods if m not in GUIDANCE_METHODS]
    if unknown:
        raise RequestError(f"unknown guidance method {unknown[0]!r:.40}; choose from {', '.join(GUIDANCE_METHODS)}")
    requests = [replace(base, **GUIDANCE_METHODS[method].settings, scale=float(scale))
                for method in methods for scale in scales]
    names = [method for method in methods for _ in scales]
    model = pinned_model(cache, requests, "this sweep")
    evaluator = cache.first_of_kind("evaluator")
    rows, total = [], len(requests)
    for method, request in zip(names, requests):
        index = len(rows)
        step_progress = (lambda done, steps, i=index: progress(i, total, done, steps)) if progress else None
        result = run_request(cache, request, progress=step_progress, trace_guidance=True, model=model)
        confidence, accuracy, diversity = class_confidence_and_diversity(evaluator, result.images, base.class_index)
        rows.append(SweepRow(method, float(request.scale), result, confidence, accuracy, diversity))
    return rows


def class_confidence_and_diversity(evaluator: LoadedModel | None, images: torch.Tensor, class_index):
    """(mean probability of the class, share assigned to it, mean pairwise feature distance) by the evaluator;
    without an evaluator (or a class) the first two are None and diversity is measured in pixels."""
    if evaluator is None or image_shape(evaluator) != tuple(images.shape[1:]):
        return None, None, mean_pairwise_distance(images.flatten(1))
    probs, features = evaluator_outputs(evaluator.network, images)
    if class_index is None:
        return None, None, mean_pairwise_distance(features)
    labels = torch.full((len(probs),), int(class_index))
    return (float(probs[:, int(class_index)].mean()), float((probs.argmax(1) == labels).float().mean()),
            mean_pairwise_distance(features))


MAX_SCALES_TEXT = 1000  # characters; MAX_SWEEP_SCALES numbers need far fewer


def parse_scales(text: str) -> list[float]:
    """'0, 1, 2.5, 4' -> [0.0, 1.0, 2.5, 4.0], with a clear error for anything else."""
    text = str(text)
    if len(text) > MAX_SCALES_TEXT:
        raise RequestError(f"the guidance scales are {len(text):,} characters long; at most {MAX_SCALES_TEXT:,}")
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        scales = [float(p) for p in parts]
    except ValueError as error:
        raise RequestError(f"guidance scales must be numbers separated by commas, got {text[:60]!r}") from error
    if not scales or len(scales) > MAX_SWEEP_SCALES:
        raise RequestError(f"give between 1 and {MAX_SWEEP_SCALES} guidance scales, got {len(scales)}")
    return scales


# --- trajectory -------------------------------------------------------------------------------
def trajectory(cache: ModelCache, request: SampleRequest, frames: int, progress=None):
    """One image's (t, log-SNR, x_t, x0_hat) at `frames` steps spread over the run, last step included, and the
    path's straightness (straightness.PathReadout; exact for DDIM and ODE-Euler, each step's first evaluation for
    other samplers; None for annealed Langevin, whose states are MCMC chains per noise level, not steps of a path)."""
    if not 2 <= frames <= 16:
        raise RequestError(f"frames must be between 2 and 16, got {frames}")
    request = replace(request, batch_size=1)
    model = pinned_model(cache, [request])
    result = run_request(cache, request, progress=progress, record_trajectory=True, model=model)
    x_T = draw_noise(image_generators(int(request.seed), 1, int(request.first_index)), image_shape(model))  # its start
    grid = time_grid(model.schedule, int(request.steps), request.spacing)
    on_the_grid = len(result.trajectory) == len(grid) - 1  # one recorded state per step of the time grid
    readout = readout_from_trajectory(model.schedule, grid, x_T, result.trajectory) if on_the_grid else None
    steps = len(result.trajectory)
    chosen = sorted({round(i * (steps - 1) / (frames - 1)) for i in range(frames)})
    schedule = model.schedule
    picked = []
    for step, t, x_t, x0_hat in (result.trajectory[i] for i in chosen):
        log_snr = float(schedule.log_snr(torch.tensor(t))) if t > 0 else float("inf")
        picked.append((step, t, log_snr, x_t[0], x0_hat[0]))
    return result, picked, readout


# --- families: one noise, several kinds of model ------------------------------------------------
MAX_FAMILY_COLUMNS = 4
MAX_WALK_FRAMES = 16
INVERSION_STEPS = (5, 10, 20, 50)


@dataclass
class FamilyColumn:
    checkpoint: str
    kind: str  # denoiser | normalizing-flow
    how: str  # "exact decode, T = 1" or "ODE dpm++2m, 20 steps"
    result: SampleResult


def family_requests(cache: ModelCache, checkpoints: list[str], *, class_index, seed: int, batch_size: int,
                    steps: int, solver: str, scale: float, temperature: float = 1.0) -> list:
    """One request per checkpoint, all from the same noise: a normalizing flow decodes it exactly (z = T x_T),
    a denoiser integrates its probability-flow ODE from it. Every request is validated before any runs."""
    names = list(dict.fromkeys(checkpoints or []))
    if not 1 <= len(names) <= MAX_FAMILY_COLUMNS:
        raise RequestError(f"choose between 1 and {MAX_FAMILY_COLUMNS} checkpoints, got {len(names)}")
    requests, shapes = [], set()
    for name in names:
        entry = cache.get(name)
        if entry.kind == "normalizing-flow":
            request = FlowRequest(checkpoint=name, class_index=class_index, temperature=temperature, seed=seed,
                                  batch_size=batch_size)
        else:  # w = 1 is the conditional model itself: no second (unconditional) row needed
            request = SampleRequest(checkpoint=name, sampler="ode", solver=solver, steps=steps,
                                    guidance="none" if scale == 1 else "cfg", class_index=class_index, scale=scale,
                                    seed=seed, batch_size=batch_size)
        shapes.add(image_shape(check_request(cache, request)))
        requests.append(request)
    if len(shapes) > 1:
        raise RequestError(f"the checkpoints make images of different shapes {sorted(shapes)}: one noise cannot feed them all")
    check_work(cache, requests, "this comparison of families")
    return requests


def same_noise(cache: ModelCache, requests: list, x_T: torch.Tensor | None = None, progress=None) -> list[FamilyColumn]:
    """Run family_requests' requests on one noise (the seed's, or x_T); a column per checkpoint."""
    models = {request.checkpoint: pinned_model(cache, [request]) for request in requests}
    columns = []
    for index, request in enumerate(requests):
        step_progress = (lambda done, total, i=index: progress(i, done, total)) if progress else None
        result = run_request(cache, request, progress=step_progress, x_T=x_T, model=models[request.checkpoint])
        if isinstance(request, FlowRequest):
            how = f"exact decode, T = {request.temperature:g}"
        else:
            how = f"ODE {request.solver}, {request.steps} steps" + (f", CFG w = {request.scale:g}" if request.guidance == "cfg" else "")
        columns.append(FamilyColumn(request.checkpoint, models[request.checkpoint].kind, how, result))
    return columns


def walk_noise(shape, seed_a: int, seed_b: int, frames: int) -> torch.Tensor:
    """(frames, C, H, W): the spherical path from seed_a's image-0 noise to seed_b's."""
    if not 2 <= frames <= MAX_WALK_FRAMES:
        raise RequestError(f"frames must be between 2 and {MAX_WALK_FRAMES}, got {frames}")
    a = draw_noise(image_generators(int(seed_a), 1), shape)[0]
    b = draw_noise(image_generators(int(seed_b), 1), shape)[0]
    return slerp(a, b, torch.linspace(0, 1, frames))


def generative_models(cache: ModelCache, names: list[str], shape: tuple[int, ...]) -> list[LoadedModel]:
    """1 to MAX_FAMILY_COLUMNS distinct generative checkpoints that all model images of `shape` (C, H, W)."""
    if not 1 <= len(names) <= MAX_FAMILY_COLUMNS:
        raise RequestError(f"choose between 1 and {MAX_FAMILY_COLUMNS} checkpoints, got {len(names)}")
    models = []
    for name in names:
        model = cache.get(name)
        if model.kind not in GENERATIVE_KINDS:
            raise RequestError(f"checkpoint {name!r} (kind {model.kind!r}) does not generate images")
        if image_shape(model) != shape:
            raise RequestError(f"checkpoint {name!r} makes {image_shape(model)} images, the picked image is {shape}")
        models.append(model)
    return models


# --- encode: data -> noise -> data --------------------------------------------------------------
@dataclass
class Reconstruction:
    steps: int  # ODE steps each way (a normalizing flow: 0, it is exact)
    nfe: int  # network evaluations, encode and decode together
    image: torch.Tensor  # (C, H, W)
    max_error: float
    mean_error: float
    seconds: float


@dataclass
class Inversion:
    checkpoint: str
    kind: str
    latent: torch.Tensor  # (C, H, W): NICE's z, or the ODE's x_1 after the most steps
    reconstructions: list[Reconstruction]
    bits_per_dim: float | None  # exact, normalizing flows only (dequantized with a fixed generator)


def encode_image(cache: ModelCache, checkpoints: list[str], image: torch.Tensor, label: int | None,
                 step_counts=INVERSION_STEPS, progress=None) -> list[Inversion]:
    """Encode one image (1, C, H, W) in [-1, 1] to noise and decode it back, with every checkpoint.

    A normalizing flow is exact (z = f(x), x = f^-1(z)); a denoiser inverts its probability-flow ODE from
    t = 0 to 1 with DDIM steps (conditional on `label`, no guidance, no self-conditioning) and integrates
    back with as many, so the reconstruction error shows the ODE solver's discretisation error.
    progress(model, done, total) after each network evaluation (and each exact pass)."""
    report = progress or (lambda model, done, total: None)
    names = list(dict.fromkeys(checkpoints or []))
    models = generative_models(cache, names, tuple(image.shape[1:]))
    for name, model in zip(names, models):
        if label is not None and not 0 <= label < len(model.class_names):
            raise RequestError(f"checkpoint {name!r:.60} has no class {label}")
    evaluations = [1 if model.kind == "normalizing-flow" else 2 * sum(int(s) for s in step_counts) for model in models]
    check_work(cache, [], "this encoding", extra=sum((cache.network_work(model, n, 1)
                                                       for n, model in zip(evaluations, models)), Work()))
    device = cache.device
    x = image.to(device)
    labels = None if label is None else torch.tensor([int(label)], device=device)
    inversions = []
    with torch.inference_mode():
        for name, model in zip(names, models):
            if model.kind == "normalizing-flow":
                started = time.perf_counter()
                z = model.network.encode(x, labels)
                back = model.network.decode(z, labels)
                seconds = time.perf_counter() - started
                dequantized = uniform_dequantize(to_uint8(image), torch.Generator().manual_seed(0)).to(device)
                bits = float(model_log_likelihood(model, dequantized, labels).bits_per_dim)
                error = (back - x).abs()
                report(len(inversions), 1, 1)
                inversions.append(Inversion(name, model.kind, z[0].cpu(), [Reconstruction(
                    0, 2, back[0].cpu(), float(error.max()), float(error.mean()), seconds)], bits))
                continue
            schedule, reconstructions, latent = model.schedule, [], None
            total, done = 2 * sum(int(s) for s in step_counts), [0]

            def step(*_, column=len(inversions)):
                done[0] += 1
                report(column, done[0], total)

            for steps in step_counts:
                grid = time_grid(schedule, int(steps))
                started = time.perf_counter()
                forward = Denoiser(model.network, schedule, model.parameterization, labels=labels)
                latent = invert_ddim(forward, x, grid, schedule=schedule, callback=step)
                backward = Denoiser(model.network, schedule, model.parameterization, labels=labels)
                back = sample_ddim(backward, latent, grid, schedule=schedule, callback=step)
                error = (back - x).abs()
                reconstructions.append(Reconstruction(int(steps), forward.nfe + backward.nfe, back[0].cpu(),
                                                      float(error.max()), float(error.mean()),
                                                      time.perf_counter() - started))
            inversions.append(Inversion(name, model.kind, latent[0].cpu(), reconstructions, None))
    return inversions
