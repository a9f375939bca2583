"""NICE: a normalizing flow with additive coupling layers and exact likelihood.

Dinh, Krueger & Bengio 2014, "NICE: Non-linear Independent Components Estimation". The flow f maps an
image x to a latent z of the same size; with a standard Gaussian prior,
    log p(x) = log N(f(x); 0, I) + log |det df/dx|                      (eq. 3, change of variables)
Additive couplings have unit Jacobian determinant, so the only volume change is the final diagonal
scaling z = exp(s) * h, whose log-determinant is sum(s) exactly (Sec. 3.3).

Partitions alternate between the two colours of a pixel checkerboard (the paper alternates odd and even
indices; for fully connected coupling networks any fixed split works, a checkerboard mixes neighbours).
Class-conditional: every coupling network also sees a class embedding, so p(x | y) is exact too.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .blocks import config_from_dict


@dataclass(frozen=True)
class NICEConfig:
    image_channels: int = 1
    image_size: int = 28
    couplings: int = 4  # the paper's MNIST model: 4
    hidden_width: int = 1000  # the paper's: 1000
    hidden_layers: int = 5  # the paper's: 5 ReLU layers per coupling network
    num_classes: int = 0  # 0: unconditional
    class_embedding_dim: int = 32

    def __post_init__(self):
        if self.dims % 2:
            raise ValueError(f"NICE needs an even number of dimensions, got {self.dims}")
        if self.couplings < 1 or self.hidden_layers < 1 or self.hidden_width < 1:
            raise ValueError("couplings, hidden_layers and hidden_width must be >= 1")

    @property
    def dims(self) -> int:
        return self.image_channels * self.image_size**2

    to_dict = asdict
    from_dict = classmethod(config_from_dict)


def checkerboard(channels: int, size: int) -> torch.Tensor:
    """(D,) bool, True on the pixels with even row + column (in every channel), flattened C-H-W."""
    # On the CPU explicitly, also while a network is built on the meta device (checkpoint.check_file).
    rows, cols = torch.meshgrid(torch.arange(size, device="cpu"), torch.arange(size, device="cpu"), indexing="ij")
    return ((rows + cols) % 2 == 0).expand(channels, size, size).reshape(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over all but the batch dimension: -(|z|^2 + D log 2 pi) / 2."""
    z = z.flatten(1)
    return -0.5 * (z.pow(2).sum(1) + z.shape[1] * math.log(2 * math.pi))


class AdditiveCoupling(nn.Module):
    """y_1 = x_1, y_2 = x_2 + m(x_1, class)   (Dinh et al. 2014, eq. 5); inverse x_2 = y_2 - m(y_1, class)."""

    def __init__(self, config: NICEConfig, keep: torch.Tensor):
        super().__init__()
        self.register_buffer("keep", keep.nonzero().squeeze(1), persistent=False)  # indices of x_1
        self.register_buffer("change", (~keep).nonzero().squeeze(1), persistent=False)  # indices of x_2
        half, width = config.dims // 2, config.hidden_width
        extra = config.class_embedding_dim if config.num_classes else 0
        layers: list[nn.Module] = [nn.Linear(half + extra, width), nn.ReLU()]
        for _ in range(config.hidden_layers - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        layers.append(nn.Linear(width, half))
        nn.init.zeros_(layers[-1].weight)  # every coupling starts as the identity
        nn.init.zeros_(layers[-1].bias)
        self.shift = nn.Sequential(*layers)  # m

    def _m(self, x_1: torch.Tensor, class_features: torch.Tensor | None) -> torch.Tensor:
        inputs = x_1 if class_features is None else torch.cat([x_1, class_features], dim=1)
        return self.shift(inputs)  # (B, D/2)

    def forward(self, x: torch.Tensor, class_features=None) -> torch.Tensor:  # (B, D) -> (B, D)
        y = x.clone()
        y[:, self.change] = x[:, self.change] + self._m(x[:, self.keep], class_features)
        return y

    def inverse(self, y: torch.Tensor, class_features=None) -> torch.Tensor:
        x = y.clone()
        x[:, self.change] = y[:, self.change] - self._m(y[:, self.keep], class_features)
        return x


class NICE(nn.Module):
    """encode(x, labels) -> z, decode(z, labels) -> x (exact inverses); forward(x, labels) = log p(x | y) in nats."""

    def __init__(self, config: NICEConfig):
        super().__init__()
        self.config = c = config
        self.class_embedding = nn.Embedding(c.num_classes, c.class_embedding_dim) if c.num_classes else None
        keep = checkerboard(c.image_channels, c.image_size)
        self.couplings = nn.ModuleList(AdditiveCoupling(c, keep if i % 2 == 0 else ~keep) for i in range(c.couplings))
        self.log_scale = nn.Parameter(torch.zeros(c.dims))  # s: z = exp(s) * h, log|det| = sum(s)

    @property
    def null_class(self) -> None:
        return None  # no classifier-free guidance for a flow

    def _class_features(self, labels, batch: int):
        if self.class_embedding is None:
            if labels is not None:
                raise ValueError("this NICE is unconditional: it takes no labels")
            return None
        if labels is None or labels.shape != (batch,):
            raise ValueError(f"this NICE is class-conditional: pass one label per image ({batch})")
        return self.class_embedding(labels)

    def encode(self, x: torch.Tensor, labels=None) -> torch.Tensor:
        """x (B, C, H, W) -> z (B, C, H, W)."""
        features = self._class_features(labels, x.shape[0])
        h = x.flatten(1)  # (B, D)
        for coupling in self.couplings:
            h = coupling(h, features)
        return (h * self.log_scale.exp()).view_as(x)

    def decode(self, z: torch.Tensor, labels=None) -> torch.Tensor:
        """z (B, C, H, W) -> x (B, C, H, W), the exact inverse of encode."""
        features = self._class_features(labels, z.shape[0])
        h = z.flatten(1) * (-self.log_scale).exp()
        for coupling in reversed(self.couplings):
            h = coupling.inverse(h, features)
        return h.view_as(z)

    def log_det(self) -> torch.Tensor:
        """log |det d encode / dx| = sum(s), the same for every x (couplings are volume-preserving)."""
        return self.log_scale.sum()

    def forward(self, x: torch.Tensor, labels=None) -> torch.Tensor:
        """log p(x | y) = log N(encode(x); 0, I) + sum(s), per image (B,), in nats."""
        return standard_normal_log_prob(self.encode(x, labels)) + self.log_det()
