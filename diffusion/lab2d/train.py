"""Learned models beside the exact one, trained in seconds on the CPU by the project's objective (diffusion_loss):

    train_mlp       an MLP denoiser on fresh exact samples of the mixture each step (no data set to overfit)
    reflow_pairs    (noise z, the exact model's probability-flow ODE solution from z): a deterministic coupling
    train_student   one reflow (Liu et al. 2022, Alg. 1): the MLP regresses z - x on x_t = (1 - t) x + t z
Both learn the rectified-flow velocity (schedule "flow", parameterization "flow")."""

from __future__ import annotations

from typing import Callable

import torch

from ..core.objective import ObjectiveConfig, diffusion_loss
from ..core.schedules import Schedule
from .mixture import Mixture, sample_mixture
from .mlp import MLPConfig, MLPDenoiser
from .run import LabModel, sample_points, stop_point

OBJECTIVE = ObjectiveConfig(schedule="flow", parameterization="flow", self_condition=False, label_dropout=0.2)
STUDENT_OBJECTIVE = ObjectiveConfig(schedule="flow", parameterization="flow", self_condition=False, label_dropout=0.0)
NULL_SHARE = 0.2  # reflow pairs drawn unconditionally (the null class), so the student can be guided too


def fit(network: torch.nn.Module, batches: Callable[[torch.Generator], tuple], objective: ObjectiveConfig,
        steps: int, seed: int, learning_rate: float = 3e-3) -> torch.nn.Module:
    """Adam on diffusion_loss with the learning rate decayed linearly to 0; batches(generator) -> (x0, labels, noise).
    The objective's own draws (t, eps, label dropout) come from torch's global generator, seeded inside fork_rng."""
    optimizer = torch.optim.Adam(network.parameters(), lr=learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    generator = torch.Generator().manual_seed(seed)
    network.train()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(steps):
            stop_point()  # the app's Stop ends a first-use training too
            x0, labels, noise = batches(generator)
            loss = diffusion_loss(network, x0, labels, objective, noise=noise)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return network.eval()


def seeded_mlp(num_classes: int, hidden: int, seed: int) -> MLPDenoiser:
    """A fresh MLP whose initial weights depend only on `seed` (torch's global generator is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MLPDenoiser(MLPConfig(num_classes, hidden=hidden))


def train_mlp(mix: Mixture, *, steps: int = 1500, batch: int = 256, hidden: int = 128, seed: int = 0) -> LabModel:
    """An MLP denoiser learned from exact samples of the mixture (classes uniform, 20 % labels dropped for CFG)."""
    network = seeded_mlp(mix.num_classes, hidden, seed)

    def batches(generator):
        labels = torch.randint(mix.num_classes, (batch,), generator=generator)
        return sample_mixture(mix, labels, generator).float(), labels, None

    return LabModel(fit(network, batches, OBJECTIVE, steps, seed), OBJECTIVE.parameterization)


def reflow_pairs(teacher: LabModel, num_classes: int, count: int, *, steps: int = 40, seed: int = 0):
    """(z, x, labels): x the teacher's probability-flow ODE solution (Heun, `steps` steps, flow schedule) from z,
    labels uniform over the classes and, for NULL_SHARE of the pairs, the null class (unconditional)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(num_classes, (count,), generator=generator)
    labels = torch.where(torch.rand(count, generator=generator) < NULL_SHARE, num_classes, labels)
    run = sample_points(teacher, Schedule("flow"), labels, sampler="ode", steps=steps, options={"solver": "heun"},
                        seed=seed)
    return run.x_T, run.samples, labels


def train_student(teacher: LabModel, num_classes: int, *, pairs: int = 4096, steps: int = 1500, batch: int = 256,
                  seed: int = 0) -> LabModel:
    """One reflow: an MLP trained on the teacher's (noise, ODE endpoint) pairs, whose paths are straighter."""
    z, x, labels = reflow_pairs(teacher, num_classes, pairs, seed=seed)
    network = seeded_mlp(num_classes, 128, seed)

    def batches(generator):
        rows = torch.randint(len(z), (batch,), generator=generator)
        return x[rows], labels[rows], z[rows]

    return LabModel(fit(network, batches, STUDENT_OBJECTIVE, steps, seed), STUDENT_OBJECTIVE.parameterization)
