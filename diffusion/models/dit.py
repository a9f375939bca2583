"""A diffusion transformer (Peebles & Xie 2023) with the Stable Diffusion 3 changes (Esser et al. 2024): a 2-D
sine-cosine position embedding and RMS-normalised queries and keys. Same call as the UNet:
forward(x, log_snr, labels=None, x0_previous=None) -> prediction with x's shape."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from einops import rearrange
from torch import nn

from .blocks import config_from_dict, noise_level_embedding


@dataclass(frozen=True)
class DiTConfig:
    image_channels: int = 1
    image_size: int = 28
    patch_size: int = 2  # 28x28 -> 14x14 = 196 tokens
    width: int = 128
    depth: int = 6
    heads: int = 4
    mlp_ratio: float = 4.0
    num_classes: int = 0  # 0: unconditional; otherwise label num_classes is the "null" class for CFG
    self_condition: bool = False
    qk_norm: bool = True
    embedding_dim: int = 128  # sinusoidal features of the log-SNR

    def __post_init__(self):
        limits = {"image_size": 1024, "patch_size": 64, "width": 4096, "depth": 64, "heads": 64, "num_classes": 100_000,
                  "embedding_dim": 4096, "image_channels": 16}
        for name, high in limits.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not (0 if name == "num_classes" else 1) <= value <= high:
                raise ValueError(f"DiT {name} must be a whole number up to {high}, got {value!r:.40}")
        if not 0 < self.mlp_ratio <= 16:
            raise ValueError(f"DiT mlp_ratio must be in (0, 16], got {self.mlp_ratio!r:.40}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")
        if self.width % self.heads or (self.width // self.heads) % 2:
            raise ValueError(f"width {self.width} must split into {self.heads} heads of even size")
        if self.width % 4:
            raise ValueError("width must be divisible by 4 (the 2-D sine-cosine embedding)")

    @property
    def null_class(self) -> int | None:
        return self.num_classes if self.num_classes else None

    @property
    def tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    to_dict = asdict
    from_dict = classmethod(config_from_dict)


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, H/p * W/p, p*p*C) tokens, row-major over patches."""
    return rearrange(x, "b c (h p) (w q) -> b (h w) (p q c)", p=patch, q=patch)


def unpatchify(tokens: torch.Tensor, patch: int, channels: int, side: int) -> torch.Tensor:
    """Inverse of patchify."""
    return rearrange(tokens, "b (h w) (p q c) -> b c (h p) (w q)", h=side // patch, p=patch, q=patch, c=channels)


def sincos_position_embedding_2d(grid: int, width: int) -> torch.Tensor:
    """(grid*grid, width): half the channels encode the row, half the column, each as sin/cos of
    position * 10000^(-k / (width/4)) (MAE's and SD3's 2-D form of Vaswani et al. 2017)."""
    quarter = width // 4
    frequencies = 1.0 / 10_000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    parts = []
    for position in (rows.flatten(), cols.flatten()):
        angles = position[:, None] * frequencies[None]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * g over the last dimension (Zhang & Sennrich 2019)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.gain = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps).to(x.dtype) * self.gain


class SelfAttention(nn.Module):
    """Multi-head self-attention; with qk_norm the queries and keys are RMS-normalised per head (SD3), so the
    logits q.k / sqrt(d) stay bounded by sqrt(d) times the gains however large the activations grow."""

    def __init__(self, width: int, heads: int, qk_norm: bool):
        super().__init__()
        self.heads = heads
        head_dim = width // heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.q_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(head_dim) if qk_norm else nn.Identity()

    def logits(self, x):
        """(B, heads, N, N) attention logits, before the softmax."""
        q, k, _ = self._qkv(x)
        return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])

    def _qkv(self, x):
        q, k, v = rearrange(self.qkv(x), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        return self.q_norm(q), self.k_norm(k), v

    def forward(self, x):
        q, k, v = self._qkv(x)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.out(rearrange(out, "b h n d -> b n (h d)"))


def modulate(x, shift, scale):
    """adaLN: x * (1 + scale) + shift, per sample."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """x + gate_a * Attn(adaLN(x)); x + gate_m * MLP(adaLN(x)), with shifts, scales and gates regressed from the
    conditioning and initialised to zero (adaLN-Zero), so a fresh block is the identity."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, qk_norm: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attention = SelfAttention(width, heads, qk_norm)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.modulation[-1].weight)
        nn.init.zeros_(self.modulation[-1].bias)

    def forward(self, x, condition):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.modulation(condition).chunk(6, dim=1)
        x = x + gate_a[:, None] * self.attention(modulate(self.norm1(x), shift_a, scale_a))
        return x + gate_m[:, None] * self.mlp(modulate(self.norm2(x), shift_m, scale_m))


class DiT(nn.Module):
    """forward(x, log_snr, labels=None, x0_previous=None) -> prediction with x's shape."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = c = config
        in_channels = c.image_channels * (2 if c.self_condition else 1)
        self.embed = nn.Linear(in_channels * c.patch_size**2, c.width)
        self.register_buffer("position", sincos_position_embedding_2d(c.image_size // c.patch_size, c.width),
                             persistent=False)
        self.noise_mlp = nn.Sequential(nn.Linear(c.embedding_dim, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.class_embedding = nn.Embedding(c.num_classes + 1, c.width) if c.num_classes else None
        self.blocks = nn.ModuleList([DiTBlock(c.width, c.heads, c.mlp_ratio, c.qk_norm) for _ in range(c.depth)])
        self.final_norm = nn.LayerNorm(c.width, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c.width, 2 * c.width))
        self.head = nn.Linear(c.width, c.image_channels * c.patch_size**2)
        for layer in (self.final_modulation[-1], self.head):  # the whole network starts as the zero prediction
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, log_snr, labels=None, x0_previous=None):
        c = self.config
        condition = self.noise_mlp(noise_level_embedding(log_snr, c.embedding_dim))
        if self.class_embedding is not None:
            if labels is None:
                labels = torch.full((x.shape[0],), c.num_classes, device=x.device, dtype=torch.long)
            condition = condition + self.class_embedding(labels)
        if c.self_condition:
            x = torch.cat([x, torch.zeros_like(x) if x0_previous is None else x0_previous], dim=1)
        h = self.embed(patchify(x, c.patch_size)) + self.position
        for block in self.blocks:
            h = block(h, condition)
        shift, scale = self.final_modulation(condition).chunk(2, dim=1)
        tokens = self.head(modulate(self.final_norm(h), shift, scale))
        return unpatchify(tokens, c.patch_size, c.image_channels, c.image_size)
