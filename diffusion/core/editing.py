"""Editing an image with a generative model: image-to-image (SDEdit), inpainting (RePaint), and class swap.

Like the samplers, these know nothing of a network beyond denoise(x_t, t) -> (x0_hat, eps_hat), and draw every
noise from one torch.Generator per image, so image i depends only on its own generator.

  SDEdit (Meng et al. 2022): noise the input to t0, x_t0 = alpha_t0 x + sigma_t0 eps, and run any sampler from
      t0 to 0. t0 (the "strength") decides how much of the input survives: 0 keeps it, 1 is plain generation.
  RePaint (Lugmayr et al. 2022, Alg. 1): every reverse step takes the kept pixels from the input noised to the
      new level, q(x_s | x0), and the painted pixels from the model; resampling goes back up `jump_length`
      levels by the forward process and down again, `resamplings` times, so the two parts agree.
  Class swap: DDIM inversion with the image's own class (Song et al. 2021, Sec. 4), then DDIM decoding of that
      noise with another class and guidance: what the noise encodes (pose, silhouette) stays, the class changes.

A normalizing flow has exact counterparts of SDEdit (its latent is Gaussian, so the input's latent is mixed
with fresh noise) and of the class swap (encode with one class, decode with another). Inpainting has none: a
flow's latent mixes every pixel, so the kept pixels cannot be held fixed while the rest is sampled.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .sampling import Callback, Denoise, _alpha_sigma, ddim_noise_scale, ddim_step, draw_noise, invert_ddim, sample_ddim
from .schedules import Schedule

# An x0-predicting network gives no noise estimate at t = 0 (eps = (x - alpha x0) / sigma), where DDIM inversion
# starts; for it the inversion starts here, treating the input as the (nearly clean) image at this level.
X0_INVERSION_T = 1e-3


def sdedit_start(image: torch.Tensor, noise: torch.Tensor, alpha: float, sigma: float) -> torch.Tensor:
    """x_t0 = alpha_t0 x + sigma_t0 eps   (Meng et al. 2022, eq. 3: the forward process to t0)."""
    return alpha * image + sigma * noise


def strength_angle(strength: float) -> tuple[float, float]:
    """A flow's latent mix at strength s: (cos(pi s / 2), sin(pi s / 2)), the variance-preserving pair that keeps a
    standard normal latent standard normal (the vp-cosine schedule's alpha and sigma at t = s)."""
    return math.cos(math.pi * strength / 2), math.sin(math.pi * strength / 2)


def mix_latent(latent: torch.Tensor, noise: torch.Tensor, strength: float) -> torch.Tensor:
    """z_s = cos(pi s / 2) z + sin(pi s / 2) eps: SDEdit's counterpart in a normalizing flow's Gaussian latent."""
    keep, fresh = strength_angle(strength)
    return keep * latent + fresh * noise


# --- RePaint ------------------------------------------------------------------------------------
def repaint_positions(steps: int, jump_length: int, resamplings: int) -> list[int]:
    """The grid positions RePaint visits after the start at position 0 (t = 1), ending at `steps` (t = 0).

    A move to position + 1 is a reverse step with the model, a move to position - 1 a forward (re-noising) step.
    Lugmayr et al. 2022, Sec. 4.2: after every `jump_length` reverse steps (except the last `jump_length`), jump
    back up `jump_length` levels and come down again, `resamplings - 1` times. resamplings = 1 is the plain
    "replace the known region" sampler without resampling.
    """
    remaining = {level: resamplings - 1 for level in range(0, steps - jump_length, jump_length)}
    positions, level = [], steps  # level counts reverse steps still to take: level L is position steps - L
    while level >= 1:
        level -= 1
        positions.append(steps - level)
        if remaining.get(level, 0) > 0:
            remaining[level] -= 1
            for _ in range(jump_length):
                level += 1
                positions.append(steps - level)
    return positions


def repaint_nfe(steps: int, jump_length: int, resamplings: int) -> int:
    """Network evaluations of RePaint: one per reverse step, resampled ones included."""
    positions = [0, *repaint_positions(steps, jump_length, resamplings)]
    return sum(1 for a, b in zip(positions, positions[1:]) if b == a + 1)


def repaint(denoise: Denoise, x_T: torch.Tensor, image: torch.Tensor, keep: torch.Tensor, grid: torch.Tensor, *,
            schedule: Schedule, generators: Sequence[torch.Generator], jump_length: int = 10, resamplings: int = 10,
            eta: float = 1.0, callback: Callback = None) -> torch.Tensor:
    """RePaint (Lugmayr et al. 2022, Alg. 1) on a decreasing grid from t = 1 to 0.

    keep: 1 where the input image is kept, 0 where the model paints (broadcast over channels). A reverse step
    t -> s draws one noise z per image and sets
        known   = alpha_s x + sigma_s z                          (q(x_s | x0), line 5)
        unknown = the DDIM step with eta (eta = 1: the DDPM posterior sample, line 7)
        x_s     = keep * known + (1 - keep) * unknown            (line 8)
    Sharing z between the two parts changes nothing for a 0/1 mask (they use disjoint pixels of an i.i.d. draw).
    A forward step s -> t draws x_t ~ q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I) (line 10). After the last
    step (alpha = 1, sigma = 0) the kept pixels are the input exactly.
    """
    times = grid.tolist()
    x, position = x_T, 0
    for step, target in enumerate(repaint_positions(len(times) - 1, jump_length, resamplings)):
        if target == position + 1:
            t, s = times[position], times[target]
            x0, eps = denoise(x, t)
            (alpha_t, sigma_t), (alpha_s, sigma_s) = _alpha_sigma(schedule, t), _alpha_sigma(schedule, s)
            noise = draw_noise(generators, x.shape[1:], x.device, x.dtype)
            scale = ddim_noise_scale(eta, alpha_t, sigma_t, alpha_s, sigma_s) if eta > 0 else 0.0
            unknown = ddim_step(x0, eps, alpha_s, sigma_s, noise, scale)
            known = alpha_s * image + sigma_s * noise
            x = keep * known + (1 - keep) * unknown
            if callback:
                callback(step, s, x, x0)
        else:
            s, t = times[position], times[target]
            (alpha_s, sigma_s), (alpha_t, sigma_t) = _alpha_sigma(schedule, s), _alpha_sigma(schedule, t)
            alpha_ts = alpha_t / alpha_s  # alpha_{t|s}; sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2
            sigma_ts = math.sqrt(max(sigma_t**2 - alpha_ts**2 * sigma_s**2, 0.0))
            x = alpha_ts * x + sigma_ts * draw_noise(generators, x.shape[1:], x.device, x.dtype)
        position = target
    return x


# --- class swap by inversion ---------------------------------------------------------------------
def inversion_grid(grid: torch.Tensor, parameterization: str) -> torch.Tensor:
    """The grid DDIM inversion walks backwards: the sampling grid, except that an x0-predicting network starts
    at X0_INVERSION_T instead of 0 (it has no noise estimate at t = 0)."""
    if parameterization != "x0":
        return grid
    start = grid.clone()
    start[-1] = min(X0_INVERSION_T, float(grid[-2]) / 2)
    return start


def swap_class(invert: Denoise, decode: Denoise, image: torch.Tensor, grid: torch.Tensor, *, schedule: Schedule,
               parameterization: str, callback: Callback = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(latent, edited): invert `image` to noise along `grid` with `invert` (the image's own class, no guidance),
    then decode with `decode` (the target class and its guidance) by DDIM on the same grid. With the same class
    and no guidance this is the Families tab's encode-decode round trip."""
    latent = invert_ddim(invert, image, inversion_grid(grid, parameterization), schedule=schedule)
    return latent, sample_ddim(decode, latent, grid, schedule=schedule, callback=callback)
