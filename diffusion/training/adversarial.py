"""Adversarial distillation of an instant model (Sauer et al. 2023, ADD), on images: the task and its losses.

The generator is a reflow student's one Euler step from pure noise, G(z, y) = x0_hat(x_1 = z, y) (the flow's x0
at t = 1). Its losses are distillation towards the teacher's image for the same noise (the reflow pairs) and a
non-saturating adversarial term from a class-conditional discriminator that sees real training images; the
discriminator is trained at the same time with an R1 penalty on real images (Mescheder et al. 2018). One backward
pass updates both: the discriminator's loss sees the generator's images detached, and the generator's adversarial
term reads the discriminator through detached parameters (torch.func.functional_call), so neither loss moves the
other network. The 2-D lab (lab2d/adversarial.py) shows the method on an exact answer first.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..core.denoiser import Denoiser
from ..core.schedules import Schedule
from ..formats.checkpoint import load_checkpoint
from ..formats.data import to_model_range
from ..models.discriminator import DiscriminatorConfig, ProjectionDiscriminator
from .config import TrainConfig
from .tasks import ReflowTask, load_dataset

FLOW = Schedule("flow")


class GeneratorAndDiscriminator(nn.Module):
    """Both networks of the run in one module, so the Trainer's optimizer, EMA and state file hold them together;
    only the generator is exported."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator


def one_step_images(generator: nn.Module, noise: torch.Tensor, labels: torch.Tensor, self_condition: bool):
    """G(z, y): the flow's x0_hat at t = 1 (one Euler step from noise to data)."""
    return Denoiser(generator, FLOW, "flow", labels=labels, self_condition=self_condition)(noise, 1.0)[0]


def r1_penalty(discriminator: nn.Module, real: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits on real images, E ||grad_x D(x, y)||^2 over them), the gradient kept for the backward pass."""
    real = real.detach().requires_grad_(True)
    logits = discriminator(real, labels)
    (gradient,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
    return logits, gradient.pow(2).flatten(1).sum(1).mean()


def adversarial_distillation_loss(pair: GeneratorAndDiscriminator, teacher_images, noise, labels, real, real_labels,
                                  *, adversarial_weight: float, r1_gamma: float, self_condition: bool) -> torch.Tensor:
    """Distillation + adversarial_weight x the generator's non-saturating loss + the discriminator's loss with R1."""
    fake = one_step_images(pair.generator, noise, labels, self_condition)  # (B, C, H, W)
    distillation = F.mse_loss(fake, teacher_images)  # towards the teacher's image from the same noise
    held = {name: p.detach() for name, p in pair.discriminator.named_parameters()}
    generator_adversarial = F.softplus(-functional_call(pair.discriminator, held, (fake, labels))).mean()
    real_logits, r1 = r1_penalty(pair.discriminator, real, real_labels)
    discriminator = (F.softplus(-real_logits).mean() + F.softplus(pair.discriminator(fake.detach(), labels)).mean()
                     + r1_gamma / 2 * r1)  # Mescheder et al. 2018, eq. 9
    return distillation + adversarial_weight * generator_adversarial + discriminator


class AdversarialDistillationTask(ReflowTask):
    """The reflow student (config.start_from) fine-tuned on the teacher's reflow pairs (config.pairs, made by
    config.teacher) with the adversarial term; exports the generator as a one-step denoiser."""

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        if not config.start_from:
            raise ValueError("adversarial distillation needs `start_from`: the reflow student it fine-tunes")
        self._real = None

    def build_network(self, class_names):
        student = load_checkpoint(self.config.start_from)
        if student.kind != "denoiser" or student.schedule.name != "flow" or student.class_names != tuple(class_names):
            raise ValueError(f"{self.config.start_from} is not a rectified flow of these classes")
        c = self.config
        discriminator = ProjectionDiscriminator(DiscriminatorConfig(num_classes=len(class_names),
                                                                    image_channels=c.image_channels,
                                                                    image_size=c.image_size))
        return GeneratorAndDiscriminator(student.network.train().requires_grad_(True), discriminator)

    def parameter_groups(self, network) -> list[dict]:
        return [{"params": list(network.generator.parameters())},
                {"params": list(network.discriminator.parameters()), "lr_scale": self.config.discriminator_lr_scale}]

    def real_images(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """The real training images the discriminator sees, in [-1, 1], on the device (loaded once)."""
        if self._real is None:
            data = load_dataset(self.config)  # the training set the teacher learned from (config.data)
            self._real = (to_model_range(data.images).to(device), data.labels.to(device))
        return self._real

    def loss(self, model, images, noise, labels):
        pair = getattr(model, "module", model)
        real, real_labels = self.real_images(images.device)
        rows = torch.randint(len(real_labels), (len(labels),), device=images.device)
        return adversarial_distillation_loss(
            pair, images, noise, labels, real[rows], real_labels[rows], adversarial_weight=self.config.adversarial_weight,
            r1_gamma=self.config.r1_gamma, self_condition=self.config.objective.self_condition)

    def exported(self, network):
        return network.generator  # the discriminator is a training device only

    def export_config(self, network, class_names) -> dict:
        config = super().export_config(self.exported(network), class_names)
        config["defaults"] = {"sampler": "ode", "solver": "euler", "steps": 1, "guidance": "none"}
        config["adversarial"] = {"start_from": self.config.start_from,
                                 "adversarial_weight": self.config.adversarial_weight, "r1_gamma": self.config.r1_gamma,
                                 "discriminator_lr_scale": self.config.discriminator_lr_scale}
        return config

    def preview(self, network, class_names, device):
        return super().preview(self.exported(network), class_names, device)
