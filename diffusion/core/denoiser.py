"""The one call samplers make: denoise(x_t, t) -> (x0_hat, eps_hat).

A Denoiser binds a network to a schedule and a parameterization, and carries the per-request state:
the class labels, guidance, and the self-conditioning estimate from the previous call. Make one per
sampling run (they are cheap; the network is shared), never share one between requests.
"""

from __future__ import annotations

import math
import torch
from torch import nn

from .guidance import AdaptiveProjectedGuidance, Guidance, cfg_combine, dynamic_threshold, rescale_to_conditional
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


class Denoiser:
    """Callable (x_t, t) -> (x0_hat, eps_hat) for one sampling run.

    t is a Python float shared by the batch. `guide` is autoguidance's weaker model, (network, parameterization),
    called on the same x_t and labels. With trace_guidance, `trace` records per-call guidance strength (mean
    per-image norm of eps_cond - eps_uncond, or of the classifier term) for teaching plots; it is off by default
    because reading the number back synchronises a GPU every step.
    """

    def __init__(self, network: nn.Module, schedule: Schedule, parameterization: str, *, labels=None,
                 guidance: Guidance = Guidance(), classifier: nn.Module | None = None,
                 guide: tuple[nn.Module, str] | None = None,
                 self_condition: bool = False, clip_x0: bool = False, trace_guidance: bool = False):
        config = getattr(network, "config", None)
        self.null_class = getattr(config, "null_class", None)
        if guidance.mode == "cfg" and self.null_class is None:
            raise ValueError("classifier-free guidance needs a class-conditional network with a null class")
        if guidance.mode != "none" and labels is None:
            raise ValueError(f"guidance mode {guidance.mode!r} needs class labels")
        if guidance.mode == "classifier" and classifier is None:
            raise ValueError("classifier guidance needs a noisy classifier")
        if guidance.mode == "autoguidance" and guide is None:
            raise ValueError("autoguidance needs a guide: a weaker model of the same family")
        if (guidance.rescale or guidance.uses_apg) and not guidance.pairs_predictions:
            raise ValueError("CFG rescale and APG modify classifier-free guidance or autoguidance")
        if self_condition and not getattr(config, "self_condition", False):
            raise ValueError("this network was not trained with self-conditioning")
        self.network, self.schedule, self.parameterization = network, schedule, parameterization
        self.labels, self.guidance, self.classifier, self.guide = labels, guidance, classifier, guide
        self.self_condition, self.clip_x0 = self_condition, clip_x0
        self.apg = AdaptiveProjectedGuidance(guidance.apg_eta, guidance.apg_norm, guidance.apg_momentum) \
            if guidance.uses_apg else None
        self.x0_previous: dict[str, torch.Tensor] = {}  # self-conditioning: last x0_hat of each branch
        self.nfe = 0
        self.trace_guidance = trace_guidance
        self.trace: list[tuple[float, float]] = []  # (log-SNR, guidance strength)

    def __call__(self, x_t: torch.Tensor, t: float):
        self.nfe += 1
        alpha, sigma = (float(v) for v in self.schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        log_snr = float(self.schedule.log_snr(torch.tensor(t, dtype=torch.float64)))
        g = self.guidance
        if g.pairs_predictions and g.active_at(log_snr):
            x0, eps = self._paired(x_t, alpha, sigma, log_snr)
        else:
            labels = self.labels
            if g.mode == "classifier" or labels is None:
                labels = self._null_labels(x_t) if self.null_class is not None else None
            x0, eps = self._predict(x_t, alpha, sigma, log_snr, labels, "cond")
            if g.mode == "classifier" and g.active_at(log_snr):
                x0, eps = self._classifier_guidance(x_t, x0, eps, alpha, sigma, log_snr)
        if g.threshold:
            x0 = dynamic_threshold(x0, g.threshold)
            eps = self._eps_from(x_t, x0, alpha, sigma, eps)
        if self.clip_x0:
            x0 = x0.clamp(-1, 1)
            eps = self._eps_from(x_t, x0, alpha, sigma, eps)
        return x0, eps

    @staticmethod
    def _eps_from(x_t, x0, alpha, sigma, eps):
        """eps_hat consistent with a modified x0_hat: x_t = alpha x0 + sigma eps (at sigma = 0 eps is kept)."""
        return (x_t - alpha * x0) / sigma if sigma > 0 else eps

    # --- guidance --------------------------------------------------------------------------
    def _paired(self, x_t, alpha, sigma, log_snr):
        """CFG or autoguidance, with their modifiers: the guided prediction from a strong and a weak one."""
        g = self.guidance
        if g.mode == "cfg":  # conditional and unconditional rows in one forward call
            batch = x_t.shape[0]
            labels = torch.cat([self.labels, self._null_labels(x_t)])
            x0, eps = self._predict(torch.cat([x_t, x_t]), alpha, sigma, log_snr, labels, "cond", "uncond")
            (x0_c, x0_u), (eps_c, eps_u) = x0.split(batch), eps.split(batch)
        else:  # Karras et al. 2024: the weak model sees the same x_t and class; two networks, two calls
            x0_c, eps_c = self._predict(x_t, alpha, sigma, log_snr, self.labels, "cond")
            x0_u, eps_u = self._predict(x_t, alpha, sigma, log_snr, self.labels, "guide")
        self._record(log_snr, eps_c - eps_u)
        w = g.scale
        if self.apg is None and not g.rescale:
            return cfg_combine(x0_c, x0_u, w), cfg_combine(eps_c, eps_u, w)
        x0 = self.apg(x0_c, x0_u, w) if self.apg is not None else cfg_combine(x0_c, x0_u, w)
        x0 = rescale_to_conditional(x0, x0_c, g.rescale)
        return x0, self._eps_from(x_t, x0, alpha, sigma, cfg_combine(eps_c, eps_u, w))

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
    def _predict(self, x_t, alpha, sigma, log_snr, labels, *branches: str):
        """x0_hat, eps_hat from the network ("cond", "uncond" rows) or the guide ("guide"); rows of the named
        branches in order, each branch with its own self-conditioning estimate."""
        network, parameterization = self.guide if branches == ("guide",) else (self.network, self.parameterization)
        rows = x_t.shape[0] // len(branches)
        use_previous = self.self_condition and getattr(getattr(network, "config", None), "self_condition", False)
        x0_previous = None
        if use_previous:
            x0_previous = torch.cat([self.x0_previous.get(b, torch.zeros_like(x_t[:rows])) for b in branches])
        log_snr_batch = torch.full((x_t.shape[0],), log_snr, device=x_t.device)
        prediction = network_prediction(network, x_t, alpha, sigma, log_snr_batch, labels, x0_previous)
        x0, eps = to_x0_eps(parameterization, prediction.float(), x_t, alpha, sigma)
        if use_previous:  # Chen et al. 2022 ("Analog Bits"): feed back the last x0 estimate
            self.x0_previous.update(zip(branches, x0.split(rows)))
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
