"""How straight a sampler's paths are (Liu, Gong & Liu 2022, "Flow Straight and Fast", Sec. 2.2 and eq. 4).

Any model is read in its flow-equivalent coordinates: y = x_t / (alpha_t + sigma_t) at time s = sigma_t / (alpha_t +
sigma_t). A prediction (x0_hat, eps_hat) at x_t says y = (1 - s) x0_hat + s eps_hat, so its velocity is
dy/ds = eps_hat - x0_hat; for a rectified flow (alpha = 1 - t, sigma = t) y = x_t, s = t and this is the network's
own output. A path from noise z (s = 1) to image x (s = 0) is straight when every velocity on it equals z - x:

    S = integral_0^1 || (z - x) - v(y_s, s) ||^2 ds      (per pixel here, i.e. divided by the dimension D)

zero for straight paths; one Euler step is exact on them. DDIM (eta = 0) is the Euler method in these coordinates,
so its steps give the velocities and the quadrature weights (left Riemann sum over the grid).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampling import Denoise, sample_ddim
from .schedules import Schedule


def flow_time(alpha: float, sigma: float) -> float:
    """s = sigma / (alpha + sigma): 0 at data, 1 at noise."""
    return sigma / (alpha + sigma)


def flow_velocity(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """dy/ds = eps_hat - x0_hat for y = (1 - s) x0_hat + s eps_hat."""
    return eps - x0


def straightness(s: torch.Tensor, velocities: torch.Tensor, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-image S = sum_i (s_i - s_{i+1}) mean_pixels((z - x) - v_i)^2 over a decreasing grid s_0..s_N.

    s: (N + 1,) flow times; velocities: (N, B, C, H, W), v_i at s_i; z, x: (B, C, H, W) the path's ends."""
    weights = (s[:-1] - s[1:]).to(velocities.dtype)  # (N,)
    return (weights[:, None] * velocity_deviation(velocities, z, x) ** 2).sum(0)


def velocity_deviation(velocities: torch.Tensor, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N, B): the root-mean-square over pixels of v_i - (z - x), per step and image."""
    return (velocities - (z - x)[None]).pow(2).flatten(2).mean(-1).sqrt()


@dataclass
class PathReadout:
    s: torch.Tensor  # (N + 1,) flow times of the grid
    deviation: torch.Tensor  # (N, B) rms of v_i - (z - x) per pixel
    per_image: torch.Tensor  # (B,) straightness S
    images: torch.Tensor  # (B, C, H, W) the path's end x

    @property
    def mean(self) -> float:
        return float(self.per_image.mean())


def readout_from_trajectory(schedule: Schedule, grid: torch.Tensor, x_T: torch.Tensor, trajectory) -> PathReadout:
    """Straightness of a recorded path: trajectory[i] = (step, t_{i+1}, x_{t_{i+1}}, x0_hat evaluated at t_i), as the
    engine and the samplers' callbacks give it. The velocity at t_i is eps_hat - x0_hat with eps_hat recovered from
    x_{t_i} = alpha x0_hat + sigma eps_hat; for DDIM / ODE-Euler this is exactly the step taken, for multi-evaluation
    solvers it is each step's first evaluation."""
    alpha_sigma = [tuple(float(v) for v in schedule.alpha_sigma(t)) for t in grid]
    s = torch.tensor([flow_time(a, sg) for a, sg in alpha_sigma], dtype=torch.float64)
    states = [x_T] + [x for _, _, x, _ in trajectory]
    velocities = []
    for i, (_, _, _, x0) in enumerate(trajectory):
        alpha, sigma = alpha_sigma[i]
        eps = (states[i] - alpha * x0) / sigma
        velocities.append(flow_velocity(x0, eps))
    a1, s1 = alpha_sigma[0]
    z, x = x_T / (a1 + s1), states[-1]
    v = torch.stack(velocities)
    return PathReadout(s, velocity_deviation(v, z, x), straightness(s, v, z, x), x)


@torch.no_grad()
def measure_straightness(denoise: Denoise, x_T: torch.Tensor, grid: torch.Tensor, schedule: Schedule) -> PathReadout:
    """Integrate the model's ODE with DDIM (Euler in flow coordinates) on `grid` and read the path's straightness."""
    trajectory = []
    sample_ddim(denoise, x_T, grid, schedule=schedule,
                callback=lambda step, t, x, x0: trajectory.append((step, t, x.float().cpu(), x0.float().cpu())))
    return readout_from_trajectory(schedule, grid, x_T.float().cpu(), trajectory)
