"""A tiny MLP denoiser for 2-D points, with the call signature of every denoiser network:
forward(x, log_snr, labels=None, x0_previous=None) -> prediction (N, 2).

It is not in models.NETWORKS: that registry serves checkpoint files of images (their config names an image size
and channels); lab MLPs are trained in seconds and live in memory only."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..models.blocks import noise_level_embedding


@dataclass(frozen=True)
class MLPConfig:
    num_classes: int  # label num_classes is the null class (unconditional, for classifier-free guidance)
    hidden: int = 128
    layers: int = 3
    embedding_dim: int = 32  # sinusoidal log-SNR features and the class embedding
    self_condition: bool = False  # the Denoiser reads it; the lab's MLPs are trained without

    @property
    def null_class(self) -> int:
        return self.num_classes


class MLPDenoiser(nn.Module):
    """[x, log-SNR features, class embedding] -> `layers` SiLU layers of width `hidden` -> 2 outputs."""

    def __init__(self, config: MLPConfig):
        super().__init__()
        self.config = c = config
        self.class_embedding = nn.Embedding(c.num_classes + 1, c.embedding_dim)
        widths = [2 + 2 * c.embedding_dim] + [c.hidden] * c.layers
        blocks = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            blocks += [nn.Linear(w_in, w_out), nn.SiLU()]
        self.body = nn.Sequential(*blocks, nn.Linear(c.hidden, 2))

    def forward(self, x, log_snr, labels=None, x0_previous=None):
        if labels is None:
            labels = torch.full((len(x),), self.config.null_class, dtype=torch.long, device=x.device)
        features = torch.cat([x.float(), noise_level_embedding(log_snr, self.config.embedding_dim),
                              self.class_embedding(labels)], dim=1)  # (N, 2 + 2 E)
        return self.body(features)
