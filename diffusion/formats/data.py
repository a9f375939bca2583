"""Data sets as uint8 tensors (N, C, H, W) plus labels; converted to [-1, 1] floats per batch."""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np  # only to wrap PIL images; ships with torch
import torch

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
_IDX_DTYPES = {0x08: torch.uint8}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


class DataError(RuntimeError):
    """A data set is missing or malformed."""


@dataclass
class ImageDataset:
    images: torch.Tensor  # (N, C, H, W) uint8
    labels: torch.Tensor  # (N,) int64
    class_names: tuple[str, ...]

    def __len__(self):
        return len(self.labels)

    def batch(self, indices: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(images in [-1, 1], labels) of the given rows, on the device."""
        return to_model_range(self.images[indices]).to(device), self.labels[indices].to(device)


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images_uint8.float() / 127.5 - 1


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float [-1, 1] -> uint8 [0, 255], rounding."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file (LeCun's MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as error:
        raise DataError(f"cannot read IDX file {path}: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is not an IDX file (bad magic number)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise DataError(f"{path}: unsupported IDX element type 0x{type_code:02x} (only unsigned bytes)")
    header = 4 + 4 * ndim
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape)) if shape else 0
    if len(raw) - header != count:
        raise DataError(f"{path}: expected {count} values for shape {shape}, found {len(raw) - header}")
    return torch.frombuffer(bytearray(raw[header:]), dtype=torch.uint8).reshape(shape)


def load_fashion_mnist(split: str = "train", root: Path | str = FASHION_MNIST_DIR) -> ImageDataset:
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    image_file, label_file = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
    for file in (image_file, label_file):
        if not file.exists():
            raise DataError(f"Fashion-MNIST file {file} not found. Install Debian's package "
                            f"'dataset-fashion-mnist' (apt install dataset-fashion-mnist) or pass --data-dir.")
    images, labels = read_idx(image_file), read_idx(label_file)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{root}: images {tuple(images.shape)} and labels {tuple(labels.shape)} do not match")
    return ImageDataset(images[:, None].contiguous(), labels.long(), FASHION_MNIST_CLASSES)


def load_image_folder(root: Path | str, image_size: int, channels: int = 1) -> ImageDataset:
    """One subfolder per class (sorted names are the classes); images resized to image_size square."""
    from PIL import Image

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root} has no class subfolders (expected one folder of images per class)")
    mode = {1: "L", 3: "RGB"}[channels]
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((root / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(file) as image:
                    pixels = np.asarray(image.convert(mode).resize((image_size, image_size), Image.BICUBIC))
            except OSError as error:
                raise DataError(f"cannot read image {file}: {error}") from error
            images.append(torch.from_numpy(pixels.copy()).reshape(image_size, image_size, channels).permute(2, 0, 1))
            labels.append(label)
    if not images:
        raise DataError(f"{root} contains no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return ImageDataset(torch.stack(images), torch.tensor(labels), tuple(classes))
