"""What the network predicts, and the one map from any prediction to (x0_hat, eps_hat).

With x_t = alpha * x0 + sigma * eps, the supported targets are
    eps   the noise                                  (Ho et al. 2020)
    x0    the clean image
    v     alpha * eps - sigma * x0                   (Salimans & Ho 2022)
    flow  eps - x0, the rectified-flow velocity      (Liu et al. 2022; Lipman et al. 2022)
Each is a linear function of (x0, eps); inverting the 2x2 system together with x_t gives both back.
"""

from __future__ import annotations

import torch

PARAMETERIZATIONS = ("eps", "x0", "v", "flow")


def check_parameterization(name: str) -> str:
    if name not in PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {name!r}; expected one of {PARAMETERIZATIONS}")
    return name


def training_target(name: str, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """The regression target of parameterization `name`."""
    if name == "eps":
        return eps
    if name == "x0":
        return x0
    if name == "v":
        return alpha * eps - sigma * x0  # v = alpha * eps - sigma * x0
    if name == "flow":
        return eps - x0  # u = d x_t / dt for alpha = 1 - t, sigma = t
    raise ValueError(f"unknown parameterization {name!r}")


def to_x0_eps(name: str, prediction: torch.Tensor, x_t: torch.Tensor, alpha, sigma):
    """Solve {x_t = alpha x0 + sigma eps, prediction = target(x0, eps)} for (x0_hat, eps_hat).

    eps-prediction divides by alpha and x0-prediction by sigma: the caller must not ask for
    eps at alpha = 0 or x0 at sigma = 0 (samplers never evaluate the network at t = 0).
    """
    if name == "eps":
        return (x_t - sigma * prediction) / alpha, prediction
    if name == "x0":
        return prediction, (x_t - alpha * prediction) / sigma
    if name == "v":
        norm = alpha**2 + sigma**2  # determinant of [[alpha, sigma], [-sigma, alpha]]
        return (alpha * x_t - sigma * prediction) / norm, (sigma * x_t + alpha * prediction) / norm
    if name == "flow":
        norm = alpha + sigma  # determinant of [[alpha, sigma], [-1, 1]]
        return (x_t - sigma * prediction) / norm, (x_t + alpha * prediction) / norm
    raise ValueError(f"unknown parameterization {name!r}")
