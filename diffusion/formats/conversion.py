"""Conversion between formats: a diffusers pipeline folder (read by diffusers_folder) written as one of our
checkpoint files (by checkpoint), so neither format's module needs the other."""

from __future__ import annotations

from pathlib import Path

from .checkpoint import save_checkpoint
from .diffusers_folder import load_folder, read_folder


def convert_folder(path, out, class_names: tuple[str, ...] | None = None, null_class: int | None = None) -> Path:
    """Write the folder as one of our .safetensors checkpoints (network recorded as DiffusersUNet2D)."""
    folder = read_folder(path, class_names, null_class)
    model = load_folder(path)
    training = model.training | {"command": f"python -m diffusion import-diffusers {folder.path.name}",
                                 "weights_sha256": model.sha256}
    return save_checkpoint(out, "denoiser", model.network, folder.config, training, folder.card)
