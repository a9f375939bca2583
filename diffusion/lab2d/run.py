"""Sampling a lab model through the library's own Denoiser and SAMPLERS (no 2-D copies of either), keeping the
paths of a few points for plots."""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import nn

from ..core.denoiser import Denoiser
from ..core.guidance import Guidance
from ..core.sampling import SAMPLERS, draw_noise, image_generators
from ..core.schedules import Schedule, time_grid


_STOP: ContextVar = ContextVar("lab2d_stop", default=None)  # this thread's stop check, set by `stoppable`


@contextmanager
def stoppable(check):
    """Within: every network evaluation and training step of the lab (in this thread) calls check(), which stops the
    work by raising (the app's Stop, a closed tab). Passed this way rather than as an argument because the lab's
    cached functions (lru_cache) must not take it into their keys."""
    token = _STOP.set(check)
    try:
        yield
    finally:
        _STOP.reset(token)


def stop_point() -> None:
    """Where the lab's work may be stopped: raises whatever the current check raises."""
    check = _STOP.get()
    if check is not None:
        check()


class _Stopping:
    """A network whose every call is a stop point; anything else is the network's."""

    def __init__(self, network: nn.Module):
        self.network = network

    def __call__(self, *args, **kwargs):
        stop_point()
        return self.network(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.__dict__["network"], name)


@dataclass(frozen=True)
class LabModel:
    """A denoiser network (forward(x, log_snr, labels, x0_previous)) and the target it predicts."""

    network: nn.Module
    parameterization: str

    def denoiser(self, schedule: Schedule, labels=None, guidance: Guidance = Guidance(),
                 guide: "LabModel | None" = None) -> Denoiser:
        return Denoiser(_Stopping(self.network), schedule, self.parameterization, labels=labels, guidance=guidance,
                        guide=(_Stopping(guide.network), guide.parameterization) if guide is not None else None)


@dataclass
class LabSamples:
    x_T: torch.Tensor  # (N, 2) the starting noise
    samples: torch.Tensor  # (N, 2) where the sampler ended
    paths: torch.Tensor  # (steps + 1, P, 2) the first P points' states, from x_T on (annealed Langevin: per level)
    nfe: int = 0


def starting_noise(seed: int, count: int) -> torch.Tensor:
    """(count, 2) standard normal points, point i from its own generator (seed, i) as images are."""
    return draw_noise(image_generators(seed, count), (2,))


@torch.no_grad()
def sample_points(model: LabModel, schedule: Schedule, labels: torch.Tensor, *, sampler: str = "ode", steps: int = 20,
                  options: dict | None = None, guidance: Guidance = Guidance(), guide: LabModel | None = None,
                  seed: int = 0, spacing: str = "uniform", path_rows: int = 0,
                  x_T: torch.Tensor | None = None) -> LabSamples:
    """Run SAMPLERS[sampler] on `model` from x_T (default: starting_noise(seed, N)); the sampler's own noise comes
    from per-point generators (seed, N + i), so point i depends only on (seed, i)."""
    count = len(labels)
    x_T = starting_noise(seed, count) if x_T is None else x_T
    generators = image_generators(seed, count, first_index=count)
    denoise = model.denoiser(schedule, labels, guidance, guide)
    paths = [x_T[:path_rows].clone()]

    def keep(step, t, x, x0):
        paths.append(x[:path_rows].float().clone())

    samples = SAMPLERS[sampler].sample(denoise, x_T, time_grid(schedule, steps, spacing), schedule=schedule,
                                       generators=generators, callback=keep, **(options or {}))
    return LabSamples(x_T, samples.float(), torch.stack(paths), denoise.nfe)
