"""Likelihood units shared by every model: uniform dequantization of 8-bit pixels and bits per dimension.

Data live in [-1, 1], so pixel value k in 0..255 owns the bin [2k/256 - 1, 2(k+1)/256 - 1) of width 2/256.
Uniform dequantization x = 2(k + u)/256 - 1, u ~ U[0, 1)^D, turns a density p into a bound on the discrete
probability (Theis et al. 2016): log P(k) >= E_u log p(x) + D log(2/256). Bits per dimension:
    bits/dim = -(log p(x) + D log(2/256)) / (D ln 2)
"""

from __future__ import annotations

import math

import torch

BIN_WIDTH = 2 / 256  # one 8-bit level in the [-1, 1] data range


def uniform_dequantize(pixels_uint8: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 pixels k -> 2(k + u)/256 - 1 with u ~ U[0, 1) drawn (on the CPU) from `generator`."""
    u = torch.rand(pixels_uint8.shape, generator=generator)
    return ((pixels_uint8.cpu().double() + u.double()) * BIN_WIDTH - 1).float().to(pixels_uint8.device)


def bits_per_dim(log_density: torch.Tensor, dims: int) -> torch.Tensor:
    """-(log p(x) + D log(2/256)) / (D ln 2): nats of a density on [-1, 1]^D -> bits per 8-bit dimension."""
    return -(log_density + dims * math.log(BIN_WIDTH)) / (dims * math.log(2))
