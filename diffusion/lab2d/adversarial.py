"""Adversarial distillation of a one-step student (Sauer et al. 2023, ADD), tried where the answer is exact.

The one-step generator is the flow's Euler step from t = 1 to 0, G(z, y) = x0_hat(x_1 = z, y): the network's
prediction of the data point at pure noise. It starts as the reflow student (train.train_student), which only
copies its teacher's endpoints and so blurs what one step cannot copy, and is then trained on two losses:

    distillation  E ||G(z, y) - x_T(z, y)||^2, x_T the teacher's ODE endpoint from the same noise (the reflow pairs)
    adversarial   a discriminator D(x, y) tells exact samples of class y from G's; G minimizes softplus(-D(G(z, y)))
                  (the non-saturating loss, Goodfellow et al. 2014); D minimizes softplus(-D(real)) + softplus(D(fake))
                  plus an R1 penalty (gamma / 2) E ||grad_x D(real)||^2 (Mescheder et al. 2018)

ADD's discriminator sees real data, so the student is rewarded for looking real, not only for matching its teacher.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.schedules import Schedule
from .mixture import Mixture, sample_mixture
from .run import LabModel
from .train import reflow_pairs

FLOW = Schedule("flow")


@dataclass(frozen=True)
class AdversarialConfig:
    steps: int = 1500
    batch: int = 256
    pairs: int = 4096
    distillation_weight: float = 1.0
    adversarial_weight: float = 0.05  # small beside the distillation loss, as in ADD (lambda = 2.5 on its scale)
    r1_gamma: float = 0.1
    generator_lr: float = 3e-4
    discriminator_lr: float = 1e-3
    hidden: int = 128
    seed: int = 0


class Discriminator(nn.Module):
    """[x, class embedding] -> three SiLU layers -> one logit (real: positive)."""

    def __init__(self, num_classes: int, hidden: int = 128, embedding_dim: int = 32):
        super().__init__()
        self.class_embedding = nn.Embedding(num_classes, embedding_dim)
        self.body = nn.Sequential(nn.Linear(2 + embedding_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([x, self.class_embedding(labels)], dim=1)).squeeze(1)  # (N,)


def one_step(model: LabModel, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """G(z, y): the model's x0_hat at t = 1, which is one Euler step of the flow from noise to data."""
    return model.denoiser(FLOW, labels)(z, 1.0)[0]


def discriminator_loss(discriminator: Discriminator, real, fake, labels, r1_gamma: float) -> torch.Tensor:
    real = real.detach().requires_grad_(True)
    real_logits = discriminator(real, labels)
    (gradient,) = torch.autograd.grad(real_logits.sum(), real, create_graph=True)
    r1 = gradient.pow(2).sum(1).mean()  # Mescheder et al. 2018, eq. 9
    return F.softplus(-real_logits).mean() + F.softplus(discriminator(fake.detach(), labels)).mean() + r1_gamma / 2 * r1


def train_adversarial_student(teacher: LabModel, student: LabModel, mix: Mixture,
                              config: AdversarialConfig = AdversarialConfig()) -> LabModel:
    """The reflow student fine-tuned for one step by distillation towards the teacher's endpoints plus an
    adversarial loss against exact samples; a new LabModel (the given student is not changed)."""
    z, x_teacher, labels = reflow_pairs(teacher, mix.num_classes, config.pairs, seed=config.seed + 1)
    conditional = labels < mix.num_classes  # the one-step model is judged per class: drop the null-class pairs
    z, x_teacher, labels = z[conditional], x_teacher[conditional], labels[conditional]
    generator_net = copy.deepcopy(student.network).train()
    generator = LabModel(generator_net, student.parameterization)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        discriminator = Discriminator(mix.num_classes, config.hidden)
        g_opt = torch.optim.Adam(generator_net.parameters(), lr=config.generator_lr, betas=(0.5, 0.9))
        d_opt = torch.optim.Adam(discriminator.parameters(), lr=config.discriminator_lr, betas=(0.5, 0.9))
        draws = torch.Generator().manual_seed(config.seed)
        for _ in range(config.steps):
            rows = torch.randint(len(z), (config.batch,), generator=draws)
            batch_labels = labels[rows]
            real = sample_mixture(mix, batch_labels, draws).float()
            fake = one_step(generator, z[rows], batch_labels)
            d_loss = discriminator_loss(discriminator, real, fake, batch_labels, config.r1_gamma)
            d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            d_opt.step()
            distillation = (fake - x_teacher[rows]).pow(2).sum(1).mean()
            adversarial = F.softplus(-discriminator(fake, batch_labels)).mean()
            g_loss = config.distillation_weight * distillation + config.adversarial_weight * adversarial
            g_opt.zero_grad(set_to_none=True)
            g_loss.backward()
            g_opt.step()
    return LabModel(generator_net.eval(), student.parameterization)
