"""The likelihood lens: how likely is one image, and its out-of-distribution probes, under each model?

Nalisnick et al. 2019 ("Do Deep Generative Models Know What They Don't Know?") found that likelihood models
can rate inputs unlike their training data *more* likely than the data itself. The probes here need no other
data set: the image flipped left-right, inverted (255 - k), a constant grey image and uniform noise. Every
image is uniformly dequantized and scored by the unconditional model (a probe has no label): a denoiser's
null class through its probability-flow ODE, a normalizing flow's mixture over classes, exactly.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from .budget import Work
from .engine import ModelCache, RequestError, check_work
from ..core.likelihood import ODELikelihoodConfig, dequantize_each, model_log_likelihood, rademacher_probes
from ..core.sampling import image_generators
from .studies import generative_models

PROBES = ("original", "flipped left-right", "inverted (255 - k)", "constant grey (128)", "uniform noise")
PATH_POINTS = 25  # times (geometric in t) at which the ODE's path integral is recorded for the plot
# Looser than the evaluation's 1e-4 for an interactive answer: on test image 0 it moved bits/dim by < 0.01.
LENS_ODE = ODELikelihoodConfig(rtol=1e-3, atol=1e-3)
# The work budget's estimate of one probability-flow likelihood at LENS_ODE: dopri5 is adaptive, so this is a typical
# count (the lens's own tolerance took 104 calls on a grey image and 140 on a test image with fashion-diffusion; the
# evaluation's tighter 1e-4 took 156-205). Each call is a forward pass plus the vector-Jacobian product of
# Hutchinson's divergence: 3 forwards by the textbook count, about 2 as timed here (150 calls x 3 estimated the lens
# at 2.3x its measured time, docs/benchmarks-budget.md).
LENS_TYPICAL_NFE = 120
LENS_PASSES_PER_CALL = 2


@dataclass
class LensColumn:
    checkpoint: str
    kind: str
    bits_per_dim: list[float]  # one per probe, PROBES order
    nfe: int  # 0 for an exact normalizing flow
    seconds: float
    times: torch.Tensor | None = None  # (K,) t from t_start to 1, ODE models only
    path_bits: torch.Tensor | None = None  # (K, probes): bits/dim gained by the path from t_start to times[k]


def probe_images(pixels: torch.Tensor, seed: int) -> torch.Tensor:
    """(len(PROBES), C, H, W) uint8 from one uint8 image (C, H, W); the noise probe is drawn from `seed`."""
    if pixels.dtype != torch.uint8 or pixels.dim() != 3:
        raise RequestError(f"the lens takes one uint8 image (C, H, W), got {pixels.dtype} {tuple(pixels.shape)}")
    noise = torch.randint(0, 256, tuple(pixels.shape), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)
    return torch.stack([pixels, pixels.flip(-1), 255 - pixels, torch.full_like(pixels, 128), noise])


def lens_work(cache: ModelCache, model) -> Work:
    """The lens's work on one model: a flow, one exact pass of the probes; a denoiser, an ODE solve of them together,
    each call a forward and a vector-Jacobian product."""
    if model.kind == "normalizing-flow":
        return cache.network_work(model, 1, len(PROBES))
    return cache.network_work(model, LENS_TYPICAL_NFE, len(PROBES), passes=LENS_PASSES_PER_CALL)


def likelihood_lens(cache: ModelCache, checkpoints: list[str], pixels: torch.Tensor, seed: int = 0,
                    config: ODELikelihoodConfig = LENS_ODE, progress=None) -> list[LensColumn]:
    """bits/dim of the image and its probes under each checkpoint (unconditional). Probe i is dequantized, and
    gets its Hutchinson probe, from generator (seed, i). progress(column, fraction) while an ODE is solved."""
    names = list(dict.fromkeys(checkpoints or []))
    models = generative_models(cache, names, tuple(pixels.shape))
    check_work(cache, [], "this likelihood lens", extra=sum((lens_work(cache, model) for model in models), Work()))
    images = probe_images(pixels, seed)
    generators = image_generators(seed, len(images))
    x = dequantize_each(images, generators).to(cache.device)
    probes = rademacher_probes(generators, x.shape[1:]).to(cache.device)
    columns = []
    for index, (name, model) in enumerate(zip(names, models)):
        def on_evaluation(nfe, t, index=index):
            if progress is not None:  # the solve moves from t_start to 1, evenly in log t
                progress(index, min(1.0, max(0.0, math.log(t / config.t_start) / -math.log(config.t_start))))

        started = time.perf_counter()
        try:
            with torch.inference_mode():
                result = model_log_likelihood(model, x, None, probes, config, PATH_POINTS, on_evaluation)
        except ValueError as error:
            raise RequestError(f"checkpoint {name!r}: {error}") from None
        path_bits = None
        if result.path is not None:
            path_bits = (result.path / (result.dims * math.log(2))).cpu()
        columns.append(LensColumn(name, model.kind, result.bits_per_dim.cpu().tolist(), result.nfe,
                                  time.perf_counter() - started, result.times, path_bits))
    return columns
