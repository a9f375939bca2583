"""The one call samplers make: denoise(x_t, t) -> (x0_hat, eps_hat).

A Denoiser binds a network to a schedule and a parameterization, and carries the per-request state:
the class labels, guidance, and the self-conditioning estimate from the previous call. Make one per
sampling run (they are cheap; the network is shared), never share one between requests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .parameterization import to_x0_eps
from .schedules import Schedule

# Below this log-SNR classifier guidance is off. There the noisy classifier is at chance (10.8 % at
# log-SNR -10 on the test set), so the true grad log p(y | x_t) is ~0, while the classifier's leftover
# gradient, moved into x0 by sigma^2 / alpha (1800x at the vp-cosine end, log-SNR -15), wrecked the
# first DDIM step: evaluator accuracy fell from 0.61 to 0.32 as the scale rose from 1 to 8.
CLASSIFIER_GUIDANCE_MIN_LOG_SNR = -10.0


def network_prediction(network: nn.Module, x_t, alpha, sigma, log_snr, labels=None, x0_previous=None):
    """Run the network on x_t scaled to unit variance, x_t / sqrt(alpha^2 + sigma^2), told the log-SNR."""
    scaled = x_t / (alpha**2 + sigma**2) ** 0.5
    return network(scaled, log_snr, labels, x0_previous)


@dataclass(frozen=True)
class Guidance:
    """mode "none": the (conditional) model as is; "cfg": classifier-free guidance with scale w
    (w = 0 unconditional, w = 1 conditional, w > 1 guided); "classifier": the unconditional model
    plus `scale` times the noisy classifier's gradient."""

    mode: str = "none"
    scale: float = 1.0

    def __post_init__(self):
        if self.mode not in ("none", "cfg", "classifier"):
            raise ValueError(f"unknown guidance mode {self.mode!r}; expected 'none', 'cfg' or 'classifier'")
        if not math.isfinite(self.scale):
            raise ValueError(f"guidance scale must be finite, got {self.scale}")


class Denoiser:
    """Callable (x_t, t) -> (x0_hat, eps_hat) for one sampling run.

    t is a Python float shared by the batch. With trace_guidance, `trace` records per-call guidance strength
    (mean per-image norm of eps_cond - eps_uncond, or of the classifier term) for teaching plots; it is off by
    default because reading the number back synchronises a GPU every step.
    """

    def __init__(self, network: nn.Module, schedule: Schedule, parameterization: str, *, labels=None,
                 guidance: Guidance = Guidance(), classifier: nn.Module | None = None,
                 self_condition: bool = False, clip_x0: bool = False, trace_guidance: bool = False):
        config = getattr(network, "config", None)
        self.null_class = getattr(config, "null_class", None)
        if guidance.mode == "cfg" and self.null_class is None:
            raise ValueError("classifier-free guidance needs a class-conditional network with a null class")
        if guidance.mode != "none" and labels is None:
            raise ValueError(f"guidance mode {guidance.mode!r} needs class labels")
        if guidance.mode == "classifier" and classifier is None:
            raise ValueError("classifier guidance needs a noisy classifier")
        if self_condition and not getattr(config, "self_condition", False):
            raise ValueError("this network was not trained with self-conditioning")
        self.network, self.schedule, self.parameterization = network, schedule, parameterization
        self.labels, self.guidance, self.classifier = labels, guidance, classifier
        self.self_condition, self.clip_x0 = self_condition, clip_x0
        self.x0_previous = None  # (B or 2B, C, H, W) once a call has been made with self-conditioning on
        self.nfe = 0
        self.trace_guidance = trace_guidance
        self.trace: list[tuple[float, float]] = []  # (log-SNR, guidance strength)

    def __call__(self, x_t: torch.Tensor, t: float):
        self.nfe += 1
        alpha, sigma = (float(v) for v in self.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        log_snr = float(self.schedule.log_snr(torch.tensor(t, dtype=torch.float64)))
        if self.guidance.mode == "cfg":
            x0, eps = self._cfg(x_t, alpha, sigma, log_snr)
        else:
            labels = self.labels
            if self.guidance.mode == "classifier" or labels is None:
                labels = self._null_labels(x_t) if self.null_class is not None else None
            x0, eps = self._predict(x_t, alpha, sigma, log_snr, labels)
            if self.guidance.mode == "classifier":
                x0, eps = self._classifier_guidance(x_t, x0, eps, alpha, sigma, log_snr)
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = (x_t - alpha * x0) / sigma if sigma > 0 else eps
        return x0, eps

    # --- guidance --------------------------------------------------------------------------
    def _cfg(self, x_t, alpha, sigma, log_snr):
        # Ho & Salimans 2022: eps = eps_u + w (eps_c - eps_u); both rows in one forward call.
        batch = x_t.shape[0]
        labels = torch.cat([self.labels, self._null_labels(x_t)])
        x0, eps = self._predict(torch.cat([x_t, x_t]), alpha, sigma, log_snr, labels)  # (2B, ...)
        (x0_c, x0_u), (eps_c, eps_u) = x0.split(batch), eps.split(batch)
        w = self.guidance.scale
        self._record(log_snr, eps_c - eps_u)
        return x0_u + w * (x0_c - x0_u), eps_u + w * (eps_c - eps_u)

    def _classifier_guidance(self, x_t, x0, eps, alpha, sigma, log_snr):
        # Dhariwal & Nichol 2021: eps <- eps - s * sigma * grad_x log p(y | x_t); x0 follows from x_t.
        if log_snr < CLASSIFIER_GUIDANCE_MIN_LOG_SNR:  # x_t says ~nothing about y: p(y | x_t) ~ p(y)
            self._record(log_snr, torch.zeros_like(eps))
            return x0, eps
        gradient = classifier_log_prob_gradient(self.classifier, x_t, alpha, sigma, log_snr, self.labels)
        shift = self.guidance.scale * sigma * gradient
        self._record(log_snr, shift)
        eps = eps - shift
        return (x_t - sigma * eps) / alpha, eps

    def _record(self, log_snr: float, difference: torch.Tensor):
        if self.trace_guidance:
            self.trace.append((log_snr, float(difference.flatten(1).norm(dim=1).mean())))

    # --- network call ----------------------------------------------------------------------
    def _predict(self, x_t, alpha, sigma, log_snr, labels):
        x0_previous = None
        if self.self_condition:
            x0_previous = self.x0_previous if self.x0_previous is not None else torch.zeros_like(x_t)
        log_snr_batch = torch.full((x_t.shape[0],), log_snr, device=x_t.device)
        prediction = network_prediction(self.network, x_t, alpha, sigma, log_snr_batch, labels, x0_previous)
        x0, eps = to_x0_eps(self.parameterization, prediction.float(), x_t, alpha, sigma)
        if self.self_condition:
            self.x0_previous = x0  # Chen et al. 2022 ("Analog Bits"): feed back the last x0 estimate
        return x0, eps

    def _null_labels(self, x_t):
        return torch.full((x_t.shape[0],), self.null_class, device=x_t.device, dtype=torch.long)


def classifier_log_prob_gradient(classifier, x_t, alpha, sigma, log_snr, labels):
    """grad_x log p(y | x_t) from a noisy classifier, also when called under torch.inference_mode().

    Inference mode forbids autograd even inside enable_grad(), so the gradient is taken in a block
    with inference mode switched off, on a fresh (non-inference) copy of x_t.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = x_t.detach().clone().requires_grad_(True)
        log_snr_batch = torch.full((x.shape[0],), log_snr, device=x.device)
        scaled = x / math.sqrt(alpha**2 + sigma**2)
        log_probs = torch.log_softmax(classifier(scaled, log_snr_batch).float(), dim=-1)
        selected = log_probs.gather(1, labels.clone()[:, None]).sum()
        (gradient,) = torch.autograd.grad(selected, x)
    return gradient.detach()
