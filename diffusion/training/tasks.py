"""What a training run learns: one task object per checkpoint kind, so the Trainer never branches on a name.

A task is made from the whole TrainConfig and answers five questions for the Trainer:
    build_network(class_names) -> nn.Module
    loss(model, images, labels) -> scalar       model may be DDP-wrapped: it is called, never asked for methods
    export_config(network, class_names) -> dict the checkpoint's `config` metadata
    held_out_metrics(network, device) -> dict   added to the checkpoint's `training` metadata
    preview(network, class_names, device)       images for the progress grid, or None
and, where some parameters need another learning rate, parameter_groups(network) -> AdamW groups, each
with an optional "lr_scale" (a multiple of the run's learning rate).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..formats.checkpoint import load_checkpoint, model_config
from ..formats.data import DataError, ImageDataset, load_fashion_mnist, load_image_folder, to_model_range, to_uint8
from ..core.denoiser import Denoiser, Guidance
from ..core.likelihood import bits_per_dim, uniform_dequantize
from ..models import build_network
from ..core.objective import diffusion_loss
from ..core.sampling import draw_noise, image_generators, sample_ddim
from ..core.schedules import Schedule, time_grid
from .pairs import PairSet, load_pairs

if TYPE_CHECKING:
    from .config import TrainConfig

PREVIEW_COLUMNS = 8  # progress grids: one row of this many images per class


class Task:
    kind = ""

    def __init__(self, config: TrainConfig):
        self.config = config

    def load_data(self):
        """The training set: anything with len(), class_names and batch(indices, device) -> the loss's arguments."""
        return load_dataset(self.config)

    def parameter_groups(self, network) -> list[dict]:
        return [{"params": list(network.parameters())}]

    def exported(self, network):
        """The part of the trained network that becomes the checkpoint (all of it, but for adversarial runs)."""
        return network


class DenoiserTask(Task):
    kind = "denoiser"

    def backbone(self):
        """The chosen network's config in the run: `unet` or `dit`."""
        return self.config.dit if self.config.network == "DiT" else self.config.unet

    def build_network(self, class_names):
        c = self.config
        return build_network(c.network, replace(self.backbone(), image_size=c.image_size, image_channels=c.image_channels,
                                                num_classes=len(class_names) if self.backbone().num_classes else 0,
                                                self_condition=c.objective.self_condition))

    def loss(self, model, images, labels):
        return diffusion_loss(model, images, labels if self.backbone().num_classes else None, self.config.objective)

    def export_config(self, network, class_names) -> dict:
        objective = self.config.objective
        return model_config(self.kind, network, class_names=class_names, schedule=objective.schedule,
                            parameterization=objective.parameterization)

    def held_out_metrics(self, network, device) -> dict:
        return {}

    def preview(self, network, class_names, device, steps: int = 20, scale: float = 3.0):
        """One row per class, DDIM-20 with classifier-free guidance."""
        c = self.config
        schedule = Schedule(c.objective.schedule)
        conditional = bool(network.config.num_classes)
        labels = torch.arange(len(class_names), device=device).repeat_interleave(PREVIEW_COLUMNS)
        guided = conditional and scale != 1
        denoise = Denoiser(network, schedule, c.objective.parameterization, labels=labels if conditional else None,
                           guidance=Guidance("cfg", scale) if guided else Guidance(),
                           self_condition=c.objective.self_condition)
        x_T = draw_noise(image_generators(0, len(labels)), (c.image_channels, c.image_size, c.image_size), device)
        return sample_ddim(denoise, x_T, time_grid(schedule, steps), schedule=schedule)


class ReflowTask(DenoiserTask):
    """2-rectified flow (Liu, Gong & Liu 2022, Alg. 1): the teacher's network, trained on with the flow objective on
    the teacher's own (noise z, image x = T(z, y)) pairs, x_t = (1 - t) x + t z and target z - x. Where paths of the
    teacher's coupling cross, the least-squares velocity averages them, and the new flow's paths cannot cross, so
    they straighten. Label dropout stays, so classifier-free guidance still works on the student."""

    def __init__(self, config: TrainConfig):
        super().__init__(config)
        if not config.teacher or not config.pairs:
            raise ValueError("reflow needs `teacher` (a flow checkpoint) and `pairs` (a folder of pair shards)")
        if (config.objective.schedule, config.objective.parameterization) != ("flow", "flow"):
            raise ValueError("reflow trains a rectified flow: objective schedule and parameterization must be 'flow'")
        if config.hflip:
            raise ValueError("reflow pairs must not be flipped: T(flip z) is not flip T(z) for a learned teacher")

    def teacher(self):
        """The teacher checkpoint, loaded afresh (its network becomes the student), refused unless a rectified flow."""
        teacher = load_checkpoint(self.config.teacher)
        if teacher.kind != "denoiser" or teacher.schedule.name != "flow" or teacher.parameterization != "flow":
            raise ValueError(f"the teacher {self.config.teacher} is not a rectified flow (kind {teacher.kind})")
        if teacher.self_condition != self.config.objective.self_condition:
            raise ValueError("objective.self_condition must match the teacher's network")
        return teacher

    def load_data(self) -> PairSet:
        teacher_sha256 = self.teacher().sha256
        pairs = load_pairs(self.config.pairs)
        self.pairs_record = {"pairs": len(pairs)} | pairs.settings  # for export_config: the shards are read once
        if pairs.settings.get("teacher_sha256") != teacher_sha256:
            raise DataError(f"the pairs in {self.config.pairs} were made by another teacher than {self.config.teacher} "
                            f"(SHA-256 {str(pairs.settings.get('teacher_sha256'))[:12]}..., file {teacher_sha256[:12]}...)")
        return pairs

    def build_network(self, class_names):
        teacher = self.teacher()
        if tuple(class_names) != teacher.class_names:
            raise ValueError("the pairs' classes differ from the teacher's")
        return teacher.network.train().requires_grad_(True)  # loaded for inference: frozen

    def loss(self, model, images, noise, labels):
        conditional = bool(getattr(model, "module", model).config.num_classes)
        return diffusion_loss(model, images, labels if conditional else None, self.config.objective, noise=noise)

    def export_config(self, network, class_names) -> dict:
        if not hasattr(self, "pairs_record"):  # a Trainer given its data set directly never called load_data
            self.load_data()
        return super().export_config(network, class_names) | {
            "reflow": self.pairs_record,
            "defaults": {"sampler": "ode", "solver": "euler", "steps": self.config.default_steps, "guidance": "none"}}

    def preview(self, network, class_names, device):
        return super().preview(network, class_names, device, steps=self.config.default_steps, scale=1.0)


class NormalizingFlowTask(Task):
    """Maximum likelihood on uniformly dequantized pixels; the loss is the batch's bits per dimension."""

    kind = "normalizing-flow"
    # Adam moves a parameter by ~lr per step; the log-scales must travel ~5 nats (background pixels span one
    # 8-bit bin, std 0.002), which at lr 1e-3 took thousands of steps and stalled the loss early on.
    scale_lr_multiplier = 20.0

    def parameter_groups(self, network) -> list[dict]:
        scales = [network.log_scale]
        rest = [p for p in network.parameters() if p is not network.log_scale]
        return [{"params": rest}, {"params": scales, "lr_scale": self.scale_lr_multiplier}]

    def build_network(self, class_names):
        c = self.config
        return build_network("NICE", replace(c.nice, image_size=c.image_size, image_channels=c.image_channels,
                                             num_classes=len(class_names) if c.nice.num_classes else 0))

    def _labels(self, labels):
        return labels if self.config.nice.num_classes else None

    def loss(self, model, images, labels):
        x = uniform_dequantize(to_uint8(images)).to(images.device)  # u from the global CPU RNG, saved with the run
        return bits_per_dim(model(x, self._labels(labels)), x[0].numel()).mean()

    def export_config(self, network, class_names) -> dict:
        return model_config(self.kind, network, class_names=class_names)

    @torch.no_grad()
    def held_out_metrics(self, network, device) -> dict:
        """Bits/dim on the Fashion-MNIST test split, dequantized with a fixed generator (seed 0)."""
        if self.config.data != "fashion-mnist":
            return {}
        test = load_fashion_mnist("test", self.config.data_dir)
        x = uniform_dequantize(test.images, torch.Generator().manual_seed(0))
        bits = torch.cat([bits_per_dim(network(x[i:i + 500].to(device), self._labels(test.labels[i:i + 500].to(device))),
                                       x[0].numel()).cpu() for i in range(0, len(x), 500)])
        return {"test_bits_per_dim": round(float(bits.mean()), 4),
                "test_bits_per_dim_stderr": round(float(bits.std() / len(bits) ** 0.5), 4)}

    @torch.no_grad()
    def preview(self, network, class_names, device, temperature: float = 1.0):
        """One row per class, z ~ N(0, T^2 I) decoded exactly."""
        c = self.config
        labels = torch.arange(len(class_names), device=device).repeat_interleave(PREVIEW_COLUMNS)
        z = draw_noise(image_generators(0, len(labels)), (c.image_channels, c.image_size, c.image_size), device)
        return network.decode(temperature * z, self._labels(labels))


class ClassifierTask(Task):
    """Cross-entropy on class labels; the noisy classifier sees x_t of a random t, the evaluator clean images."""

    kind = "evaluator"
    noise_conditioned = False

    def build_network(self, class_names):
        c = self.config
        return build_network("Classifier", replace(c.classifier, image_size=c.image_size,
                                                   image_channels=c.image_channels, num_classes=len(class_names),
                                                   noise_conditioned=self.noise_conditioned))

    def loss(self, model, images, labels):
        if self.noise_conditioned:
            schedule = Schedule(self.config.noise_schedule)
            t = torch.rand(images.shape[0], device=images.device)
            alpha, sigma = (v[:, None, None, None] for v in schedule.alpha_sigma(t))
            x_t = alpha * images + sigma * torch.randn_like(images)
            logits = model(x_t / (alpha**2 + sigma**2).sqrt(), schedule.log_snr(t).float())
        else:
            logits = model(random_shift(images))
        return F.cross_entropy(logits.float(), labels)

    def export_config(self, network, class_names) -> dict:
        return model_config(self.kind, network, class_names=class_names)

    @torch.no_grad()
    def held_out_metrics(self, network, device) -> dict:
        """Accuracy on the clean Fashion-MNIST test split (nothing for other data)."""
        if self.config.data != "fashion-mnist":
            return {"test_accuracy": None}
        test = load_fashion_mnist("test", self.config.data_dir)
        correct = 0
        for start in range(0, len(test), 500):
            images = to_model_range(test.images[start:start + 500]).to(device)
            log_snr = torch.full((len(images),), 20.0, device=device) if self.noise_conditioned else None
            correct += int((network(images, log_snr).argmax(1).cpu() == test.labels[start:start + 500]).sum())
        return {"test_accuracy": correct / len(test)}

    def preview(self, network, class_names, device):
        return None


class NoisyClassifierTask(ClassifierTask):
    kind = "noisy-classifier"
    noise_conditioned = True


class ConvNetEvaluatorTask(ClassifierTask):
    """The second evaluator (models.ConvNet): clean images, each shifted by its own random offset (the Trainer adds
    random horizontal flips)."""

    def build_network(self, class_names):
        c = self.config
        return build_network("ConvNet", replace(c.convnet, image_size=c.image_size, image_channels=c.image_channels,
                                                num_classes=len(class_names)))

    def loss(self, model, images, labels):
        return F.cross_entropy(model(random_shifts(images)).float(), labels)


def load_dataset(config: TrainConfig) -> ImageDataset:
    if config.data == "fashion-mnist":
        return load_fashion_mnist("train", config.data_dir)
    return load_image_folder(config.data, config.image_size, config.image_channels)


def random_shift(images: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Random translation by up to `pad` pixels (reflect-padded crop), a cheap augmentation for classifiers."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    dx, dy = torch.randint(0, 2 * pad + 1, (2,)).tolist()
    return padded[:, :, dy:dy + h, dx:dx + w]


def random_shifts(images: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Each image translated by its own random offset of up to `pad` pixels per axis (reflect-padded crop)."""
    b, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")  # (B, C, H + 2 pad, W + 2 pad)
    dy, dx = torch.randint(0, 2 * pad + 1, (2, b, 1), device=images.device)
    rows = (dy + torch.arange(h, device=images.device))[:, :, None]  # (B, H, 1)
    cols = (dx + torch.arange(w, device=images.device))[:, None, :]  # (B, 1, W)
    return padded[torch.arange(b, device=images.device)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
