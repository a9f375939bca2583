"""The networks, and the one registry that checkpoint loading and training read.

    name -> NetworkSpec(network class, config dataclass, checkpoint kinds it can serve)

Nothing outside this package names a concrete network class: a checkpoint records the registry name
and the config as JSON, and `build_network` rebuilds it.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .classifier import Classifier, ClassifierConfig
from .convnet import ConvNet, ConvNetConfig
from .diffusers_unet import DiffusersUNet2D, DiffusersUNetConfig
from .dit import DiT, DiTConfig
from .nice import NICE, NICEConfig
from .unet import UNet, UNetConfig

__all__ = ["NETWORKS", "NetworkSpec", "build_network", "network_name", "ClassifierConfig", "ConvNetConfig", "DiffusersUNetConfig",
           "DiTConfig", "NICEConfig", "UNetConfig"]


@dataclass(frozen=True)
class NetworkSpec:
    network: type[nn.Module]
    config: type
    kinds: tuple[str, ...]  # the checkpoint kinds a network of this class can serve


NETWORKS = {
    "UNet": NetworkSpec(UNet, UNetConfig, ("denoiser",)),
    "DiT": NetworkSpec(DiT, DiTConfig, ("denoiser",)),
    "Classifier": NetworkSpec(Classifier, ClassifierConfig, ("noisy-classifier", "evaluator")),
    "ConvNet": NetworkSpec(ConvNet, ConvNetConfig, ("evaluator",)),
    "NICE": NetworkSpec(NICE, NICEConfig, ("normalizing-flow",)),
    "DiffusersUNet2D": NetworkSpec(DiffusersUNet2D, DiffusersUNetConfig, ("denoiser",)),  # needs diffusers
}


def build_network(name: str, config) -> nn.Module:
    """A fresh network from its registry name and config (a config dataclass or its JSON dict)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r} (expected one of {sorted(NETWORKS)})")
    spec = NETWORKS[name]
    if isinstance(config, dict):
        config = spec.config.from_dict(config)
    if not isinstance(config, spec.config):
        raise TypeError(f"{name} needs a {spec.config.__name__}, got {type(config).__name__}")
    return spec.network(config)


def network_name(network: nn.Module) -> str:
    """The registry name of a built network."""
    for name, spec in NETWORKS.items():
        if type(network) is spec.network:
            return name
    raise ValueError(f"{type(network).__name__} is not a registered network")
