"""A diffusers `UNet2DModel` behind this project's network call.

    ours:       network(x_t / sqrt(alpha^2 + sigma^2), log_snr, labels, x0_previous) -> prediction
    diffusers:  unet(x_t, timestep k, class_labels).sample

A diffusers UNet is told the discrete timestep k of the schedule it was trained on, not a noise level, so
this adapter is the one network that carries a schedule: it turns the log-SNR back into k through the
training betas (fractional between steps, exact at them: k sits at t = (k + 1) / N of our vp-discrete
schedule). For VP schedules alpha^2 + sigma^2 = 1, so the input scaling is the identity. diffusers is an
optional dependency, imported only when such a network is built.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.schedules import DiscreteBetas, Schedule

IMAGE_CHANNELS = (1, 3)
IMAGE_SIZES = (8, 256)  # smallest and largest side served
INSTALL_HINT = "pip install 'diffusion-playground[diffusers]'"


def import_unet2d():
    """diffusers' UNet2DModel class, or an ImportError that says how to install it."""
    try:
        from diffusers import UNet2DModel
    except ImportError as error:
        raise ImportError(f"diffusers UNet2DModel checkpoints need the optional diffusers package: {INSTALL_HINT}") from error
    return UNet2DModel


@dataclass(frozen=True)
class DiffusersUNetConfig:
    unet: dict = field(default_factory=dict)  # UNet2DModel's config.json as diffusers saved it
    betas: dict = field(default_factory=lambda: DiscreteBetas().to_dict())  # the training schedule's betas
    null_class: int | None = None  # a class embedding trained as "no class" (for CFG), if any: the last one

    def __post_init__(self):
        u = self.unet
        if not isinstance(u, dict) or not isinstance(self.betas, dict):
            raise ValueError("unet and betas must be JSON objects")
        size = u.get("sample_size")
        if isinstance(size, (list, tuple)) and len(size) == 2 and size[0] == size[1]:
            size = size[0]
        if isinstance(size, bool) or not isinstance(size, int) or not IMAGE_SIZES[0] <= size <= IMAGE_SIZES[1]:
            raise ValueError(f"sample_size must be one square side in [{IMAGE_SIZES[0]}, {IMAGE_SIZES[1]}] px, "
                             f"got {str(u.get('sample_size'))[:40]}")
        channels = u.get("in_channels", 3)
        if channels not in IMAGE_CHANNELS:
            raise ValueError(f"in_channels must be 1 (grey) or 3 (colour), got {str(channels)[:40]}")
        if u.get("out_channels", 3) != channels:
            raise ValueError(f"out_channels {str(u.get('out_channels', 3))[:40]} differs from in_channels {channels}: "
                             f"learned-variance UNets (twice the channels) are not supported")
        if u.get("time_embedding_type", "positional") != "positional":
            raise ValueError(f"time_embedding_type {str(u.get('time_embedding_type'))[:40]!r} is not supported "
                             f"(only 'positional', the DDPM timestep embedding)")
        if u.get("class_embed_type") is not None:
            raise ValueError(f"class_embed_type {str(u.get('class_embed_type'))[:40]!r} is not supported "
                             f"(only the num_class_embeds lookup table)")
        _check_sizes(u)
        classes = u.get("num_class_embeds")
        if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= 100_000):
            raise ValueError(f"num_class_embeds must be a positive whole number, got {str(classes)[:40]}")
        if self.null_class is not None and (not classes or self.null_class != classes - 1):
            raise ValueError(f"the null class must be the last class embedding ({(classes or 0) - 1}), "
                             f"got {self.null_class}")
        DiscreteBetas.from_dict(self.betas)  # raises ValueError for a bad schedule

    # --- what the rest of the library reads from a network's config --------------------------
    @property
    def image_size(self) -> int:
        size = self.unet["sample_size"]
        return size[0] if isinstance(size, (list, tuple)) else size

    @property
    def image_channels(self) -> int:
        return self.unet.get("in_channels", 3)

    @property
    def num_classes(self) -> int:
        """Selectable classes: the class embeddings less the null one."""
        embeds = self.unet.get("num_class_embeds") or 0
        return embeds - 1 if self.null_class is not None else embeds

    self_condition = False

    def to_dict(self) -> dict:
        return {"unet": dict(self.unet), "betas": dict(self.betas), "null_class": self.null_class}

    @classmethod
    def from_dict(cls, data: dict) -> "DiffusersUNetConfig":
        unknown = set(data) - {"unet", "betas", "null_class"}
        if unknown:
            raise ValueError(f"unknown DiffusersUNetConfig fields {sorted(unknown)}")
        return cls(**data)


def _whole(value, low: int, high: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and low <= value <= high


def _check_sizes(unet: dict):
    """Bounds on the sizes that decide how many modules a config builds: a hostile config cannot make building
    (even on the meta device) take hours. Wide enough for published DDPM models (CIFAR-10 to LSUN 256)."""
    widths = unet.get("block_out_channels", (224, 448, 672, 896))
    if not isinstance(widths, (list, tuple)) or not 1 <= len(widths) <= 8 or not all(_whole(w, 1, 4096) for w in widths):
        raise ValueError("block_out_channels must be 1 to 8 whole numbers of at most 4096")
    for key in ("down_block_types", "up_block_types"):
        kinds = unet.get(key, ("",) * len(widths))
        if not isinstance(kinds, (list, tuple)) or len(kinds) != len(widths) or not all(isinstance(k, str) for k in kinds):
            raise ValueError(f"{key} must name one block type per entry of block_out_channels")
    for key, high in (("layers_per_block", 8), ("norm_num_groups", 4096), ("attention_head_dim", 4096),
                      ("in_channels", 3), ("out_channels", 6)):
        value = unet.get(key)
        if value is not None and not _whole(value, 1, high):
            raise ValueError(f"{key} must be a whole number in [1, {high}], got {str(value)[:40]}")
    # Numbers the UNet only reads when it runs: checked here, so such a folder is unavailable at listing, not on use.
    for key in ("norm_eps", "downsample_padding", "mid_block_scale_factor", "freq_shift", "dropout"):
        value = unet.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0):
            raise ValueError(f"{key} must be a finite number >= 0, got {str(value)[:40]!r}")
    if not isinstance(unet.get("flip_sin_to_cos", True), bool):
        raise ValueError("flip_sin_to_cos must be true or false")


class DiffusersUNet2D(nn.Module):
    """forward(x, log_snr, labels=None, x0_previous=None) -> the UNet's prediction, x's shape."""

    def __init__(self, config: DiffusersUNetConfig):
        super().__init__()
        self.config = config
        unet_class = import_unet2d()
        try:
            self.unet = unet_class.from_config({k: v for k, v in config.unet.items() if not k.startswith("_")})
        except Exception as error:  # noqa: BLE001 - diffusers' constructor on untrusted (size-bounded) values
            raise ValueError(f"UNet2DModel refused the config ({type(error).__name__}: {str(error)[:200]})") from error
        self.schedule = Schedule("vp-discrete", DiscreteBetas.from_dict(config.betas))

    def timestep(self, log_snr: torch.Tensor) -> torch.Tensor:
        """diffusers' timestep k for a log-SNR: k = N t - 1, t from the training schedule (float64 inside)."""
        t = self.schedule.t_from_log_snr(log_snr.double())
        return t * self.schedule.betas.steps - 1

    def forward(self, x, log_snr, labels=None, x0_previous=None):
        if x0_previous is not None:
            raise ValueError("a diffusers UNet2DModel is not self-conditioned")
        if labels is None and self.config.unet.get("num_class_embeds"):
            raise ValueError("this UNet2DModel is class-conditional and records no null class: choose a class")
        timestep = self.timestep(log_snr).to(device=x.device, dtype=torch.float32)
        return self.unet(x, timestep, class_labels=labels).sample  # (B, C, H, W)
