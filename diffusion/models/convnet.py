"""A second evaluation classifier of another family than `Classifier`: a VGG-style network (Simonyan & Zisserman
2015) of 3x3 convolutions with batch normalisation (Ioffe & Szegedy 2015), ReLU and max-pooling, with a residual
connection around each stage's second convolution (He et al. 2016). Classifier uses GroupNorm, SiLU and strided
convolutions; a sample judged near-real by both is judged by two different sets of features."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn.functional as F
from torch import nn

from .blocks import config_from_dict


@dataclass(frozen=True)
class ConvNetConfig:
    image_channels: int = 1
    image_size: int = 28
    widths: tuple[int, ...] = (48, 96, 192)  # one stage per width; every stage but the last halves the resolution
    num_classes: int = 10
    dropout: float = 0.3  # before the head

    to_dict = asdict
    from_dict = classmethod(config_from_dict)


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class Stage(nn.Module):
    """conv-BN-ReLU, then a second one added back to it: h = a + conv_bn_relu(a)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.first, self.second = conv_bn_relu(c_in, c_out), conv_bn_relu(c_out, c_out)

    def forward(self, x):  # (B, C_in, H, W) -> (B, C_out, H, W)
        h = self.first(x)
        return h + self.second(h)


class ConvNet(nn.Module):
    """Stages with max-pooling between them, global average pool, dropout, linear head. forward(x) -> logits (B, K);
    `features(x)` gives the pooled penultimate features (B, D) that feature FID and precision / recall read."""

    def __init__(self, config: ConvNetConfig):
        super().__init__()
        self.config = c = config
        widths = (c.image_channels,) + tuple(c.widths)
        self.stages = nn.ModuleList(Stage(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.dropout = nn.Dropout(c.dropout)
        self.head = nn.Linear(widths[-1], c.num_classes)
        self.feature_dim = widths[-1]

    def features(self, x, log_snr=None):  # log_snr: the evaluator interface's, always None for a clean classifier
        h = x  # (B, C, 28, 28) -> (B, D, 7, 7) for three stages
        for index, stage in enumerate(self.stages):
            h = stage(h if index == 0 else F.max_pool2d(h, 2))
        return h.mean(dim=(2, 3))  # (B, D)

    def forward(self, x, log_snr=None):
        return self.head(self.dropout(self.features(x, log_snr)))
