"""The training objective: noise an image at a random time, regress the parameterization's target."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .denoiser import network_prediction
from .parameterization import check_parameterization, to_x0_eps, training_target
from .schedules import Schedule

TIME_SAMPLINGS = ("uniform", "logit-normal")


@dataclass(frozen=True)
class ObjectiveConfig:
    schedule: str = "vp-cosine"
    parameterization: str = "v"
    self_condition: bool = True
    label_dropout: float = 0.1  # probability of replacing the label by the null class (for CFG)
    time_sampling: str = "uniform"  # or "logit-normal" (Esser et al. 2024, SD3: t = sigmoid(N(m, s^2)))
    logit_mean: float = 0.0
    logit_std: float = 1.0
    uniform_fraction: float = 0.0  # logit-normal only: this share of t is drawn uniformly, so the ends are seen
    min_snr_gamma: float = 0.0  # > 0: Min-SNR-gamma weighting (Hang et al. 2023)

    def __post_init__(self):
        Schedule(self.schedule)
        check_parameterization(self.parameterization)
        if self.time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time_sampling {self.time_sampling!r}; expected one of {TIME_SAMPLINGS}")
        if not 0 <= self.label_dropout <= 1:
            raise ValueError(f"label_dropout must be in [0, 1], got {self.label_dropout}")

    to_dict = asdict


def q_sample(schedule: Schedule, x0, t, eps):
    """x_t = alpha_t x0 + sigma_t eps, t of shape (B,), x0 of shape (B, ...): images (B, C, H, W) or points (B, D)."""
    alpha, sigma = (v.to(x0.dtype).reshape(-1, *[1] * (x0.ndim - 1)) for v in schedule.alpha_sigma(t))
    return alpha * x0 + sigma * eps, alpha, sigma


def sample_times(config: ObjectiveConfig, batch: int, device) -> torch.Tensor:
    uniform = torch.rand(batch, device=device)
    if config.time_sampling == "uniform":
        return uniform
    logit_normal = torch.sigmoid(config.logit_mean + config.logit_std * torch.randn(batch, device=device))
    use_uniform = torch.rand(batch, device=device) < config.uniform_fraction
    return torch.where(use_uniform, uniform, logit_normal)


def diffusion_loss(network: nn.Module, x0: torch.Tensor, labels: torch.Tensor | None, config: ObjectiveConfig,
                   noise: torch.Tensor | None = None):
    """Mean squared error of the prediction against its target, averaged over the batch.

    `noise` is eps drawn independently of x0 unless given: reflow passes the noise each image was decoded from
    (Liu et al. 2022), so on the flow schedule x_t = (1 - t) x + t z and the flow target is z - x.

    Classifier-free label dropout replaces labels with the network's null class. Self-conditioning
    (Chen et al. 2022): on half the batches the first x0 estimate is made under torch.no_grad() (not
    inference_mode: its tensors could not be saved for backward) and fed in, detached.
    """
    schedule = Schedule(config.schedule)
    batch = x0.shape[0]
    t = sample_times(config, batch, x0.device)
    eps = torch.randn_like(x0) if noise is None else noise
    x_t, alpha, sigma = q_sample(schedule, x0, t, eps)
    log_snr = schedule.log_snr(t).float()

    null_class = getattr(getattr(network, "module", network).config, "null_class", None)  # unwrap DDP
    if labels is not None and null_class is not None and config.label_dropout > 0:
        dropped = torch.rand(batch, device=x0.device) < config.label_dropout
        labels = torch.where(dropped, torch.full_like(labels, null_class), labels)

    x0_previous = None
    if config.self_condition:
        x0_previous = torch.zeros_like(x0)
        if torch.rand(()) < 0.5:
            with torch.no_grad():
                first = network_prediction(network, x_t, alpha, sigma, log_snr, labels, x0_previous)
                x0_previous = to_x0_eps(config.parameterization, first, x_t, alpha, sigma)[0].detach()

    prediction = network_prediction(network, x_t, alpha, sigma, log_snr, labels, x0_previous)
    target = training_target(config.parameterization, x0, eps, alpha, sigma)
    per_image = (prediction.float() - target).pow(2).flatten(1).mean(dim=1)
    if config.min_snr_gamma > 0:
        per_image = per_image * min_snr_weight(config, alpha, sigma).flatten()
    return per_image.mean()


def min_snr_weight(config: ObjectiveConfig, alpha, sigma):
    """Weight on the target's MSE equal to min(SNR, gamma) times the x0-error per target-error squared.

    x0_hat is linear in the prediction with slope b (to_x0_eps with x_t = 0), so x0-MSE = b^2 target-MSE.
    """
    snr = (alpha / sigma.clamp_min(1e-8)) ** 2
    slope, _ = to_x0_eps(config.parameterization, torch.ones_like(alpha), torch.zeros_like(alpha),
                         alpha.clamp_min(1e-8), sigma.clamp_min(1e-8))
    return snr.clamp(max=config.min_snr_gamma) * slope**2
