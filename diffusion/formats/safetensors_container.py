"""The safetensors container, read without trusting it: the JSON header of a regular file (never a link or a FIFO),
bounded in size, and a tensor table whose byte ranges fit their dtypes and shapes and tile the data region exactly.
Both model readers (checkpoint.py for our files, diffusers_folder.py for a diffusers UNet's weights) start here."""

from __future__ import annotations

import math
import os
import stat
import struct
from pathlib import Path

from .jsonsafe import load_json

MAX_HEADER_BYTES = 16 * 1024 * 1024  # a larger header is refused before it is read
# Bytes per element of the safetensors dtypes a model file may hold.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class CheckpointError(ValueError):
    """A model file is unreadable or inconsistent; the message names the file and the problem."""


def read_header(path: Path, whole: bool = False) -> tuple[dict, int, bytes]:
    """The safetensors JSON header, the size of the data region after it, and the bytes read (the whole
    file if `whole`). Only regular files are opened (a FIFO would block, a symbolic link could point
    anywhere), and no error repeats the file's bytes."""
    try:
        info = os.lstat(path)
        if stat.S_ISLNK(info.st_mode):
            raise CheckpointError(f"{path.name}: a symbolic link, not followed (copy the file into the folder)")
        if not stat.S_ISREG(info.st_mode):
            raise CheckpointError(f"{path.name}: not a regular file")
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            blob = f.read() if whole else f.read(8)
            if len(blob) < 8:
                raise CheckpointError(f"{path.name}: not a safetensors file (only {len(blob)} bytes)")
            (header_len,) = struct.unpack("<Q", blob[:8])
            if header_len > MAX_HEADER_BYTES or header_len + 8 > size:
                raise CheckpointError(f"{path.name}: not a safetensors file, or truncated (its header length "
                                      f"field does not fit a file of {size} bytes)")
            if not whole:
                blob += f.read(header_len)
    except OSError as error:
        raise CheckpointError(f"{path.name}: cannot read ({error.strerror or type(error).__name__})") from error
    try:
        header = load_json(blob[8:8 + header_len], f"{path.name} (safetensors header)")
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name}: not a safetensors file (header is not a JSON object)")
    return header, size - 8 - header_len, blob


def tensor_shapes(path: Path, header: dict, data_size: int) -> dict[str, tuple[int, ...]]:
    """{name: shape} of a header's tensor table, after checking that every tensor's byte range fits its shape and
    dtype and that the ranges tile the data region exactly, without gaps or overlaps."""
    tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
    try:
        table = sorted((_byte_range(name, entry), name) for name, entry in tensors.items())
        shapes = {name: tuple(entry["shape"]) for name, entry in tensors.items()}
    except (TypeError, KeyError, IndexError, ValueError) as error:
        raise CheckpointError(f"{path.name}: malformed tensor table in the header ({error})") from None
    position = 0
    for (begin, end), name in table:
        if begin != position:
            raise CheckpointError(f"{path.name}: tensor {name[:60]!r} starts at byte {begin:,} of the data, not at "
                                  f"{position:,} ({'overlapping' if begin < position else 'after a gap'})")
        position = end
    if position != data_size:
        raise CheckpointError(f"{path.name}: {'truncated' if position > data_size else 'trailing bytes'}: its tensors "
                              f"cover {position:,} bytes of data, the file has {max(data_size, 0):,}")
    return shapes


def _byte_range(name: str, entry) -> tuple[int, int]:
    """A header entry's [begin, end) in the data region, checked against its dtype and shape."""
    dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"tensor {name[:60]!r} has unsupported dtype {str(dtype)[:20]!r}")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise ValueError(f"tensor {name[:60]!r} has an invalid shape")
    if not (type(begin) is int and type(end) is int and 0 <= begin <= end):
        raise ValueError(f"tensor {name[:60]!r} has invalid data offsets")
    if end - begin != math.prod(shape) * DTYPE_BYTES[dtype]:
        raise ValueError(f"tensor {name[:60]!r} has {end - begin:,} bytes for a {dtype} tensor of shape "
                         f"{tuple(shape)[:8]}")
    return begin, end
