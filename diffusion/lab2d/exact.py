"""The exact denoiser and noisy density of a Gaussian mixture, in closed form, for any schedule.

With x_t = alpha x0 + sigma eps and x0 ~ sum_k pi_k N(mu_k, Sigma_k), each component stays Gaussian:
    x_t | k ~ N(alpha mu_k, C_k),   C_k = alpha^2 Sigma_k + sigma^2 I
    E[x0 | x_t, k] = mu_k + alpha Sigma_k C_k^-1 (x_t - alpha mu_k)              (Gaussian conditioning)
    p(k | x_t, y) = pi_k N(x_t; alpha mu_k, C_k) / sum_{j in y} pi_j N(x_t; alpha mu_j, C_j)   (k in class y)
    E[x0 | x_t, y] = sum_k p(k | x_t, y) E[x0 | x_t, k]
The unconditional model (label = the null class C) is the mixture over all classes. Everything is 2x2, so the
inverses and determinants are written out. alpha and sigma are numbers or (N,) tensors (one per row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .mixture import Mixture


def _per_row(value, like: torch.Tensor) -> torch.Tensor:
    """A number or (N,) tensor as (N or 1, 1), float64, to broadcast against (N, K)."""
    return torch.as_tensor(value, dtype=torch.float64, device=like.device).reshape(-1, 1)


def noisy_covariance_entries(mix: Mixture, alpha: torch.Tensor, sigma: torch.Tensor):
    """(a, b, c), each (N or 1, K): C_k = alpha^2 Sigma_k + sigma^2 I = [[a, b], [b, c]]."""
    s = mix.covariances
    return (alpha**2 * s[:, 0, 0] + sigma**2, alpha**2 * s[:, 0, 1], alpha**2 * s[:, 1, 1] + sigma**2)


def component_log_weights(mix: Mixture, labels: torch.Tensor | None, rows: int) -> torch.Tensor:
    """(rows, K) log p(k | y): log pi_k - log p(y) on class y's components, -inf elsewhere; label C (the null class)
    or no labels: log pi_k, the unconditional mixture."""
    log_pi = mix.weights.log()[None].expand(rows, -1)
    if labels is None:
        return log_pi
    labels = labels.to(mix.classes.device)
    unconditional = labels[:, None] == mix.num_classes
    inside = (mix.classes[None] == labels[:, None]) | unconditional  # (N, K)
    log_prior = torch.cat([mix.class_prior(), torch.ones(1, dtype=torch.float64)]).log()[labels]  # log p(y), 0 for null
    return torch.where(inside, log_pi - log_prior[:, None], torch.full_like(log_pi, -math.inf))


def joint_log_terms(mix: Mixture, x: torch.Tensor, alpha, sigma, labels):
    """(N, K) log p(k | y) + log N(x_t; alpha mu_k, C_k), and the pieces posterior_mean reuses."""
    x = x.double()
    alpha, sigma = _per_row(alpha, x), _per_row(sigma, x)
    a, b, c = noisy_covariance_entries(mix, alpha, sigma)
    det = a * c - b * b
    d = x[:, None, :] - alpha[:, :, None] * mix.means[None]  # (N, K, 2) x_t - alpha mu_k
    d1, d2 = d[..., 0], d[..., 1]
    u1, u2 = (c * d1 - b * d2) / det, (a * d2 - b * d1) / det  # u = C_k^-1 d
    log_normal = -math.log(2 * math.pi) - 0.5 * det.log() - 0.5 * (d1 * u1 + d2 * u2)
    return component_log_weights(mix, labels, len(x)) + log_normal, alpha, u1, u2


def log_density(mix: Mixture, x: torch.Tensor, alpha, sigma, labels: torch.Tensor | None = None) -> torch.Tensor:
    """(N,) log p_t(x_t | y) = logsumexp_k [log p(k | y) + log N(x_t; alpha mu_k, alpha^2 Sigma_k + sigma^2 I)]."""
    return torch.logsumexp(joint_log_terms(mix, x, alpha, sigma, labels)[0], dim=1)


def posterior_mean(mix: Mixture, x: torch.Tensor, alpha, sigma, labels: torch.Tensor | None = None) -> torch.Tensor:
    """(N, 2) E[x0 | x_t, y] = sum_k p(k | x_t, y) (mu_k + alpha Sigma_k C_k^-1 (x_t - alpha mu_k))."""
    log_terms, alpha, u1, u2 = joint_log_terms(mix, x, alpha, sigma, labels)
    responsibility = torch.softmax(log_terms, dim=1)  # (N, K)
    s = mix.covariances
    shift = torch.stack([s[:, 0, 0] * u1 + s[:, 0, 1] * u2, s[:, 0, 1] * u1 + s[:, 1, 1] * u2], -1)  # Sigma_k u
    means = mix.means[None] + alpha[:, :, None] * shift  # (N, K, 2)
    return (responsibility[..., None] * means).sum(1)


def vp_alpha_sigma(log_snr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The unit-variance form a network sees: a^2 = sigmoid(lambda), s^2 = sigmoid(-lambda), so a^2 + s^2 = 1."""
    log_snr = log_snr.double()
    return torch.sigmoid(log_snr).sqrt(), torch.sigmoid(-log_snr).sqrt()


@dataclass(frozen=True)
class ExactConfig:
    """What the Denoiser reads from a network's config: the null class (label C: unconditional) and self-conditioning."""

    num_classes: int
    self_condition: bool = False

    @property
    def null_class(self) -> int:
        return self.num_classes


class ExactNetwork(nn.Module):
    """The exact x0-prediction network of a mixture: forward(x, log_snr, labels, x0_previous) -> E[x0 | x, y].

    The Denoiser hands every network x_t / sqrt(alpha^2 + sigma^2), which is exactly a variance-preserving noisy
    point a x0 + s eps with a^2 = sigmoid(lambda), s^2 = sigmoid(-lambda): so one module serves every schedule
    (vp-cosine, vp-linear, flow) as an ordinary network with parameterization "x0". Differentiable in x (the
    PF-ODE likelihood takes its divergence)."""

    parameterization = "x0"

    def __init__(self, mix: Mixture):
        super().__init__()
        self.mixture = mix
        self.config = ExactConfig(mix.num_classes)

    def forward(self, x, log_snr, labels=None, x0_previous=None):
        a, s = vp_alpha_sigma(log_snr)
        return posterior_mean(self.mixture, x, a, s, labels).to(x.dtype)
