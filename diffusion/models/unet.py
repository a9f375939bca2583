"""A class-conditional UNet with optional self-conditioning: the denoiser network."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .blocks import Attention, ResBlock, config_from_dict, group_norm, noise_level_embedding


@dataclass(frozen=True)
class UNetConfig:
    image_channels: int = 1
    image_size: int = 28
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    blocks_per_level: int = 2
    attention_levels: tuple[int, ...] = (2,)  # indices into channel_mults; level 2 of 28x28 is 7x7
    attention_heads: int = 4
    num_classes: int = 0  # 0: unconditional; otherwise label num_classes is the "null" class for CFG
    self_condition: bool = False
    dropout: float = 0.0
    embedding_dim: int = 128

    def __post_init__(self):
        levels = len(self.channel_mults)
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {self.image_size} must be divisible by 2^{levels - 1}")
        if any(not 0 <= i < levels for i in self.attention_levels):
            raise ValueError(f"attention_levels {self.attention_levels} out of range for {levels} levels")

    @property
    def null_class(self) -> int | None:
        return self.num_classes if self.num_classes else None

    to_dict = asdict
    from_dict = classmethod(config_from_dict)


class UNet(nn.Module):
    """forward(x, log_snr, labels=None, x0_previous=None) -> prediction with x's shape."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = c = config
        emb = c.embedding_dim
        self.noise_mlp = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.class_embedding = nn.Embedding(c.num_classes + 1, emb) if c.num_classes else None
        in_channels = c.image_channels * (2 if c.self_condition else 1)
        self.stem = nn.Conv2d(in_channels, c.base_channels, 3, padding=1)

        widths = [c.base_channels * m for m in c.channel_mults]
        self.down, self.up = nn.ModuleList(), nn.ModuleList()
        skip_widths, ch = [c.base_channels], c.base_channels
        for level, width in enumerate(widths):
            for _ in range(c.blocks_per_level):
                self.down.append(self._block(ch, width, level))
                ch = width
                skip_widths.append(ch)
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skip_widths.append(ch)
        self.middle = nn.ModuleList([ResBlock(ch, ch, emb, c.dropout), Attention(ch, c.attention_heads),
                                     ResBlock(ch, ch, emb, c.dropout)])
        for level, width in reversed(list(enumerate(widths))):
            for _ in range(c.blocks_per_level + 1):
                self.up.append(self._block(ch + skip_widths.pop(), width, level))
                ch = width
            if level > 0:
                self.up.append(nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(ch, ch, 3, padding=1)))
        self.head = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, c.image_channels, 3, padding=1))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def _block(self, c_in, c_out, level):
        res = ResBlock(c_in, c_out, self.config.embedding_dim, self.config.dropout)
        if level in self.config.attention_levels:
            return nn.ModuleList([res, Attention(c_out, self.config.attention_heads)])
        return nn.ModuleList([res])

    def forward(self, x, log_snr, labels=None, x0_previous=None):
        c = self.config
        emb = self.noise_mlp(noise_level_embedding(log_snr, c.embedding_dim))  # (B, E)
        if self.class_embedding is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), c.num_classes, device=x.device, dtype=torch.long)
            emb = emb + self.class_embedding(labels)
        if c.self_condition:
            x = torch.cat([x, torch.zeros_like(x) if x0_previous is None else x0_previous], dim=1)  # (B, 2C, H, W)

        h = self.stem(x)
        skips = [h]
        for layer in self.down:
            h = self._run_block(layer, h, emb)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        for layer in self.up:
            if isinstance(layer, nn.ModuleList):
                h = self._run_block(layer, torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.head(h)

    @staticmethod
    def _run_block(layer, h, emb):
        if isinstance(layer, nn.ModuleList):
            h = layer[0](h, emb)
            for extra in layer[1:]:
                h = extra(h)
            return h
        return layer(h)
