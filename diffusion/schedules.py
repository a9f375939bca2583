"""Noise schedules as pure functions of continuous time.

Notation (Kingma et al. 2021, "Variational Diffusion Models"):
    t in [0, 1]        0 = data, 1 = noise
    x_t = alpha_t * x0 + sigma_t * eps
    lambda_t = log(alpha_t^2 / sigma_t^2)      the log signal-to-noise ratio

Every schedule here has sigma_0 = 0 and alpha_0 = 1, so a sampler's last step lands exactly on data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch

SCHEDULES = ("vp-cosine", "vp-linear", "flow")

# The cosine schedule is truncated at log-SNR -15 at t = 1 (Kingma et al. 2021 truncate likewise),
# so alpha_1 = 5.5e-4 is tiny but non-zero and eps-prediction stays finite.
COSINE_LOG_SNR_MIN = -15.0
# DDPM (Ho et al. 2020): beta_i linear from 1e-4 to 0.02 over 1000 steps.
LINEAR_BETA_START, LINEAR_BETA_END, LINEAR_STEPS = 1e-4, 0.02, 1000


@dataclass(frozen=True)
class Schedule:
    """One of SCHEDULES; maps t to (alpha_t, sigma_t) and back from log-SNR to t."""

    name: str

    def __post_init__(self):
        if self.name not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.name!r}; expected one of {SCHEDULES}")

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) for t in [0, 1], elementwise, in t's dtype."""
        t = torch.as_tensor(t)
        if self.name == "flow":
            return 1 - t, t  # rectified flow (Liu et al. 2022): x_t = (1 - t) x0 + t eps
        if self.name == "vp-cosine":
            angle = t * self._cosine_max_angle  # Nichol & Dhariwal 2021: alpha = cos(pi/2 * t)
            return torch.cos(angle), torch.sin(angle)
        log_alpha2 = self._linear_log_alpha2(t)
        alpha2 = torch.exp(log_alpha2)
        return alpha2.sqrt(), (-torch.expm1(log_alpha2)).clamp_min(0).sqrt()

    def alpha_sigma_derivative(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d alpha_t / dt, d sigma_t / dt), elementwise: the probability-flow drift needs them."""
        t = torch.as_tensor(t)
        if self.name == "flow":
            return -torch.ones_like(t), torch.ones_like(t)
        if self.name == "vp-cosine":
            angle, rate = t * self._cosine_max_angle, self._cosine_max_angle
            return -rate * torch.sin(angle), rate * torch.cos(angle)
        # vp-linear: log alpha^2 is piecewise linear in t with slope s; alpha' = alpha s / 2, sigma' = -alpha alpha' / sigma.
        alpha, sigma = self.alpha_sigma(t)
        pos = t.to(torch.float64).clamp(0, 1) * LINEAR_STEPS
        lo = pos.floor().clamp(max=LINEAR_STEPS - 1).long()
        table = self._linear_table.to(pos.device)
        slope = ((table[lo + 1] - table[lo]) * LINEAR_STEPS).to(alpha.dtype)
        d_alpha = alpha * slope / 2
        return d_alpha, -alpha * d_alpha / sigma

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """lambda_t = log(alpha_t^2 / sigma_t^2); +inf at t = 0."""
        alpha, sigma = self.alpha_sigma(torch.as_tensor(t, dtype=torch.float64))
        return 2 * (torch.log(alpha) - torch.log(sigma))

    def t_from_log_snr(self, log_snr: torch.Tensor) -> torch.Tensor:
        """Inverse of log_snr, in float64."""
        lam = torch.as_tensor(log_snr, dtype=torch.float64)
        if self.name == "flow":
            return torch.sigmoid(-lam / 2)  # (1 - t) / t = exp(lambda / 2)
        if self.name == "vp-cosine":
            return torch.atan(torch.exp(-lam / 2)) / self._cosine_max_angle  # tan(angle) = exp(-lambda / 2)
        # vp-linear: log alpha^2 = -log(1 + exp(-lambda)) is monotone in t; invert the table.
        target = -torch.nn.functional.softplus(-lam)
        table = -self._linear_table  # increasing in t
        idx = torch.searchsorted(table, -target).clamp(1, LINEAR_STEPS)
        lo, hi = table[idx - 1], table[idx]
        frac = ((-target - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1 + frac) / LINEAR_STEPS

    # --- private ---------------------------------------------------------------------------
    @cached_property
    def _cosine_max_angle(self) -> float:
        return math.atan(math.exp(-COSINE_LOG_SNR_MIN / 2))  # log-SNR at t=1 is COSINE_LOG_SNR_MIN

    @cached_property
    def _linear_table(self) -> torch.Tensor:
        """log(alphabar) at t = k / 1000, k = 0..1000: alphabar_k = prod_{i<k} (1 - beta_i), exact DDPM values."""
        betas = torch.linspace(LINEAR_BETA_START, LINEAR_BETA_END, LINEAR_STEPS, dtype=torch.float64)
        return torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(torch.log1p(-betas), 0)])

    def _linear_log_alpha2(self, t: torch.Tensor) -> torch.Tensor:
        # Piecewise-linear in t between DDPM's discrete steps: t = (k + 1) / 1000 is DDPM timestep k.
        pos = t.to(torch.float64).clamp(0, 1) * LINEAR_STEPS
        lo = pos.floor().clamp(max=LINEAR_STEPS - 1).long()
        table = self._linear_table.to(pos.device)
        value = table[lo] + (pos - lo) * (table[lo + 1] - table[lo])
        return value.to(t.dtype if t.is_floating_point() else torch.float32)


def time_grid(schedule: Schedule, steps: int, spacing: str = "uniform", t_min: float = 1e-3) -> torch.Tensor:
    """Decreasing float64 grid t_0 = 1 > ... > t_steps = 0 for a sampler taking `steps` steps.

    "uniform": evenly spaced in t (for vp-linear with 1000 steps these are exactly DDPM's timesteps,
    and for fewer steps diffusers' "trailing" spacing).
    "log-snr": evenly spaced in log-SNR between t = 1 and t = t_min, then a last step to t = 0
    (the spirit of Karras et al. 2022, who space steps evenly in a power of sigma).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if spacing == "uniform":
        return torch.linspace(1, 0, steps + 1, dtype=torch.float64)
    if spacing == "log-snr":
        if steps == 1:
            return torch.tensor([1.0, 0.0], dtype=torch.float64)
        lam_start = schedule.log_snr(torch.tensor(1.0)).clamp(min=-20.0)
        lam_end = schedule.log_snr(torch.tensor(t_min))
        lam = torch.linspace(float(lam_start), float(lam_end), steps, dtype=torch.float64)
        t = schedule.t_from_log_snr(lam)
        t[0] = 1.0
        return torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    raise ValueError(f"unknown time spacing {spacing!r}; expected 'uniform' or 'log-snr'")
