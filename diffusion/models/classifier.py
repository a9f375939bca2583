"""An image classifier, noise-conditioned (for classifier guidance) or clean (the evaluator)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ResBlock, config_from_dict, group_norm, noise_level_embedding


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
    from_dict = classmethod(config_from_dict)


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
        self.norm = group_norm(ch)
        self.head = nn.Linear(ch, c.num_classes)
        self.feature_dim = ch

    def features(self, x, log_snr=None):
        h = self._trunk(x, log_snr, self.blocks)
        return F.silu(self.norm(h)).mean(dim=(2, 3))  # (B, D)

    def early_features(self, x, log_snr=None):
        """The first residual block's feature maps, at full resolution (B, base_channels, H, W): local edges and
        texture, before any pooling (what texture statistics are computed from)."""
        return self._trunk(x, log_snr, self.blocks[:1])

    def _trunk(self, x, log_snr, blocks):
        c = self.config
        if self.noise_mlp is not None:
            if log_snr is None:
                raise ValueError("this classifier is noise-conditioned: pass log_snr")
            emb = self.noise_mlp(noise_level_embedding(log_snr, c.embedding_dim))
        else:
            emb = torch.zeros(x.shape[0], c.embedding_dim, device=x.device, dtype=x.dtype)
        h = self.stem(x)
        for block in blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return h

    def forward(self, x, log_snr=None):
        return self.head(self.features(x, log_snr))
