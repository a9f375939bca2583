"""Our model files: one .safetensors per model, the EMA weights plus JSON metadata. Never pickle.

The reader of this format: it checks the metadata and hands a ModelSource to model_build, which builds the model.

Metadata keys (string values): format, kind, config (JSON), training (JSON), card.
`config` holds the network class and config, and for denoisers the schedule, parameterization,
class names and self-conditioning flag; load_checkpoint rebuilds the model from the file alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..core.parameterization import check_parameterization
from ..core.sampling import ODE_SOLVERS
from ..core.schedules import Schedule
from ..models import NETWORKS, network_name
from .jsonsafe import load_json
from .model_build import (LoadedModel, ModelSource, build_loaded_model, check_fits, config_metadata, describe_model,
                          file_sha256)
from .outputs import atomic_write
from .safetensors_container import CheckpointError, read_header

__all__ = ["FORMAT", "KINDS", "CheckpointError", "LoadedModel", "check_file", "describe_checkpoint", "load_checkpoint",
           "model_config",
           "read_metadata", "save_checkpoint"]

FORMAT = "diffusion-playground/1"
# What a checkpoint can do: a denoiser goes through the samplers, a normalizing flow decodes noise exactly,
# a noisy classifier guides, an evaluator scores samples. models.NETWORKS says which network serves which.
KINDS = ("denoiser", "normalizing-flow", "noisy-classifier", "evaluator")


def model_config(kind: str, network: torch.nn.Module, *, class_names=(), schedule=None,
                 parameterization: str | None = None) -> dict:
    """The `config` metadata for a network; denoisers also need schedule (a Schedule.to_config value)
    and parameterization."""
    return config_metadata(kind, network_name(network), network.config, class_names=class_names, schedule=schedule,
                           parameterization=parameterization)


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


def read_metadata(path) -> dict:
    """The safetensors header's __metadata__, validated as far as the bytes go; no tensors are read."""
    path = Path(path)
    return _parse_metadata(path, read_header(path)[0])


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
    """read_metadata plus what can be checked without reading tensor data (model_build.check_fits)."""
    path = Path(path)
    header, data_size, _ = read_header(path)
    meta = _parse_metadata(path, header)
    check_fits(_source(path, meta, header, data_size))
    return meta


def load_checkpoint(path, device="cpu") -> LoadedModel:
    """Rebuild the network from the file alone, in eval() with gradients off.

    The file is read once: metadata, tensors and the SHA-256 all come from the same bytes, so a file
    replaced meanwhile can never give a mix (and the hash names exactly what was loaded)."""
    path = Path(path)
    header, data_size, data = read_header(path, whole=True)
    meta = _parse_metadata(path, header)
    return build_loaded_model(_source(path, meta, header, data_size, data), device)


def describe_checkpoint(path) -> LoadedModel:
    """The file as a LoadedModel from its header alone (model_build.describe_model): everything but the weights."""
    path = Path(path)
    header, data_size, _ = read_header(path)
    meta = _parse_metadata(path, header)
    return describe_model(_source(path, meta, header, data_size), file_sha256(path))


def _source(path: Path, meta: dict, header: dict, data_size: int, data: bytes = b"") -> ModelSource:
    return ModelSource(meta["kind"], meta["config"], meta["training"], meta["card"], path, path, header, data_size,
                       data)


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
