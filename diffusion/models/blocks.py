"""Building blocks shared by the networks: noise-level embedding, residual block, attention, config I/O.

Networks know nothing of schedules. They receive x_t scaled to unit variance and the noise level as
log-SNR (see DESIGN.md), so one classifier can serve models trained on different schedules.
"""

from __future__ import annotations

import math
from dataclasses import fields

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

LOG_SNR_CLAMP = 15.0  # log-SNR fed to networks is clamped to [-15, 15] (t = 0 and flow's t = 1 are infinite)


def config_from_dict(cls, data: dict):
    """A config dataclass from its JSON dict: unknown fields are an error, lists become tuples."""
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)


def noise_level_embedding(log_snr: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the clamped log-SNR (Vaswani et al. 2017 frequencies)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=log_snr.device) / half)
    angles = 25.0 * log_snr.clamp(-LOG_SNR_CLAMP, LOG_SNR_CLAMP).float()[:, None] * freqs[None]  # (B, half)
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # (B, dim)


def group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels), channels)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the embedding modulates the second norm (scale and shift)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float = 0.0):
        super().__init__()
        self.norm1, self.conv1 = group_norm(c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * c_out)
        self.norm2, self.conv2 = group_norm(c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
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
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):  # (B, C, H, W)
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three n d) h w -> three b n (h w) d", three=3, n=self.heads)
        attended = F.scaled_dot_product_attention(q, k, v)  # (B, heads, HW, d)
        return x + self.out(rearrange(attended, "b n (h w) d -> b (n d) h w", h=h, w=w))
