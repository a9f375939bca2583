"""The one build step both model readers end in: a ModelSource (what a reader found and checked in its own bytes)
becomes a LoadedModel. checkpoint.py describes our .safetensors files, diffusers_folder.py a diffusers pipeline
folder; neither calls the other, and everything after the bytes (the network on the meta device against the tensor
table, the tensors themselves, eval() with gradients off, the SHA-256) happens here once."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from ..core.schedules import Schedule
from ..models import build_network
from .safetensors_container import CheckpointError, tensor_shapes

MAX_PARAMETERS = 300_000_000  # a network larger than this (1.2 GB in float32) is refused before it is built


@dataclass
class LoadedModel:
    kind: str
    network: torch.nn.Module
    config: dict  # the parsed `config` metadata
    training: dict
    card: str
    path: Path | None = None
    sha256: str = ""  # of the bytes this model was loaded from
    # False: described from its header alone (describe_model): the network is built on the meta device, with the
    # file's tensor names and shapes and no values, so it can be counted (parameters, FLOPs) but never run.
    weights: bool = True

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


@dataclass(frozen=True)
class ModelSource:
    """What a reader hands to the build step: the parsed `config` metadata and the rest of what it read."""
    kind: str
    config: dict  # our `config` metadata: network, network_config, image size and channels, classes, schedule, ...
    training: dict
    card: str
    path: Path  # the file or folder the model is known by
    weights: Path  # the safetensors file of the weights, as errors name it
    header: dict  # its safetensors header
    data_size: int  # the size of its data region
    data: bytes = b""  # the whole file (empty when only checking)
    weights_of: str = ""  # the submodule whose state dict the file holds ("" for the whole network)


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


def build_network_from_config(path: Path, config: dict, device=None) -> torch.nn.Module:
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


def network_of(source: ModelSource, device=None) -> torch.nn.Module:
    """The module whose tensors the weights file holds, built from the source's config."""
    network = build_network_from_config(source.path, source.config, device)
    return getattr(network, source.weights_of) if source.weights_of else network


def check_fits(source: ModelSource):
    """What can be checked without reading tensor data: the config builds a network of bounded size on the meta
    device (nothing allocated) whose tensor names and shapes are those of the file's tensor table, and every
    tensor's bytes are in the file (a truncated copy fails here, not when first used)."""
    expected = {name: tuple(t.shape) for name, t in network_of(source, torch.device("meta")).state_dict().items()}
    parameters = sum(torch.Size(shape).numel() for shape in expected.values())
    if parameters > MAX_PARAMETERS:
        raise CheckpointError(f"{source.weights.name}: its config describes a network of {parameters:,} parameters; "
                              f"at most {MAX_PARAMETERS:,}")
    _check_shapes(source.weights, expected, tensor_shapes(source.weights, source.header, source.data_size))


def build_loaded_model(source: ModelSource, device="cpu") -> LoadedModel:
    """The model in eval() with gradients off; tensors and SHA-256 come from the same bytes (source.data)."""
    check_fits(source)  # first, on the meta device: a config asking for a huge network fails unallocated
    network = build_network_from_config(source.path, source.config)
    try:
        tensors = load_safetensors(source.data)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{source.weights.name}: corrupt tensor data ({error})") from error
    target = getattr(network, source.weights_of) if source.weights_of else network
    expected = target.state_dict()
    for name, tensor in tensors.items():
        if tensor.is_floating_point() != expected[name].is_floating_point():
            raise CheckpointError(f"{source.weights.name}: tensor {name} has dtype {tensor.dtype}, expected "
                                  f"{expected[name].dtype}")
    target.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in tensors.items()})
    network.to(device).eval().requires_grad_(False)
    return LoadedModel(source.kind, network, source.config, source.training, source.card, source.path,
                       hashlib.sha256(source.data).hexdigest())


def describe_model(source: ModelSource, sha256: str) -> LoadedModel:
    """The model as its header describes it, for a process that answers questions about it but never runs it (the
    Ray-mode front): checked like a load (check_fits), the network on the meta device, no tensor data read."""
    check_fits(source)
    network = build_network_from_config(source.path, source.config, torch.device("meta")).eval().requires_grad_(False)
    return LoadedModel(source.kind, network, source.config, source.training, source.card, source.path, sha256,
                       weights=False)


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file read in chunks (a described model names its file as a loaded one does, without the
    whole file in memory)."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except OSError as error:
        raise CheckpointError(f"{path.name}: cannot read ({error.strerror or type(error).__name__})") from error


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
