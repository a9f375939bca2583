"""Guidance methods as pure functions of predictions: each takes the denoised estimates x0_hat of a batch.

The Denoiser (denoiser.py) calls the network(s) and hands the results here. Every method has a neutral setting
at which it is exactly classifier-free guidance:

    method                 paper                                          neutral setting
    CFG                    Ho & Salimans 2022                             -
    CFG rescale            Lin et al. 2024, Sec. 3.4                      phi = 0
    guidance interval      Kynkaanniemi et al. 2024 (in log-SNR here)     interval = (-inf, inf)
    APG                    Sadat et al. 2024                              eta = 1, r = 0 (no bound), beta = 0
    dynamic thresholding   Saharia et al. 2022 (Imagen)                   percentile = 0 (off)
    autoguidance           Karras et al. 2024                             guide = the model's unconditional branch

All act on x0_hat (the image the model expects), the space where over-saturation shows; the Denoiser turns
the guided x0_hat back into eps_hat = (x_t - alpha x0_hat) / sigma, so the pair stays consistent with x_t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

GUIDANCE_MODES = ("none", "cfg", "classifier", "autoguidance")
PAIRED_MODES = ("cfg", "autoguidance")  # the modes that combine two predictions, which rescale and APG modify


@dataclass(frozen=True)
class Guidance:
    """How a sampling run is guided.

    mode "none": the (conditional) model as is; "cfg": classifier-free guidance, the conditional prediction pushed
    away from the unconditional one with scale w (w = 0 unconditional, 1 conditional, > 1 guided); "classifier":
    the unconditional model plus `scale` times a noisy classifier's gradient; "autoguidance": like CFG, but pushed
    away from a weaker model's conditional prediction instead of the unconditional one.

    The other fields modify CFG and autoguidance (threshold and interval also apply to classifier guidance);
    each field's default is its neutral value.
    """

    mode: str = "none"
    scale: float = 1.0
    rescale: float = 0.0  # CFG rescale phi in [0, 1]
    interval: tuple[float, float] = (-math.inf, math.inf)  # guide only where log-SNR lies in [low, high]
    apg_eta: float = 1.0  # APG: weight of the guidance update's part parallel to the conditional prediction
    apg_norm: float = 0.0  # APG: bound r on the update's norm per image (0: unbounded)
    apg_momentum: float = 0.0  # APG: beta of the running average of updates (Sadat et al. use -0.5)
    threshold: float = 0.0  # dynamic thresholding percentile p in (0, 1) of |x0_hat| per image (0: off)

    def __post_init__(self):
        if self.mode not in GUIDANCE_MODES:
            raise ValueError(f"unknown guidance mode {self.mode!r}; expected one of {', '.join(GUIDANCE_MODES)}")
        for name in ("scale", "rescale", "apg_eta", "apg_norm", "apg_momentum", "threshold"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"guidance {name} must be finite, got {getattr(self, name)}")
        low, high = self.interval
        if math.isnan(low) or math.isnan(high) or low > high:
            raise ValueError(f"guidance interval must be (low, high) with low <= high, got {self.interval}")
        if not 0 <= self.rescale <= 1:
            raise ValueError(f"CFG rescale phi must be in [0, 1], got {self.rescale}")
        if not 0 <= self.threshold < 1:
            raise ValueError(f"dynamic thresholding percentile must be in [0, 1) (0: off), got {self.threshold}")
        if self.apg_norm < 0:
            raise ValueError(f"APG norm bound must be >= 0 (0: unbounded), got {self.apg_norm}")
        if not -1 < self.apg_momentum < 1:
            raise ValueError(f"APG momentum must be in (-1, 1), got {self.apg_momentum}")

    @property
    def pairs_predictions(self) -> bool:
        """Whether the method combines two predictions (conditional and unconditional or weak)."""
        return self.mode in PAIRED_MODES

    @property
    def uses_apg(self) -> bool:
        return (self.apg_eta, self.apg_norm, self.apg_momentum) != (1.0, 0.0, 0.0)

    def active_at(self, log_snr: float) -> bool:
        """Guidance interval (Kynkaanniemi et al. 2024): outside it the model runs unguided."""
        return self.interval[0] <= log_snr <= self.interval[1]


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Ho & Salimans 2022: x = x_u + w (x_c - x_u)."""
    return uncond + scale * (cond - uncond)


def _per_image(values: torch.Tensor) -> torch.Tensor:
    return values.flatten(1)


def _broadcast(per_image: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return per_image.reshape(-1, *([1] * (like.ndim - 1)))


def rescale_to_conditional(guided: torch.Tensor, cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2024, Sec. 3.4: x_r = x_cfg std(x_c) / std(x_cfg); x = phi x_r + (1 - phi) x_cfg (std per image)."""
    if phi == 0:
        return guided
    ratio = _per_image(cond).std(dim=1) / _per_image(guided).std(dim=1).clamp_min(1e-12)
    return phi * guided * _broadcast(ratio, guided) + (1 - phi) * guided


class AdaptiveProjectedGuidance:
    """Sadat et al. 2024 (APG), on x0_hat:

        D_t = (x_c - x_u) + beta D_{t-1}                 reverse momentum (beta < 0), a running average
        D <- D min(1, r / ||D||)                         bound the update's norm per image (r > 0)
        D = D_par + D_orth, D_par = (<D, x_c> / ||x_c||^2) x_c
        x = x_c + (w - 1) (D_orth + eta D_par)           eta < 1 down-weights the part that over-saturates

    At eta = 1, r = 0 (no bound), beta = 0 it is x_c + (w - 1)(x_c - x_u), classifier-free guidance. It keeps
    the running average between calls, so make one per sampling run."""

    def __init__(self, eta: float, norm_bound: float, momentum: float):
        self.eta, self.norm_bound, self.momentum = eta, norm_bound, momentum
        self.running: torch.Tensor | None = None

    def __call__(self, cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
        update = cond - uncond
        if self.momentum != 0:
            update = update if self.running is None else update + self.momentum * self.running
            self.running = update
        if self.norm_bound > 0:
            norm = _per_image(update).norm(dim=1)
            update = update * _broadcast((self.norm_bound / norm.clamp_min(1e-12)).clamp(max=1.0), update)
        parallel, orthogonal = project_onto(update, cond)
        return cond + (scale - 1) * (orthogonal + self.eta * parallel)


def project_onto(vector: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image: (part of `vector` along `direction`, the rest). A zero direction has no parallel part."""
    v, d = _per_image(vector).double(), _per_image(direction).double()
    coefficient = (v * d).sum(dim=1) / (d * d).sum(dim=1).clamp_min(1e-30)
    parallel = (coefficient[:, None] * d).to(vector.dtype).reshape(vector.shape)
    return parallel, vector - parallel


def dynamic_threshold(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    """Saharia et al. 2022 (Imagen): s = max(1, p-th percentile of |x0| per image); x0 <- clamp(x0, -s, s) / s."""
    if percentile == 0:
        return x0
    s = torch.quantile(_per_image(x0).abs().float(), percentile, dim=1).clamp_min(1.0).to(x0.dtype)
    s = _broadcast(s, x0)
    return torch.maximum(torch.minimum(x0, s), -s) / s


@dataclass(frozen=True)
class GuidanceMethod:
    """A named way to guide, as the request fields that select it (the app's sweep, the X/Y grid and the
    evaluation read this one registry). Settings are the papers' suggestions, as far as they carry over."""

    label: str
    settings: dict  # SampleRequest fields
    paper: str


# Kynkaanniemi et al. guide EDM2 (data std 0.5) for sigma in (0.28, 5.42]; log-SNR = -2 ln(sigma / 0.5) for data
# of that spread, i.e. about (-4.7, 1.2]. APG's r bounds ||x0_c - x0_u|| per image; for fashion-diffusion its median
# is 0.3 at log-SNR 2, 1.1 at -0.6, 2.3 at -2.3 and 8 at -5 (32 test images), so r = 2.5 binds in the noisiest quarter.
GUIDANCE_METHODS = {
    "cfg": GuidanceMethod("CFG", {"guidance": "cfg"}, "Ho & Salimans 2022"),
    "cfg-rescale": GuidanceMethod("CFG rescale, phi 0.7", {"guidance": "cfg", "rescale": 0.7}, "Lin et al. 2024"),
    "interval": GuidanceMethod("interval, log-SNR -4.7 to 1.2",
                               {"guidance": "cfg", "interval_low": -4.7, "interval_high": 1.2},
                               "Kynkaanniemi et al. 2024"),
    "apg": GuidanceMethod("APG, eta 0, r 2.5, beta -0.5",
                          {"guidance": "cfg", "apg_eta": 0.0, "apg_norm": 2.5, "apg_momentum": -0.5},
                          "Sadat et al. 2024"),
    "dynamic-threshold": GuidanceMethod("CFG + dynamic thresholding, p 0.995", {"guidance": "cfg", "threshold": 0.995},
                                        "Saharia et al. 2022"),
    "autoguidance": GuidanceMethod("autoguidance", {"guidance": "autoguidance"}, "Karras et al. 2024"),
    "classifier": GuidanceMethod("classifier guidance", {"guidance": "classifier"}, "Dhariwal & Nichol 2021"),
}
