"""Likelihood: every model of the playground on one axis, bits per dimension of held-out images.

Units. Data live in [-1, 1], so pixel value k in 0..255 owns the bin [2k/256 - 1, 2(k+1)/256 - 1) of width 2/256.
Uniform dequantization x = 2(k + u)/256 - 1, u ~ U[0, 1)^D, turns a density p into a bound on the discrete
probability (Theis et al. 2016): log P(k) >= E_u log p(x) + D log(2/256). Bits per dimension:
    bits/dim = -(log p(x) + D log(2/256)) / (D ln 2)

Diffusion and flow models: the probability-flow ODE (Song et al. 2021, "Score-Based Generative Modeling through
SDEs", Sec. 4.3 and App. D) is dx/dt = f(x, t) = alpha'(t) x0_hat + sigma'(t) eps_hat, the deterministic path
with the model's marginals (x_t = alpha_t x0_hat + sigma_t eps_hat differentiated along the DDIM path). The
instantaneous change of variables (Chen et al. 2018, "Neural ODEs"; Grathwohl et al. 2019, FFJORD) gives
    log p_eps(x) = log p_1(x_1) + integral_eps^1 div f(x_t, t) dt,
integrated from t = eps (x_eps := x) to t = 1 with an adaptive solver (torchdiffeq's dopri5). The divergence is
Hutchinson's estimate v^T (df/dx) v with a Rademacher probe v fixed per image (one vector-Jacobian product per
evaluation), or exact (D backward passes) for small inputs and tests.

The end point: p_1 is taken to be N(0, sigma_1^2 I). That is exact for the flow schedule (alpha_1 = 0). vp-cosine
ends at alpha_1 = 5.5e-4 and vp-linear at alpha_1 = 6.4e-3: there p_1 is the data scaled by alpha_1 plus
N(0, sigma_1^2 I), and KL(p_1 || N(0, sigma_1^2 I)) <= alpha_1^2 E||x0||^2 / (2 sigma_1^2) <= alpha_1^2 D / 2 for
data in [-1, 1]: 1.2e-4 nats (2e-7 bits/dim) and 0.016 nats (3e-5 bits/dim) at D = 784, far below the error bars.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .denoiser import Denoiser
from .schedules import Schedule

BIN_WIDTH = 2 / 256  # one 8-bit level in the [-1, 1] data range
DIVERGENCES = ("hutchinson", "exact")


def uniform_dequantize(pixels_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 pixels k -> 2(k + u)/256 - 1 with u ~ U[0, 1) drawn (on the CPU) from `generator`."""
    u = torch.rand(pixels_uint8.shape, generator=generator)
    return ((pixels_uint8.cpu().double() + u.double()) * BIN_WIDTH - 1).float().to(pixels_uint8.device)


def dequantize_each(pixels_uint8: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """uniform_dequantize with image i's noise from generators[i], so it does not depend on the batch."""
    return torch.stack([uniform_dequantize(p, g) for p, g in zip(pixels_uint8, generators)])


def rademacher_probes(generators: Sequence[torch.Generator], shape) -> torch.Tensor:
    """One probe v in {-1, +1}^shape per generator (E[v v^T] = I), drawn on the CPU."""
    return torch.stack([torch.randint(0, 2, tuple(shape), generator=g).float() * 2 - 1 for g in generators])


def bits_per_dim(log_density: torch.Tensor, dims: int) -> torch.Tensor:
    """-(log p(x) + D log(2/256)) / (D ln 2): nats of a density on [-1, 1]^D -> bits per 8-bit dimension."""
    return -(log_density + dims * math.log(BIN_WIDTH)) / (dims * math.log(2))


def gaussian_log_density(x: torch.Tensor, std: float) -> torch.Tensor:
    """log N(x; 0, std^2 I) per image (B,) = -D/2 log(2 pi std^2) - ||x||^2 / (2 std^2)."""
    flat = x.flatten(1).double()
    return -0.5 * flat.shape[1] * math.log(2 * math.pi * std**2) - flat.pow(2).sum(1) / (2 * std**2)


@dataclass(frozen=True)
class ODELikelihoodConfig:
    """How the probability-flow ODE is integrated. Song et al. 2021 (App. D) use eps = 1e-5 and
    rtol = atol = 1e-5 with RK45; ours are the same numbers with torchdiffeq's dopri5."""

    rtol: float = 1e-5
    atol: float = 1e-5
    t_start: float = 1e-5  # eps: the ODE starts here with x_eps := x (the network is never asked at t = 0)
    divergence: str = "hutchinson"  # or "exact": D backward passes per evaluation, for small inputs

    def __post_init__(self):
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"unknown divergence {self.divergence!r}; expected one of {DIVERGENCES}")
        if not (0 < self.t_start < 0.5):
            raise ValueError(f"t_start must be in (0, 0.5), got {self.t_start}")
        if not (0 < self.rtol < 1 and 0 < self.atol < 1):
            raise ValueError(f"rtol and atol must be in (0, 1), got {self.rtol}, {self.atol}")


@dataclass
class LikelihoodResult:
    """log p(x) per image, split into the prior term and the path (flow: exact log-det; ODE: the divergence
    integral, recorded at `times` so that plots show where along t the likelihood is gained)."""

    log_density: torch.Tensor  # (B,) nats, the density of x on R^D (float64)
    prior: torch.Tensor  # (B,) nats: log N(x_1; 0, sigma_1^2 I), or log N(z; 0, I) for a normalizing flow
    dims: int
    nfe: int = 0  # ODE evaluations, each one forward pass and one vector-Jacobian product (0 for an exact flow)
    times: torch.Tensor | None = None  # (K,) increasing t from t_start to 1
    path: torch.Tensor | None = None  # (K, B) nats: integral_{t_start}^{times[k]} div f dt

    @property
    def bits_per_dim(self) -> torch.Tensor:
        return bits_per_dim(self.log_density, self.dims)


def probability_flow_drift(denoise, schedule: Schedule, x_t: torch.Tensor, t: float) -> torch.Tensor:
    """f(x_t, t) = alpha'(t) x0_hat + sigma'(t) eps_hat   (Song et al. 2021, eq. 13, in (x0, eps) form)."""
    d_alpha, d_sigma = (float(v) for v in schedule.alpha_sigma_derivative(torch.tensor(t, dtype=torch.float64)))
    x0, eps = denoise(x_t, t)
    return d_alpha * x0 + d_sigma * eps


def divergence(f: torch.Tensor, x: torch.Tensor, probes: torch.Tensor | None) -> torch.Tensor:
    """div f per image (B,): Hutchinson's v^T J v with one VJP (probes given), else exact with D VJPs.

    Images must not interact inside f (true of our networks: no batch statistics)."""
    if probes is not None:
        (vjp,) = torch.autograd.grad(f, x, grad_outputs=probes)  # v^T J
        return (vjp * probes).flatten(1).sum(1)
    flat = f.flatten(1)
    total = torch.zeros(flat.shape[0], dtype=f.dtype, device=f.device)
    for d in range(flat.shape[1]):
        (row,) = torch.autograd.grad(flat[:, d].sum(), x, retain_graph=True)  # d f_d / d x for every image
        total = total + row.flatten(1)[:, d]
    return total


def ode_log_likelihood(denoise, schedule: Schedule, x: torch.Tensor, probes: torch.Tensor | None = None,
                       config: ODELikelihoodConfig = ODELikelihoodConfig(), record: int = 2,
                       on_evaluation=None) -> LikelihoodResult:
    """log p(x) under the probability-flow ODE of `denoise` (x_t, t) -> (x0_hat, eps_hat).

    probes: Rademacher probes (B, *x.shape[1:]) for config.divergence == "hutchinson". record: how many times
    (geometric from t_start to 1) the path integral is kept at. on_evaluation(nfe, t) after every evaluation
    (progress; an exception raised there stops the solve). Works under torch.inference_mode(): the gradients
    are taken in a block with inference mode off, as classifier guidance does.
    """
    from torchdiffeq import odeint

    if config.divergence == "hutchinson" and (probes is None or probes.shape != x.shape):
        raise ValueError(f"Hutchinson's estimator needs one probe per image of shape {tuple(x.shape)}")
    nfe = 0

    def dynamics(t, state):
        nonlocal nfe
        nfe += 1
        x_t = state[0]
        with torch.enable_grad():
            x_t = x_t.detach().requires_grad_(True)
            # dopri5 may step past t = 1 and interpolate back; beyond 1 the drift is held at its value at 1.
            f = probability_flow_drift(denoise, schedule, x_t, min(float(t), 1.0))
            div = divergence(f, x_t, probes if config.divergence == "hutchinson" else None)
        if on_evaluation is not None:
            on_evaluation(nfe, min(float(t), 1.0))
        return f.detach(), div.detach()

    times = torch.logspace(math.log10(config.t_start), 0, max(record, 2), dtype=torch.float64)
    times[0], times[-1] = config.t_start, 1.0
    with torch.inference_mode(False), torch.no_grad():
        start = x.detach().clone().float()
        if probes is not None:
            probes = probes.detach().clone().to(start)
        states, path = odeint(dynamics, (start, torch.zeros(len(start), device=start.device)), times.float().to(start.device),
                              rtol=config.rtol, atol=config.atol, method="dopri5")
    sigma_1 = float(schedule.alpha_sigma(torch.tensor(1.0, dtype=torch.float64))[1])
    prior = gaussian_log_density(states[-1], sigma_1)
    path = path.double()
    return LikelihoodResult(log_density=prior + path[-1], prior=prior, dims=x[0].numel(), nfe=nfe, times=times,
                            path=path)


def model_log_likelihood(model, x: torch.Tensor, labels: torch.Tensor | None, probes: torch.Tensor | None = None,
                         config: ODELikelihoodConfig = ODELikelihoodConfig(), record: int = 2,
                         on_evaluation=None) -> LikelihoodResult:
    """log p(x | y) (labels given) or log p(x) (labels None) under a loaded generative checkpoint.

    A denoiser goes through its probability-flow ODE, unguided and without self-conditioning (which would make
    the drift depend on the path's history); log p(x) is the null-class model. A normalizing flow is exact; its
    log p(x) is the mixture over classes, log (1/K) sum_y p(x | y) (Fashion-MNIST's classes are balanced).
    """
    if model.kind == "normalizing-flow":
        return flow_log_likelihood(model.network, x, labels, len(model.class_names))
    if model.kind != "denoiser":
        raise ValueError(f"a {model.kind} checkpoint defines no likelihood")
    if labels is None and model.class_names and model.config.get("null_class") is None:
        raise ValueError("this class-conditional model has no null class, so it has no unconditional likelihood")
    denoise = Denoiser(model.network, model.schedule, model.parameterization, labels=labels)
    return ode_log_likelihood(denoise, model.schedule, x, probes, config, record, on_evaluation)


def flow_log_likelihood(network, x: torch.Tensor, labels: torch.Tensor | None, classes: int) -> LikelihoodResult:
    """Exact log p(x | y) = log N(z; 0, I) + log|det dz/dx|; without labels the class mixture."""
    with torch.no_grad():
        if labels is not None or not classes:
            prior = gaussian_log_density(network.encode(x, labels), 1.0)
            return LikelihoodResult(log_density=prior + float(network.log_det()), prior=prior, dims=x[0].numel())
        per_class = torch.stack([network(x, torch.full((len(x),), k, dtype=torch.long, device=x.device)).double()
                                 for k in range(classes)])  # (K, B)
        log_density = torch.logsumexp(per_class, 0) - math.log(classes)
        return LikelihoodResult(log_density=log_density, prior=log_density - float(network.log_det()), dims=x[0].numel())
