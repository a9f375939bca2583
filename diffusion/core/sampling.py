"""Samplers: free functions over a denoiser callable and a decreasing time grid.

    denoise(x_t, t) -> (x0_hat, eps_hat)      the only thing a sampler knows about a model
    grid: t_0 = 1 > t_1 > ... > t_n = 0      (schedules.time_grid)
    generators: one torch.Generator per image; all noise is drawn on the CPU from them, so image i
                depends only on its own generator (not on batch size or device).
    callback(step, t, x_t, x0_hat) after every step.

Notation (Kingma et al. 2021): step from t to s < t, alpha_{t|s} = alpha_t / alpha_s,
sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .schedules import Schedule

Denoise = Callable[[torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]
Callback = Callable[[int, float, torch.Tensor, torch.Tensor], None] | None
ODE_SOLVERS = ("euler", "heun", "dpm++2m")


def image_generators(seed: int, count: int, first_index: int = 0) -> list[torch.Generator]:
    """One CPU generator per image, seeded from (seed, index) by a hash, so images never share streams."""
    generators = []
    for index in range(first_index, first_index + count):
        digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
        generators.append(torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1)))
    return generators


def draw_noise(generators: Sequence[torch.Generator], shape, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise (B, *shape), row i from generators[i], drawn on the CPU then moved."""
    rows = [torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device=device, dtype=dtype)


def slerp(a: torch.Tensor, b: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (Shoemake 1985) of two noise tensors, one row per weight w in [0, 1]:
    sin((1 - w) theta) / sin(theta) a + sin(w theta) / sin(theta) b, theta the angle between a and b.
    Unlike a straight line it keeps the norm of Gaussian noise (~sqrt(D)) along the way."""
    a64, b64 = a.double().flatten(), b.double().flatten()
    theta = torch.arccos((a64 @ b64 / (a64.norm() * b64.norm())).clamp(-1, 1))
    w = weights.double()[:, None]
    if float(theta) < 1e-6:  # (nearly) the same direction: the straight line is exact enough
        rows = (1 - w) * a64 + w * b64
    else:
        rows = (torch.sin((1 - w) * theta) * a64 + torch.sin(w * theta) * b64) / torch.sin(theta)
    return rows.to(a.dtype).view(len(weights), *a.shape)


def _alpha_sigma(schedule: Schedule, t: float) -> tuple[float, float]:
    alpha, sigma = schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64))
    return float(alpha), float(sigma)


# --- single steps (pure functions) ------------------------------------------------------------
def ddim_step(x0, eps, alpha_s, sigma_s, noise=None, noise_scale=0.0):
    """x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z   (Song et al. 2021, eq. 12)."""
    x_s = alpha_s * x0 + math.sqrt(max(sigma_s**2 - noise_scale**2, 0.0)) * eps
    return x_s + noise_scale * noise if noise_scale > 0 else x_s


def posterior_mean_std(x_t, x0, alpha_t, sigma_t, alpha_s, sigma_s):
    """q(x_s | x_t, x0) = N(mean, std^2)   (Kingma et al. 2021, eq. 28-29; Ho et al. 2020, eq. 7).

    mean = alpha_{t|s} sigma_s^2 / sigma_t^2 x_t + alpha_s sigma_{t|s}^2 / sigma_t^2 x0,
    std^2 = sigma_{t|s}^2 sigma_s^2 / sigma_t^2.
    """
    alpha_ts = alpha_t / alpha_s
    var_ts = sigma_t**2 - alpha_ts**2 * sigma_s**2
    mean = (alpha_ts * sigma_s**2 / sigma_t**2) * x_t + (alpha_s * var_ts / sigma_t**2) * x0
    return mean, math.sqrt(max(var_ts * sigma_s**2 / sigma_t**2, 0.0))


def ddim_noise_scale(eta, alpha_t, sigma_t, alpha_s, sigma_s) -> float:
    """c = eta * posterior std; eta = 1 makes a DDIM step a DDPM step."""
    var_ts = sigma_t**2 - (alpha_t / alpha_s) ** 2 * sigma_s**2
    return eta * math.sqrt(max(var_ts * sigma_s**2 / sigma_t**2, 0.0))


# --- samplers ---------------------------------------------------------------------------------
def sample_ddpm(denoise: Denoise, x_T, grid, *, schedule: Schedule, generators, callback: Callback = None):
    """Ancestral sampling from the exact posterior q(x_s | x_t, x0_hat) (Ho et al. 2020, Alg. 2)."""
    x = x_T
    for step, (t, s) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist())):
        x0, _ = denoise(x, t)
        mean, std = posterior_mean_std(x, x0, *_alpha_sigma(schedule, t), *_alpha_sigma(schedule, s))
        x = mean + std * draw_noise(generators, x.shape[1:], x.device, x.dtype) if std > 0 else mean
        if callback:
            callback(step, s, x, x0)
    return x


def sample_ddim(denoise: Denoise, x_T, grid, *, schedule: Schedule, generators=None, eta: float = 0.0,
                callback: Callback = None):
    """DDIM (Song et al. 2021): eta = 0 deterministic, eta = 1 the DDPM posterior."""
    if eta > 0 and generators is None:
        raise ValueError("DDIM with eta > 0 needs generators")
    x = x_T
    for step, (t, s) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist())):
        x0, eps = denoise(x, t)
        alpha_t, sigma_t = _alpha_sigma(schedule, t)
        alpha_s, sigma_s = _alpha_sigma(schedule, s)
        c = ddim_noise_scale(eta, alpha_t, sigma_t, alpha_s, sigma_s) if eta > 0 else 0.0
        noise = draw_noise(generators, x.shape[1:], x.device, x.dtype) if c > 0 else None
        x = ddim_step(x0, eps, alpha_s, sigma_s, noise, c)
        if callback:
            callback(step, s, x, x0)
    return x


def invert_ddim(denoise: Denoise, x_0, grid, *, schedule: Schedule, callback: Callback = None):
    """DDIM inversion: the probability-flow ODE integrated from data to noise by the Euler steps of
    sample_ddim(eta = 0) taken backwards along the same grid (Song et al. 2021, Sec. 4; Dhariwal & Nichol
    2021, App. F). The first evaluation is at t = 0, where every parameterization but x0 is finite."""
    return sample_ddim(denoise, x_0, grid.flip(0), schedule=schedule, callback=callback)


def sample_ode(denoise: Denoise, x_T, grid, *, schedule: Schedule, solver: str = "heun", callback: Callback = None):
    """Probability-flow ODE (Song et al. 2021b).

    In data-prediction variables z = x / sigma, nu = alpha / sigma the ODE is dz/dnu = x0_hat, finite at
    t = 1 for every schedule. Euler in these variables is DDIM(eta = 0). "heun" adds Heun's 2nd-order
    correction (Karras et al. 2022, Alg. 1); "dpm++2m" is DPM-Solver++(2M) (Lu et al. 2022, Alg. 2).
    The last step, onto sigma = 0, is always the Euler step, which returns x0_hat.
    """
    if solver not in ODE_SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}; expected one of {ODE_SOLVERS}")
    x, x0_last, h_last = x_T, None, None
    for step, (t, s) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist())):
        alpha_t, sigma_t = _alpha_sigma(schedule, t)
        alpha_s, sigma_s = _alpha_sigma(schedule, s)
        x0, eps = denoise(x, t)
        x_next = ddim_step(x0, eps, alpha_s, sigma_s)  # Euler step
        if solver == "heun" and sigma_s > 0:
            x0_s, _ = denoise(x_next, s)
            # z_s = z_t + (nu_s - nu_t) (x0_t + x0_s) / 2, times sigma_s, minus the Euler step:
            x_next = x_next + 0.5 * (alpha_s - sigma_s * alpha_t / sigma_t) * (x0_s - x0)
        elif solver == "dpm++2m" and sigma_s > 0:
            # h = lambda_s - lambda_t with lambda = log(alpha / sigma); exp(-h) as a ratio stays finite at alpha_t = 0.
            exp_neg_h = (alpha_t * sigma_s) / (sigma_t * alpha_s)
            h = -math.log(exp_neg_h) if exp_neg_h > 0 else math.inf
            data = x0
            if x0_last is not None and math.isfinite(h_last) and math.isfinite(h):
                r = h_last / h
                data = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_last  # 2nd-order multistep estimate
            x_next = (sigma_s / sigma_t) * x - alpha_s * (exp_neg_h - 1) * data
            x0_last, h_last = x0, h
        x = x_next
        if callback:
            callback(step, s, x, x0)
    return x


# --- stochastic samplers (score-based SDEs) ---------------------------------------------------
# The score is grad log p_t(x) = -eps_hat / sigma_t. Every noise draw comes from the per-image generators.
MAX_SDE_LOG_SNR_STEP = 2.0  # Euler-Maruyama's Langevin part inflates a Gaussian's variance by 1 / (1 - dl/4)


def log_snr_step(alpha_t, sigma_t, alpha_s, sigma_s) -> float:
    """lambda_s - lambda_t, lambda = log(alpha^2 / sigma^2); +inf from alpha_t = 0 or onto sigma_s = 0."""
    if alpha_t <= 0 or sigma_s <= 0:
        return math.inf
    return 2 * math.log((alpha_s * sigma_t) / (sigma_s * alpha_t))


def sample_sde(denoise: Denoise, x_T, grid, *, schedule: Schedule, generators, stochasticity: float = 1.0,
               callback: Callback = None):
    """The reverse-SDE family dx = [f x - (1 + l^2)/2 g^2 score] dt + l g dw (Zhang & Chen 2022, eq. 4; l = 0 the
    probability-flow ODE, l = 1 the reverse SDE of Song et al. 2021), split as Karras et al. 2022 (eq. 6) do: the
    ODE part by the ODE sampler's Euler (DDIM) step, the rest, a Langevin diffusion of strength l^2, by
    Euler-Maruyama in lambda (g^2 dt = -sigma^2 dlambda):

        x_s = ddim_step(x0_hat, eps_hat) - (l^2 / 2) sigma_t dlambda eps_hat + l sigma_t sqrt(dlambda) z

    l = 0 is the ODE sampler exactly. A step from alpha_t = 0 (pure noise) or onto sigma_s = 0 (the data) has no
    Langevin part: there dlambda is infinite. Larger dlambda makes Euler-Maruyama unstable (variance x 1/(1 -
    dlambda/4) on a Gaussian), so the engine asks for steps below MAX_SDE_LOG_SNR_STEP (log-SNR spacing helps)."""
    x = x_T
    for step, (t, s) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist())):
        x0, eps = denoise(x, t)
        alpha_t, sigma_t = _alpha_sigma(schedule, t)
        alpha_s, sigma_s = _alpha_sigma(schedule, s)
        x_next = ddim_step(x0, eps, alpha_s, sigma_s)
        d_lambda = log_snr_step(alpha_t, sigma_t, alpha_s, sigma_s)
        if stochasticity > 0 and math.isfinite(d_lambda):
            noise = draw_noise(generators, x.shape[1:], x.device, x.dtype)
            x_next = (x_next - 0.5 * stochasticity**2 * sigma_t * d_lambda * eps
                      + stochasticity * sigma_t * math.sqrt(d_lambda) * noise)
        x = x_next
        if callback:
            callback(step, s, x, x0)
    return x


def langevin_step(x, eps, sigma, step_size, noise):
    """One Langevin step on p_t: x + (a/2) score + sqrt(a) z, score = -eps_hat / sigma (a: a number or per image)."""
    return x - (0.5 * step_size / sigma) * eps + step_size**0.5 * noise


# Song et al.'s rule reads ||z|| / ||score|| of one image. In an image's D = 784 dimensions both norms concentrate
# (||z|| ~ sqrt(D), ||score|| ~ sqrt(D) / sigma, so a ~ 2 r^2 sigma^2); in two they do not, and where the score
# vanishes (a mode, a ring's centre) the step was unbounded: samples of a 2-D mixture flew to |x| = 515 (sliced W2
# 366x its noise floor, tests/test_lab2d_samplers.py). The step is capped at this many times 2 r^2 sigma^2; on
# fashion-diffusion (50 steps, 8 images, 392 corrector steps) the rule gives at most 1.75x that (median 1.05x), so
# the cap never binds on the images.
MAX_CORRECTOR_STEP_RATIO = 2.0


def corrector_step_size(eps, noise, sigma, snr: float) -> torch.Tensor:
    """Song et al. 2021, Alg. 4-5: a = 2 (r ||z|| / ||score||)^2 per image, so the step's noise is r times its drift;
    at most MAX_CORRECTOR_STEP_RATIO * 2 r^2 sigma^2, the rule's value at the norms of pure noise."""
    score_norm = (eps.flatten(1).norm(dim=1) / sigma).clamp_min(1e-12)
    ratio = snr * noise.flatten(1).norm(dim=1) / score_norm
    step = (2 * ratio**2).clamp(max=MAX_CORRECTOR_STEP_RATIO * 2 * snr**2 * sigma**2)
    return step.reshape(-1, *([1] * (eps.ndim - 1)))


def sample_pc(denoise: Denoise, x_T, grid, *, schedule: Schedule, generators, predictor: str = "ddpm",
              correctors: int = 1, snr: float = 0.16, callback: Callback = None):
    """Predictor-corrector (Song et al. 2021, Alg. 5 for VP): each step a predictor (the DDPM ancestral step or
    the DDIM / ODE-Euler step) to the next noise level, then `correctors` Langevin steps on p_s with the step
    size set by the signal-to-noise ratio r. Each corrector step costs one network evaluation; none at sigma = 0."""
    if predictor not in ("ddpm", "ddim"):
        raise ValueError(f"unknown predictor {predictor!r}; expected 'ddpm' or 'ddim'")
    x = x_T
    for step, (t, s) in enumerate(zip(grid[:-1].tolist(), grid[1:].tolist())):
        x0, eps = denoise(x, t)
        alpha_t, sigma_t = _alpha_sigma(schedule, t)
        alpha_s, sigma_s = _alpha_sigma(schedule, s)
        if predictor == "ddpm":
            mean, std = posterior_mean_std(x, x0, alpha_t, sigma_t, alpha_s, sigma_s)
            x = mean + std * draw_noise(generators, x.shape[1:], x.device, x.dtype) if std > 0 else mean
        else:
            x = ddim_step(x0, eps, alpha_s, sigma_s)
        for _ in range(correctors if sigma_s > 0 else 0):
            _, eps_s = denoise(x, s)
            noise = draw_noise(generators, x.shape[1:], x.device, x.dtype)
            x = langevin_step(x, eps_s, sigma_s, corrector_step_size(eps_s, noise, sigma_s, snr), noise)
        if callback:
            callback(step, s, x, x0)
    return x


def sample_langevin(denoise: Denoise, x_T, grid, *, schedule: Schedule, generators, langevin_steps: int = 5,
                    step_size: float = 1.0, callback: Callback = None):
    """Annealed Langevin dynamics (Song & Ermon 2019, Alg. 1; SMLD / NCSN): corrector-only sampling, T Langevin
    steps on each noise level of the grid, then x0_hat at the last level (Tweedie's formula, as NCSNv2's final
    denoising step).

    SMLD's levels are variance-exploding: the signal keeps its scale and only the noise shrinks. So the chain runs
    in x~ = x / alpha_t, whose noise is sigma~ = sigma_t / alpha_t, with step a = c sigma~^2 (their
    alpha_i = eps sigma_i^2 / sigma_L^2, c = eps / sigma_L^2) and score -eps_hat / sigma~. In x itself the signal
    scale alpha_t would move between levels faster than a low-noise chain mixes. The levels are the grid's inner
    points (its ends are pure noise and data); x_T is taken as a draw of the first level."""
    levels = grid[1:-1].tolist()
    if not levels or min(min(_alpha_sigma(schedule, t)) for t in levels) <= 0:
        raise ValueError("annealed Langevin needs a grid of at least 2 steps whose inner points are noisy images")
    x_tilde = x_T / _alpha_sigma(schedule, levels[0])[0]
    for step, t in enumerate(levels):
        alpha, sigma = _alpha_sigma(schedule, t)
        sigma_tilde = sigma / alpha
        a = step_size * sigma_tilde**2
        for _ in range(langevin_steps):
            _, eps = denoise(alpha * x_tilde, t)
            x_tilde = langevin_step(x_tilde, eps, sigma_tilde, a, draw_noise(generators, x_T.shape[1:], x_T.device, x_T.dtype))
        if callback:
            callback(step, t, alpha * x_tilde, x_tilde)
    x0, _ = denoise(_alpha_sigma(schedule, levels[-1])[0] * x_tilde, levels[-1])
    return x0


def langevin_nfe(grid_steps: int, langevin_steps: int) -> int:
    """sample_langevin's network evaluations on a grid of `grid_steps` steps: T on each inner point, then one."""
    return (grid_steps - 1) * langevin_steps + 1


def ode_nfe(solver: str, steps: int) -> int:
    """Network evaluations of sample_ode: Heun evaluates twice per step except the last."""
    return 2 * steps - 1 if solver == "heun" else steps


# --- the registry -----------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplerSpec:
    """A sampler as the engine, the app and the CLI see it: a label, the sampling function, the request fields it
    reads (passed by name), and its network evaluations for a number of steps."""

    label: str
    sample: Callable  # (denoise, x_T, grid, *, schedule, generators, callback, **options) -> x_0
    options: tuple[str, ...]
    nfe: Callable[..., int]  # (steps, **options) -> network evaluations


def _ddpm(denoise, x_T, grid, *, schedule, generators, callback=None):
    return sample_ddpm(denoise, x_T, grid, schedule=schedule, generators=generators, callback=callback)


def _ddim(denoise, x_T, grid, *, schedule, generators, callback=None, eta=0.0):
    return sample_ddim(denoise, x_T, grid, schedule=schedule, generators=generators, eta=float(eta), callback=callback)


def _ode(denoise, x_T, grid, *, schedule, generators, callback=None, solver="heun"):
    return sample_ode(denoise, x_T, grid, schedule=schedule, solver=solver, callback=callback)


# The one list of samplers: adding one here puts it in the engine's validation, the app's sampler choices, the CLI
# and the X/Y grid.
def _sde(denoise, x_T, grid, *, schedule, generators, callback=None, stochasticity=1.0):
    return sample_sde(denoise, x_T, grid, schedule=schedule, generators=generators,
                      stochasticity=float(stochasticity), callback=callback)


def _pc(denoise, x_T, grid, *, schedule, generators, callback=None, predictor="ddpm", correctors=1, snr=0.16):
    return sample_pc(denoise, x_T, grid, schedule=schedule, generators=generators, predictor=predictor,
                     correctors=int(correctors), snr=float(snr), callback=callback)


def _langevin(denoise, x_T, grid, *, schedule, generators, callback=None, langevin_steps=5, step_size=1.0):
    return sample_langevin(denoise, x_T, grid, schedule=schedule, generators=generators,
                           langevin_steps=int(langevin_steps), step_size=float(step_size), callback=callback)


SAMPLERS = {
    "ddpm": SamplerSpec("DDPM (ancestral)", _ddpm, (), lambda steps: steps),
    "ddim": SamplerSpec("DDIM", _ddim, ("eta",), lambda steps, eta=0.0: steps),
    "ode": SamplerSpec("ODE (probability flow)", _ode, ("solver",), lambda steps, solver="heun": ode_nfe(solver, steps)),
    "sde": SamplerSpec("reverse SDE (Euler-Maruyama)", _sde, ("stochasticity",), lambda steps, stochasticity=1.0: steps),
    "pc": SamplerSpec("predictor-corrector", _pc, ("predictor", "correctors", "snr"),
                      lambda steps, predictor="ddpm", correctors=1, snr=0.16: steps + int(correctors) * (steps - 1)),
    "langevin": SamplerSpec("annealed Langevin (SMLD)", _langevin, ("langevin_steps", "step_size"),
                            lambda steps, langevin_steps=5, step_size=1.0: langevin_nfe(steps, int(langevin_steps))),
}
