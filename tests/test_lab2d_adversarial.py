"""Adversarial distillation on the 2-D lab (issue 41): the R1 penalty on a closed form, and on the rings a one-step
student rewarded by a discriminator that sees exact samples ends nearer the exact distribution than the reflow
student it started from, with fewer samples outside their class's support."""

from __future__ import annotations

import pytest
import torch

from diffusion.core.schedules import Schedule
from diffusion.lab2d.adversarial import AdversarialConfig, Discriminator, discriminator_loss, train_adversarial_student
from diffusion.lab2d.metrics import exact_reference
from diffusion.lab2d.mixture import DISTRIBUTIONS, balanced_labels
from diffusion.lab2d.run import sample_points, starting_noise
from diffusion.lab2d.train import train_mlp, train_student


def test_the_r1_penalty_of_a_linear_discriminator_is_its_weight_norm():
    """D(x, y) = w . x + b(y): grad_x D = w, so R1 = ||w||^2 and the loss is the two softplus terms + gamma / 2 ||w||^2."""
    torch.manual_seed(0)
    discriminator = Discriminator(num_classes=2, hidden=4)
    w = torch.tensor([0.3, -1.2])

    class Linear(torch.nn.Module):
        def forward(self, x, labels):
            return x @ w + labels.float()

    real, fake, labels = torch.randn(16, 2), torch.randn(16, 2), torch.randint(2, (16,))
    logits_real, logits_fake = real @ w + labels, fake @ w + labels
    expected = (torch.nn.functional.softplus(-logits_real).mean() + torch.nn.functional.softplus(logits_fake).mean()
                + 0.5 / 2 * w.pow(2).sum())
    loss = discriminator_loss(Linear(), real, fake, labels, r1_gamma=0.5).detach()
    assert float(loss) == pytest.approx(float(expected))
    assert discriminator(real, labels).shape == (16,)


def test_on_the_rings_one_distilled_step_beats_one_reflow_step():
    mix = DISTRIBUTIONS["rings"]()
    teacher = train_mlp(mix, steps=400)
    student = train_student(teacher, mix.num_classes, pairs=1024, steps=400)
    distilled = train_adversarial_student(teacher, student, mix, AdversarialConfig(steps=250, pairs=1024))
    labels = balanced_labels(mix, 500)
    reference, x_T = exact_reference(mix, labels), starting_noise(0, 500)

    def one_step(model):
        return reference.quality(sample_points(model, Schedule("flow"), labels, sampler="ode", steps=1,
                                               options={"solver": "euler"}, x_T=x_T).samples)

    reflow, adversarial = one_step(student), one_step(distilled)
    assert adversarial.distance < reflow.distance
    assert adversarial.outside_share < reflow.outside_share
