"""Pixels out of the library: tensors in [-1, 1] -> uint8 grids and PIL images."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange
from PIL import Image

from .data import to_uint8


def image_grid(images: torch.Tensor, columns: int, padding: int = 2) -> torch.Tensor:
    """(N, C, H, W) in [-1, 1] -> one uint8 (C, rows*(H+p)+p, columns*(W+p)+p) grid, filled row by row."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    canvas = torch.full((rows * columns, c, h + padding, w + padding), 255, dtype=torch.uint8)
    canvas[:n, :, padding:, padding:] = to_uint8(images.detach().float().cpu())
    grid = rearrange(canvas, "(r k) c h w -> c (r h) (k w)", r=rows, k=columns)
    return torch.nn.functional.pad(grid, (0, padding, 0, padding), value=255)


def to_pil(image_uint8: torch.Tensor, scale: int = 1) -> Image.Image:
    """(C, H, W) uint8 -> PIL (gray for C = 1), optionally enlarged with nearest neighbours."""
    array = rearrange(image_uint8, "c h w -> h w c").numpy()
    pil = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
    return pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST) if scale > 1 else pil


def display_scale(side: int, target: int = 96) -> int:
    """Whole-number enlargement that shows a side-px image at about `target` px (28 -> 3, 64 -> 2, >= 96 -> 1)."""
    return max(1, round(target / side))


def labelled_rows(rows: list[Image.Image], labels: list[str], padding: int = 4) -> Image.Image:
    """Pictures stacked top to bottom, each with its label written to its left (as a person reads a sweep)."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    left = 8 + max(len(label) for label in labels) * 6  # the default bitmap font is about 6 px per character
    width = left + max(row.width for row in rows)
    height = sum(row.height + padding for row in rows) + padding
    picture = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(picture)
    top = padding
    for row, label in zip(rows, labels):
        picture.paste(row.convert("RGB"), (left, top))
        draw.text((4, top + row.height // 2 - 6), label, fill="black", font=font)
        top += row.height + padding
    return picture


def captioned_row(pictures: list[Image.Image], captions: list[str], padding: int = 6) -> Image.Image:
    """Pictures side by side, left to right, each with its caption written under it."""
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    cell = max(max(p.width for p in pictures), 6 * max(len(c) for c in captions))  # about 6 px per character
    height = max(p.height for p in pictures)
    picture = Image.new("RGB", (len(pictures) * (cell + padding) + padding, height + 2 * padding + 14), "white")
    draw = ImageDraw.Draw(picture)
    for column, (part, caption) in enumerate(zip(pictures, captions)):
        left = padding + column * (cell + padding)
        picture.paste(part.convert("RGB"), (left + (cell - part.width) // 2, padding))
        draw.text((left + (cell - 6 * len(caption)) // 2, height + padding + 2), caption, fill="black", font=font)
    return picture


# --- fitting a received picture to a model's size -----------------------------------------------------------------
FITS = {"crop": "centre-cropped to keep its shape", "pad": "padded with its edge colour to keep its shape"}


def is_colour(picture: Image.Image) -> bool:
    """Whether a picture has colour: an RGB file whose three channels are equal everywhere is grey."""
    if picture.mode in ("1", "L", "LA", "I", "I;16", "F"):
        return False
    red, green, blue = picture.convert("RGB").split()
    return red.tobytes() != green.tobytes() or green.tobytes() != blue.tobytes()


def edge_colour(picture: Image.Image):
    """The median colour of a picture's one-pixel border: the padding that continues its background."""
    array = np.asarray(picture)
    border = np.concatenate([array[0], array[-1], array[:, 0], array[:, -1]])  # (2W + 2H, C) or (2W + 2H,)
    median = np.median(border, axis=0).astype(np.uint8)
    return int(median) if median.ndim == 0 else tuple(int(v) for v in median)


def fit_picture(picture: Image.Image, shape, fit: str = "crop", fill=None) -> tuple[Image.Image, str]:
    """A received picture as the model's `shape` (C, H, W) without distorting it: centre-cropped or padded (with
    `fill`, else its edge colour) to the model's aspect ratio, box-resized, grey or colour as the model takes; and a
    sentence saying what was done."""
    if fit not in FITS:
        raise ValueError(f"fit must be one of {', '.join(FITS)}, got {str(fit)[:40]!r}")
    channels, height, width = shape
    before = f"{picture.width}x{picture.height} {'colour' if is_colour(picture) else 'grey'}"
    converted = picture.convert("L" if channels == 1 else "RGB")
    box_w, box_h = picture.width, picture.height
    if box_w * height != box_h * width:  # another aspect ratio than the model's
        if fit == "crop":
            box_w, box_h = min(box_w, box_h * width // height), min(box_h, box_w * height // width)
            left, top = (picture.width - box_w) // 2, (picture.height - box_h) // 2
            converted = converted.crop((left, top, left + box_w, top + box_h))
        else:
            box_w, box_h = max(box_w, -(-box_h * width // height)), max(box_h, -(-box_w * height // width))
            canvas = Image.new(converted.mode, (box_w, box_h), edge_colour(converted) if fill is None else fill)
            canvas.paste(converted, ((box_w - picture.width) // 2, (box_h - picture.height) // 2))
            converted = canvas
    fitted = converted.resize((width, height), Image.Resampling.BOX)
    after = f"{width}x{height} {'grey' if channels == 1 else 'colour'}"
    how = f", {FITS[fit]}" if (box_w, box_h) != picture.size else ""
    return fitted, f"{before} -> {after}{how}"


# --- reading pictures we did not write ----------------------------------------------------------------------------
# The only decoders a received picture reaches: PIL would otherwise try each of its ~40 (EPS goes to Ghostscript where
# it is installed; TIFF, PSD, ... are large attack surfaces for pictures nobody needs here).
PICTURE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
FORMATS_SENTENCE = "send a PNG, JPEG, WebP or GIF file"


def open_picture(path) -> Image.Image:
    """PIL's header read of a received file, with PICTURE_FORMATS' decoders only; ValueError with a sentence for a
    file that is none of them, unreadable, or whose compressed text chunks would expand past PIL's 1 MB bound (a
    text-chunk bomb: its own sentence, not "not an image")."""
    try:
        return Image.open(path, formats=PICTURE_FORMATS)
    except ValueError as error:
        if "MAX_TEXT_CHUNK" in str(error) or "text chunks" in str(error):
            raise ValueError("the PNG's compressed text chunks expand to more than 1 MB (a decompression bomb); save "
                             "the picture again without them") from None
        raise ValueError(f"the file is not an image this app can read: {FORMATS_SENTENCE}") from None
    except (OSError, Image.DecompressionBombError):
        raise ValueError(f"the file is not an image this app can read: {FORMATS_SENTENCE}") from None
