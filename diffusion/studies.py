"""What the app's tabs compute, with no UI: sampler comparisons, guidance sweeps, trajectories.

Each study is a set of engine requests sharing a seed, so every column/row starts from the same noise
and draws the same per-step noise stream (image i of seed s always uses generator (s, i)).
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, replace

import torch

from .engine import ModelCache, RequestError, SampleRequest, SampleResult, file_sha256, run_request
from .metrics import evaluator_outputs, mean_pairwise_distance

MAX_SWEEP_SCALES = 8


# --- compare samplers -------------------------------------------------------------------------
def compare_samplers(cache: ModelCache, requests: list[SampleRequest], progress=None) -> tuple[list[SampleResult], dict]:
    """Run the same seed through several sampler settings; returns results and a reproducibility manifest."""
    seeds = {(r.checkpoint, r.seed, r.batch_size, r.class_index) for r in requests}
    if len(seeds) != 1:
        raise RequestError("a comparison needs the same checkpoint, seed, batch size and class in every column")
    results = []
    for index, request in enumerate(requests):
        step_progress = (lambda done, total, i=index: progress(i, done, total)) if progress else None
        results.append(run_request(cache, request, progress=step_progress))
    return results, comparison_manifest(cache, results)


def comparison_manifest(cache: ModelCache, results: list[SampleResult]) -> dict:
    path = cache.path_of(results[0].request.checkpoint)
    return {
        "what": "diffusion-playground sampler comparison",
        "checkpoint": {"file": path.name, "sha256": file_sha256(path)},
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


def guidance_sweep(cache: ModelCache, base: SampleRequest, scales: list[float], modes: list[str],
                   progress=None) -> list[SweepRow]:
    if not scales or len(scales) > MAX_SWEEP_SCALES:
        raise RequestError(f"give between 1 and {MAX_SWEEP_SCALES} guidance scales")
    if not modes:
        raise RequestError("choose at least one guidance mode")
    evaluator = cache.first_of_kind("evaluator")
    rows, total = [], len(scales) * len(modes)
    for mode in modes:
        for scale in scales:
            request = replace(base, guidance=mode, scale=float(scale))
            index = len(rows)
            step_progress = (lambda done, steps, i=index: progress(i, total, done, steps)) if progress else None
            result = run_request(cache, request, progress=step_progress, trace_guidance=True)
            confidence = accuracy = None
            if evaluator is not None:
                probs, features = evaluator_outputs(evaluator.network, result.images)
                labels = torch.full((len(probs),), int(base.class_index))
                confidence = float(probs[:, int(base.class_index)].mean())
                accuracy = float((probs.argmax(1) == labels).float().mean())
                diversity = mean_pairwise_distance(features)
            else:
                diversity = mean_pairwise_distance(result.images.flatten(1))
            rows.append(SweepRow(mode, float(scale), result, confidence, accuracy, diversity))
    return rows


def parse_scales(text: str) -> list[float]:
    """'0, 1, 2.5, 4' -> [0.0, 1.0, 2.5, 4.0], with a clear error for anything else."""
    parts = [p for p in str(text).replace(";", ",").replace(" ", ",").split(",") if p]
    try:
        scales = [float(p) for p in parts]
    except ValueError as error:
        raise RequestError(f"guidance scales must be numbers separated by commas, got {text!r}") from error
    if not scales or len(scales) > MAX_SWEEP_SCALES:
        raise RequestError(f"give between 1 and {MAX_SWEEP_SCALES} guidance scales, got {len(scales)}")
    return scales


# --- trajectory -------------------------------------------------------------------------------
def trajectory(cache: ModelCache, request: SampleRequest, frames: int, progress=None):
    """One image's (t, log-SNR, x_t, x0_hat) at `frames` steps spread over the run, last step included."""
    if not 2 <= frames <= 16:
        raise RequestError(f"frames must be between 2 and 16, got {frames}")
    request = replace(request, batch_size=1)
    result = run_request(cache, request, progress=progress, record_trajectory=True)
    steps = len(result.trajectory)
    chosen = sorted({round(i * (steps - 1) / (frames - 1)) for i in range(frames)})
    schedule = cache.get(request.checkpoint).schedule
    picked = []
    for step, t, x_t, x0_hat in (result.trajectory[i] for i in chosen):
        log_snr = float(schedule.log_snr(torch.tensor(t))) if t > 0 else float("inf")
        picked.append((step, t, log_snr, x_t[0], x0_hat[0]))
    return result, picked
