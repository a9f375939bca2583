"""Networks: a class-conditional UNet with optional self-conditioning, and a (noisy) image classifier.

Networks know nothing of schedules. They receive x_t scaled to unit variance and the noise level as
log-SNR (see DESIGN.md), so one classifier can serve models trained on different schedules.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

LOG_SNR_CLAMP = 15.0  # log-SNR fed to networks is clamped to [-15, 15] (t = 0 and flow's t = 1 are infinite)


def _from_dict(cls, data: dict):
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


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
    from_dict = classmethod(_from_dict)


def noise_level_embedding(log_snr: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the clamped log-SNR (Vaswani et al. 2017 frequencies)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=log_snr.device) / half)
    angles = 25.0 * log_snr.clamp(-LOG_SNR_CLAMP, LOG_SNR_CLAMP).float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (B, dim)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the embedding modulates the second norm (scale and shift)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = _group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = _group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x, emb):  # x: (B, C, H, W), emb: (B, E)
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = rearrange(self.emb(F.silu(emb)), "b (two c) -> two b c 1 1", two=2)
        h = self.norm2(h) * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, residual."""

    def __init__(self, channels: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):  # (B, C, H, W)
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three n d) h w -> three b n (h w) d", three=3, n=self.heads)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        return x + self.out(rearrange(attended, "b n (h w) d -> b (n d) h w", h=h, w=w))


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
        self.head = nn.Sequential(_group_norm(ch), nn.SiLU(), nn.Conv2d(ch, c.image_channels, 3, padding=1))
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


@dataclass(frozen=True)
class ClassifierConfig:
    image_channels: int = 1
    image_size: int = 28
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4)
    blocks_per_level: int = 1
    num_classes: int = 10
    noise_conditioned: bool = True  # False: a clean-image classifier (the evaluator)
    dropout: float = 0.1
    embedding_dim: int = 128

    to_dict = asdict
    from_dict = classmethod(_from_dict)


class Classifier(nn.Module):
    """Residual encoder, global average pool, linear head. forward(x, log_snr=None) -> logits (B, K).

    `features(x, log_snr)` returns the pooled penultimate features (B, D) used for feature FID.
    """

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = c = config
        emb = c.embedding_dim
        self.noise_mlp = nn.Sequential(nn.Linear(emb, emb), nn.SiLU(), nn.Linear(emb, emb)) if c.noise_conditioned else None
        self.stem = nn.Conv2d(c.image_channels, c.base_channels, 3, padding=1)
        blocks, ch = [], c.base_channels
        for level, mult in enumerate(c.channel_mults):
            for _ in range(c.blocks_per_level):
                blocks.append(ResBlock(ch, c.base_channels * mult, emb, c.dropout))
                ch = c.base_channels * mult
            if level < len(c.channel_mults) - 1:
                blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.blocks = nn.ModuleList(blocks)
        self.norm = _group_norm(ch)
        self.head = nn.Linear(ch, c.num_classes)
        self.feature_dim = ch

    def features(self, x, log_snr=None):
        c = self.config
        if self.noise_mlp is not None:
            if log_snr is None:
                raise ValueError("this classifier is noise-conditioned: pass log_snr")
            emb = self.noise_mlp(noise_level_embedding(log_snr, c.embedding_dim))
        else:
            emb = torch.zeros(x.shape[0], c.embedding_dim, device=x.device, dtype=x.dtype)
        h = self.stem(x)
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return F.silu(self.norm(h)).mean(dim=(2, 3))  # (B, D)

    def forward(self, x, log_snr=None):
        return self.head(self.features(x, log_snr))
