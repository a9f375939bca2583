"""Noise schedules as pure functions of continuous time.

Notation (Kingma et al. 2021, "Variational Diffusion Models"):
    t in [0, 1]        0 = data, 1 = noise
    x_t = alpha_t * x0 + sigma_t * eps
    lambda_t = log(alpha_t^2 / sigma_t^2)      the log signal-to-noise ratio

Every schedule here has sigma_0 = 0 and alpha_0 = 1, so a sampler's last step lands exactly on data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property

import torch

SCHEDULES = ("vp-cosine", "vp-linear", "flow")  # built by name (training presets, tests)
VP_DISCRETE = "vp-discrete"  # built from a DiscreteBetas (imported diffusers models)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "table")

# The cosine schedule is truncated at log-SNR -15 at t = 1 (Kingma et al. 2021 truncate likewise),
# so alpha_1 = 5.5e-4 is tiny but non-zero and eps-prediction stays finite.
COSINE_LOG_SNR_MIN = -15.0
# DDPM (Ho et al. 2020): beta_i linear from 1e-4 to 0.02 over 1000 steps.
LINEAR_BETA_START, LINEAR_BETA_END, LINEAR_STEPS = 1e-4, 0.02, 1000
MAX_DISCRETE_STEPS = 100_000


@dataclass(frozen=True)
class DiscreteBetas:
    """N discrete noising steps beta_1..beta_N (Ho et al. 2020), in the words of diffusers' scheduler configs:
        linear             beta_i evenly spaced from `start` to `end`                     (DDPM)
        scaled_linear      sqrt(beta_i) evenly spaced from sqrt(start) to sqrt(end)       (Stable Diffusion)
        squaredcos_cap_v2  beta_i = min(1 - abar(i / N) / abar((i - 1) / N), 0.999),
                           abar(s) = cos^2((s + 0.008) / 1.008 * pi / 2)                  (Nichol & Dhariwal 2021)
        table              the given betas
    `steps_offset` is diffusers' offset of its "leading" timestep grid (time_grid's spacing "leading")."""

    kind: str = "linear"
    start: float = LINEAR_BETA_START
    end: float = LINEAR_BETA_END
    steps: int = LINEAR_STEPS
    table: tuple[float, ...] = ()
    steps_offset: int = 0

    def __post_init__(self):
        if self.kind not in BETA_SCHEDULES:
            raise ValueError(f"unknown beta schedule {self.kind!r}; expected one of {BETA_SCHEDULES}")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 2 <= self.steps <= MAX_DISCRETE_STEPS:
            raise ValueError(f"the number of training steps must be a whole number in [2, {MAX_DISCRETE_STEPS}], "
                             f"got {self.steps!r}")
        if not isinstance(self.steps_offset, int) or not 0 <= self.steps_offset < self.steps:
            raise ValueError(f"steps_offset must be a whole number in [0, {self.steps}), got {self.steps_offset!r}")
        if self.kind == "table" and len(self.table) != self.steps:
            raise ValueError(f"a beta table needs {self.steps} values, got {len(self.table)}")
        if self.kind != "table" and not 0 < self.start <= self.end < 1:
            raise ValueError(f"betas must satisfy 0 < start <= end < 1, got start={self.start}, end={self.end}")
        betas = self.betas()
        if not bool(torch.isfinite(betas).all()) or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every beta must lie in (0, 1)")

    def betas(self) -> torch.Tensor:
        """beta_1..beta_N in float64, on the CPU (also when called under a meta-device context)."""
        n, cpu = self.steps, torch.device("cpu")
        if self.kind == "linear":
            return torch.linspace(self.start, self.end, n, dtype=torch.float64, device=cpu)
        if self.kind == "scaled_linear":
            return torch.linspace(self.start**0.5, self.end**0.5, n, dtype=torch.float64, device=cpu) ** 2
        if self.kind == "squaredcos_cap_v2":
            abar = lambda s: torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
            s = torch.arange(n + 1, dtype=torch.float64, device=cpu) / n
            return (1 - abar(s[1:]) / abar(s[:-1])).clamp(max=0.999)
        return torch.tensor(self.table, dtype=torch.float64, device=cpu)

    def to_dict(self) -> dict:
        return asdict(self) | {"table": list(self.table)}

    @classmethod
    def from_dict(cls, data: dict) -> "DiscreteBetas":
        if not isinstance(data, dict):
            raise ValueError("a discrete beta schedule must be a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown beta schedule fields {sorted(unknown)}")
        values = dict(data)
        if "table" in values:
            if not isinstance(values["table"], (list, tuple)) or not all(
                    isinstance(b, (int, float)) and not isinstance(b, bool) for b in values["table"]):
                raise ValueError("a beta table must be a list of numbers")
            values["table"] = tuple(float(b) for b in values["table"])
        for key in ("start", "end"):
            if key in values and (isinstance(values[key], bool) or not isinstance(values[key], (int, float))):
                raise ValueError(f"beta {key} must be a number")
        return cls(**values)


DDPM_BETAS = DiscreteBetas()


@dataclass(frozen=True)
class Schedule:
    """One of SCHEDULES; maps t to (alpha_t, sigma_t) and back from log-SNR to t.

    "vp-discrete" is a DDPM-style schedule of N discrete steps (`betas`): its alphabar table sits at
    t = k / N, k = 0..N, and log alphabar is linear in t between them, so diffusers' timestep k (which
    has taken k + 1 betas) is exactly t = (k + 1) / N. "vp-linear" is the vp-discrete schedule of DDPM's
    1000 linear betas.
    """

    name: str
    betas: DiscreteBetas | None = None  # vp-discrete only

    def __post_init__(self):
        if self.name not in (*SCHEDULES, VP_DISCRETE):
            raise ValueError(f"unknown schedule {self.name!r}; expected one of {SCHEDULES} or {VP_DISCRETE!r} with betas")
        if (self.name == VP_DISCRETE) != (self.betas is not None):
            raise ValueError("a vp-discrete schedule needs its betas, and only it takes them")

    @property
    def discrete(self) -> DiscreteBetas | None:
        """The discrete steps under this schedule (vp-linear and vp-discrete), else None."""
        return DDPM_BETAS if self.name == "vp-linear" else self.betas

    def to_config(self) -> str | dict:
        """What a checkpoint's metadata stores: the name, or for vp-discrete the name and its betas."""
        return self.name if self.betas is None else {"name": self.name, "betas": self.betas.to_dict()}

    @classmethod
    def from_config(cls, value) -> "Schedule":
        """Inverse of to_config; ValueError for anything else."""
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict) and set(value) <= {"name", "betas"}:
            betas = value.get("betas")
            return cls(value.get("name"), DiscreteBetas.from_dict(betas) if betas is not None else None)
        raise ValueError(f"a schedule is a name or {{'name', 'betas'}}, got {str(value)[:80]}")

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(alpha_t, sigma_t) for t in [0, 1], elementwise, in t's dtype."""
        t = torch.as_tensor(t)
        if self.name == "flow":
            return 1 - t, t  # rectified flow (Liu et al. 2022): x_t = (1 - t) x0 + t eps
        if self.name == "vp-cosine":
            angle = t * self._cosine_max_angle  # Nichol & Dhariwal 2021: alpha = cos(pi/2 * t)
            return torch.cos(angle), torch.sin(angle)
        log_alpha2 = self._discrete_log_alpha2(t)
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
        # discrete: log alpha^2 is piecewise linear in t with slope s; alpha' = alpha s / 2, sigma' = -alpha alpha' / sigma.
        alpha, sigma = self.alpha_sigma(t)
        n = self.discrete.steps
        pos = t.to(torch.float64).clamp(0, 1) * n
        lo = pos.floor().clamp(max=n - 1).long()
        table = self._discrete_table.to(pos.device)
        slope = ((table[lo + 1] - table[lo]) * n).to(alpha.dtype)
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
        # discrete: log alpha^2 = -log(1 + exp(-lambda)) is monotone in t; invert the table.
        n = self.discrete.steps
        target = -torch.nn.functional.softplus(-lam)
        table = -self._discrete_table.to(lam.device)  # increasing in t
        idx = torch.searchsorted(table, -target).clamp(1, n)
        lo, hi = table[idx - 1], table[idx]
        frac = ((-target - lo) / (hi - lo)).clamp(0, 1)
        return (idx - 1 + frac) / n

    # --- private ---------------------------------------------------------------------------
    @cached_property
    def _cosine_max_angle(self) -> float:
        return math.atan(math.exp(-COSINE_LOG_SNR_MIN / 2))  # log-SNR at t=1 is COSINE_LOG_SNR_MIN

    @cached_property
    def _discrete_table(self) -> torch.Tensor:
        """log(alphabar) at t = k / N, k = 0..N: alphabar_k = prod_{i<=k} (1 - beta_i), exact DDPM values."""
        betas = self.discrete.betas()
        return torch.cat([torch.zeros(1, dtype=torch.float64, device=betas.device), torch.cumsum(torch.log1p(-betas), 0)])

    def _discrete_log_alpha2(self, t: torch.Tensor) -> torch.Tensor:
        # Piecewise-linear in t between the discrete steps: t = (k + 1) / N is diffusers' timestep k.
        n = self.discrete.steps
        pos = t.to(torch.float64).clamp(0, 1) * n
        lo = pos.floor().clamp(max=n - 1).long()
        table = self._discrete_table.to(pos.device)
        value = table[lo] + (pos - lo) * (table[lo + 1] - table[lo])
        return value.to(t.dtype if t.is_floating_point() else torch.float32)


SPACINGS = ("uniform", "log-snr", "leading")


def time_grid(schedule: Schedule, steps: int, spacing: str = "uniform", t_min: float = 1e-3,
              t_start: float = 1.0) -> torch.Tensor:
    """Decreasing float64 grid t_0 = t_start > ... > t_steps = 0 for a sampler taking `steps` steps.

    t_start < 1 starts from a partly noised image (image-to-image, editing.py); all `steps` steps are spent
    between t_start and 0.

    "uniform": t_0 = 1, evenly spaced in t (for vp-linear with 1000 steps these are exactly DDPM's
    timesteps, and for fewer steps diffusers' "trailing" spacing).
    "log-snr": evenly spaced in log-SNR between t = 1 and t = t_min, then a last step to t = 0
    (the spirit of Karras et al. 2022, who space steps evenly in a power of sigma).
    "leading": discrete schedules only; diffusers' default spacing and the DDIM paper's (Song et al. 2021):
    timesteps k_i = i * (N // steps) + steps_offset, i = steps-1..0, that is t = (k_i + 1) / N, then t = 0.
    It starts below t = 1 (at 0.981 for 50 of 1000 steps), as pipelines built on diffusers do.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < t_start <= 1:
        raise ValueError(f"t_start must be in (0, 1], got {t_start}")
    if spacing == "uniform" or (spacing == "log-snr" and t_start <= t_min):
        return torch.linspace(t_start, 0, steps + 1, dtype=torch.float64)
    if spacing == "leading" and t_start < 1:
        raise ValueError("'leading' spacing is diffusers' fixed timesteps from t = 1; start a partial grid with "
                         "'uniform' or 'log-snr' spacing")
    if spacing == "leading":
        discrete = schedule.discrete
        if discrete is None:
            raise ValueError(f"'leading' spacing needs a discrete schedule (vp-linear or vp-discrete), not {schedule.name!r}")
        if steps > discrete.steps:
            raise ValueError(f"'leading' spacing takes at most the schedule's {discrete.steps} steps, got {steps}")
        k = torch.arange(steps - 1, -1, -1, dtype=torch.float64) * (discrete.steps // steps) + discrete.steps_offset
        return torch.cat([(k + 1) / discrete.steps, torch.zeros(1, dtype=torch.float64)])
    if spacing == "log-snr":
        if steps == 1:
            return torch.tensor([t_start, 0.0], dtype=torch.float64)
        lam_start = schedule.log_snr(torch.tensor(t_start, dtype=torch.float64)).clamp(min=-20.0)
        lam_end = schedule.log_snr(torch.tensor(t_min))
        lam = torch.linspace(float(lam_start), float(lam_end), steps, dtype=torch.float64)
        t = schedule.t_from_log_snr(lam)
        t[0] = t_start
        return torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    raise ValueError(f"unknown time spacing {spacing!r}; expected one of {SPACINGS}")
