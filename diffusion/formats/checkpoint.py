"""Model files: one .safetensors per model, the EMA weights plus JSON metadata. Never pickle.

Metadata keys (string values): format, kind, config (JSON), training (JSON), card.
`config` holds the network class and config, and for denoisers the schedule, parameterization,
class names and self-conditioning flag; load_checkpoint rebuilds the model from the file alone.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from .jsonsafe import load_json
from ..models import NETWORKS, build_network, network_name
from ..core.parameterization import check_parameterization
from ..core.schedules import Schedule
from ..core.sampling import ODE_SOLVERS

FORMAT = "diffusion-playground/1"
# What a checkpoint can do: a denoiser goes through the samplers, a normalizing flow decodes noise exactly,
# a noisy classifier guides, an evaluator scores samples. models.NETWORKS says which network serves which.
KINDS = ("denoiser", "normalizing-flow", "noisy-classifier", "evaluator")
MAX_HEADER_BYTES = 16 * 1024 * 1024  # a larger header is refused before it is read


class CheckpointError(ValueError):
    """A model file is unreadable or inconsistent; the message names the file and the problem."""


@dataclass
class LoadedModel:
    kind: str
    network: torch.nn.Module
    config: dict  # the parsed `config` metadata
    training: dict
    card: str
    path: Path | None = None
    sha256: str = ""  # of the bytes this model was loaded from

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.config.get("class_names", ()))

    @property
    def name(self) -> str:
        """The name the app and CLI know it by: the file's stem, or a folder's name."""
        if self.path is None:
            return ""
        return self.path.name if self.path.is_dir() else self.path.stem

    @property
    def schedule(self) -> Schedule:
        return Schedule.from_config(self.config["schedule"])

    @property
    def parameterization(self) -> str:
        return self.config["parameterization"]

    @property
    def self_condition(self) -> bool:
        return bool(self.config.get("self_condition", False))

    @property
    def sampling_defaults(self) -> dict:
        """The settings a few-step model is meant to be sampled with (validated on load); {} for most models."""
        return dict(self.config.get("defaults", {}))


def model_config(kind: str, network: torch.nn.Module, *, class_names=(), schedule=None,
                 parameterization: str | None = None) -> dict:
    """The `config` metadata for a network; denoisers also need schedule (a Schedule.to_config value)
    and parameterization."""
    return config_metadata(kind, network_name(network), network.config, class_names=class_names, schedule=schedule,
                           parameterization=parameterization)


def config_metadata(kind: str, name: str, net_config, *, class_names=(), schedule=None,
                    parameterization: str | None = None) -> dict:
    """model_config from a registry name and a network config, for a network not built yet."""
    config = {
        "network": name,
        "network_config": net_config.to_dict(),
        "image_size": net_config.image_size,
        "image_channels": net_config.image_channels,
        "class_names": list(class_names),
    }
    if kind == "denoiser":
        config |= {"schedule": schedule, "parameterization": parameterization,
                   "self_condition": net_config.self_condition, "null_class": net_config.null_class}
    return config


def save_checkpoint(path, kind: str, network: torch.nn.Module, config: dict, training: dict, card: str,
                    dtype: torch.dtype = torch.float32) -> Path:
    """Write atomically: a temporary file in the same folder, then rename."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    _validate_config(kind, config, Path(path))
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in network.state_dict().items()}
    metadata = {"format": FORMAT, "kind": kind, "config": json.dumps(config), "training": json.dumps(training),
                "card": card}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def atomic_write(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _read_header(path: Path, whole: bool = False) -> tuple[dict, int, bytes]:
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


def read_metadata(path) -> dict:
    """The safetensors header's __metadata__, validated as far as the bytes go; no tensors are read."""
    path = Path(path)
    return _parse_metadata(path, _read_header(path)[0])


def _parse_metadata(path: Path, header: dict) -> dict:
    metadata = header.get("__metadata__")
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path.name}: no diffusion-playground metadata (a plain safetensors file?)")
    fmt = metadata.get("format")
    if fmt != FORMAT:
        if isinstance(fmt, str) and fmt.startswith("diffusion-playground/"):
            raise CheckpointError(f"{path.name}: metadata format {fmt!r} is not supported by this version "
                                  f"(expected {FORMAT!r}); upgrade diffusion-playground")
        raise CheckpointError(f"{path.name}: missing or unknown metadata format {fmt!r} (expected {FORMAT!r})")
    parsed = {"format": fmt, "kind": metadata.get("kind"), "card": metadata.get("card", "")}
    if parsed["kind"] not in KINDS:
        raise CheckpointError(f"{path.name}: unknown kind {parsed['kind']!r} (expected one of {KINDS})")
    for key in ("config", "training"):
        value = metadata.get(key, "null")
        if not isinstance(value, str):
            raise CheckpointError(f"{path.name}: metadata '{key}' is not a string")
        try:
            parsed[key] = load_json(value, f"{path.name}: metadata '{key}'")
        except ValueError as error:
            raise CheckpointError(str(error)) from None
        if not isinstance(parsed[key], dict):
            raise CheckpointError(f"{path.name}: metadata '{key}' is missing or not a JSON object")
    _validate_config(parsed["kind"], parsed["config"], path)
    return parsed


def check_file(path) -> dict:
    """read_metadata plus what can be checked without reading tensor data: every tensor's bytes are in the
    file (a truncated copy fails here, not when first used) and the config builds a network whose tensors
    have the file's names and shapes (built on the meta device: nothing is allocated)."""
    path = Path(path)
    header, data_size, _ = _read_header(path)
    meta = _parse_metadata(path, header)
    check_tensor_table(path, header, data_size, _network_on_meta(path, meta["config"]))
    return meta


# Bytes per element of the safetensors dtypes a model file may hold.
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
MAX_PARAMETERS = 300_000_000  # a network larger than this (1.2 GB in float32) is refused before it is built


def check_tensor_table(path: Path, header: dict, data_size: int, network: torch.nn.Module):
    """A safetensors header's tensors against a network built on the meta device (nothing allocated): the network
    is of bounded size; every tensor's byte range fits its shape and dtype; the ranges tile the data region
    exactly, without gaps or overlaps; and the names and shapes are the network's."""
    parameters = sum(t.numel() for t in network.state_dict().values())
    if parameters > MAX_PARAMETERS:
        raise CheckpointError(f"{path.name}: its config describes a network of {parameters:,} parameters; at most "
                              f"{MAX_PARAMETERS:,}")
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
    _check_shapes(path, {k: tuple(v.shape) for k, v in network.state_dict().items()}, shapes)


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


def _network_on_meta(path: Path, config: dict) -> torch.nn.Module:
    return build_from_config(path, config, torch.device("meta"))


def build_from_config(path: Path, config: dict, device=None) -> torch.nn.Module:
    """The network a checkpoint config names; a CheckpointError naming `path` for a bad config or a missing extra."""
    try:
        if device is None:
            return build_network(config["network"], config["network_config"])
        with device:
            return build_network(config["network"], config["network_config"])
    except ImportError as error:  # an optional dependency of this network (diffusers) is missing
        raise CheckpointError(f"{path.name}: {error}") from error
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path.name}: invalid network_config ({error})") from error


def load_checkpoint(path, device="cpu") -> LoadedModel:
    """Rebuild the network from the file alone, in eval() with gradients off.

    The file is read once: metadata, tensors and the SHA-256 all come from the same bytes, so a file
    replaced meanwhile can never give a mix (and the hash names exactly what was loaded)."""
    path = Path(path)
    header, data_size, data = _read_header(path, whole=True)
    meta = _parse_metadata(path, header)
    config = meta["config"]
    # The tensor table first, against the network on the meta device: a config asking for a huge network fails unallocated.
    check_tensor_table(path, header, data_size, _network_on_meta(path, config))
    network = build_from_config(path, config)
    try:
        tensors = load_safetensors(data)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path.name}: corrupt tensor data ({error})") from error
    _check_tensors(path, network.state_dict(), tensors)
    network.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    network.to(device).eval().requires_grad_(False)
    return LoadedModel(meta["kind"], network, config, meta["training"], meta["card"], path,
                       hashlib.sha256(data).hexdigest())


def _check_tensors(path: Path, expected: dict, found: dict):
    _check_shapes(path, {k: tuple(v.shape) for k, v in expected.items()}, {k: tuple(v.shape) for k, v in found.items()})
    for name, tensor in found.items():
        if tensor.is_floating_point() != expected[name].is_floating_point():
            raise CheckpointError(f"{path.name}: tensor {name} has dtype {tensor.dtype}, expected {expected[name].dtype}")


def _check_shapes(path: Path, expected: dict, found: dict):
    """Tensor names and shapes, {name: shape}, of what the network needs and what the file holds."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        raise CheckpointError(f"{path.name}: missing tensors {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if unexpected:
        raise CheckpointError(f"{path.name}: unexpected tensors {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}")
    for name, shape in found.items():
        if shape != expected[name]:
            raise CheckpointError(f"{path.name}: tensor {name} has shape {shape}, the network needs {expected[name]}")


def _validate_config(kind: str, config: dict, path: Path):
    def fail(message):
        raise CheckpointError(f"{path.name}: {message}")

    name = config.get("network")
    if name not in NETWORKS:
        fail(f"unknown network {name!r} (expected one of {sorted(NETWORKS)})")
    if kind not in NETWORKS[name].kinds:
        fail(f"a {name} network cannot serve as kind {kind!r} (it serves {', '.join(NETWORKS[name].kinds)})")
    if not isinstance(config.get("network_config"), dict):
        fail("config.network_config is missing")
    names = config.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        fail("config.class_names must be a list of strings")
    try:
        num_classes = NETWORKS[name].config.from_dict(config["network_config"]).num_classes
    except (TypeError, ValueError) as error:
        fail(f"invalid network_config ({error})")
    if num_classes and len(names) != num_classes:
        fail(f"{len(names)} class names for {num_classes} classes")
    if kind == "denoiser":
        try:
            Schedule.from_config(config.get("schedule"))
            check_parameterization(config.get("parameterization"))
        except (TypeError, ValueError) as error:
            fail(str(error))
        problem = defaults_problem(config.get("defaults", {}))
        if problem:
            fail(f"config.defaults: {problem}")


# A few-step model (a reflow student) names the settings it is meant to be sampled with; the app starts there.
DEFAULT_FIELDS = {"sampler": ("ode",), "solver": ODE_SOLVERS, "guidance": ("none", "cfg"), "steps": range(1, 1001)}


def defaults_problem(defaults) -> str:
    """Why a checkpoint's `defaults` cannot be used, or "" (they are data from a file: checked, never trusted)."""
    if not isinstance(defaults, dict):
        return "must be a JSON object"
    for key, value in defaults.items():
        if key not in DEFAULT_FIELDS:
            return f"unknown field {key!r:.40}"
        if isinstance(value, bool) or value not in DEFAULT_FIELDS[key]:
            return f"{key} {value!r:.40} is not one of the allowed values"
    return ""
