"""diffusion-playground: schedules, networks, samplers, guidance and checkpoints for diffusion and flow models,
and normalizing flows with exact likelihood.

The packages are the layers, and each imports only the ones below it (tests/test_layers.py checks it):

    app/         Gradio: one module per tab (the only place that imports gradio)
    training/    the Trainer and one task per checkpoint kind      evaluation/  parts, reports, benchmarks
    serving/     requests, the model cache, budget, studies, edits  lab2d/       the exact 2-D Gaussian-mixture lab
    formats/     every reader and writer of bytes (checkpoints, diffusers folders, manifest, images, data)
    models/      networks, one registry; they know nothing of schedules
    core/        the math: schedules, parameterizations, denoiser, guidance, samplers, likelihood, editing

This file only keeps the module names of the flat layout (`diffusion.engine`, ...) importable for one release,
each with a DeprecationWarning that names its new home.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# The flat layout's module names and where each lives now.
MOVED_MODULES = {
    **{f"diffusion.{name}": f"diffusion.core.{name}" for name in (
        "schedules", "parameterization", "denoiser", "guidance", "sampling", "likelihood", "straightness",
        "objective", "editing", "metrics")},
    **{f"diffusion.{name}": f"diffusion.formats.{name}" for name in (
        "checkpoint", "diffusers_folder", "manifest", "jsonsafe", "images", "data", "outputs")},
    **{f"diffusion.{name}": f"diffusion.serving.{name}" for name in (
        "engine", "budget", "compiled", "studies", "edits", "xy", "lens", "app_client", "distributed", "settings")},
    **{f"diffusion.{name}": f"diffusion.evaluation.{name}" for name in (
        "benchmark", "race", "gpu_benchmark", "edit_report")},
    "diffusion.two_sample": "diffusion.evaluation.judge",
}


class _MovedModuleLoader(importlib.abc.Loader):
    def __init__(self, new_name: str):
        self.new_name = new_name

    def create_module(self, spec):
        return importlib.import_module(self.new_name)  # the same module object under both names

    def exec_module(self, module):
        pass


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        new_name = MOVED_MODULES.get(fullname)
        if new_name is None:
            return None
        warnings.warn(f"{fullname} has moved to {new_name}; the old name goes in the next release",
                      DeprecationWarning, stacklevel=2)
        return importlib.util.spec_from_loader(fullname, _MovedModuleLoader(new_name))


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
