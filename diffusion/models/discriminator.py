"""A class-conditional image discriminator for adversarial distillation: two strided convolution stages, then a
projection head (Miyato & Koyama 2018): logit = w . phi(x) + <embed(y), phi(x)>, so the class enters as an inner
product with the image's features rather than as an input channel. It judges clean images only: no noise level."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DiscriminatorConfig:
    num_classes: int = 10
    image_channels: int = 1
    image_size: int = 28
    width: int = 32  # channels of the first stage; the second has twice as many

    def to_dict(self) -> dict:
        return asdict(self)


class ProjectionDiscriminator(nn.Module):
    def __init__(self, config: DiscriminatorConfig = DiscriminatorConfig()):
        super().__init__()
        self.config = c = config
        self.features = nn.Sequential(  # (B, C, 28, 28) -> (B, 2w, 7, 7) -> (B, 2w)
            nn.Conv2d(c.image_channels, c.width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c.width, c.width, 4, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(c.width, 2 * c.width, 3, padding=1), nn.SiLU(),
            nn.Conv2d(2 * c.width, 2 * c.width, 4, stride=2, padding=1), nn.SiLU(),
            nn.Flatten(), nn.Linear(2 * c.width * (c.image_size // 4) ** 2, 4 * c.width), nn.SiLU())
        self.head = nn.Linear(4 * c.width, 1)
        self.class_embedding = nn.Embedding(c.num_classes, 4 * c.width)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        phi = self.features(images)  # (B, 4w)
        return self.head(phi).squeeze(1) + (self.class_embedding(labels) * phi).sum(1)  # (B,)
