"""The seam between the app and the sampling work: a Backend runs every piece of work the page asks for.

    LocalBackend(cache)      today's behaviour: the work runs in this process on the cache's models
    RayBackend(handle)       (serving/ray_serve.py) the same operations, run by Ray Serve `Sampler` replicas

An operation is one row of OPERATIONS: a name and a function(cache, *args, progress=..., preview=..., **kwargs).
Its arguments and results are plain data (requests, plans, tensors, result dataclasses), so a backend may ship
them to another process. The front keeps its ModelCache for metadata (classes, kinds, headers, the work budget);
`backend_for(cache)` is the backend that does its work (LocalBackend unless one was bound with `use_backend`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from .edits import run_edit
from .engine import ModelCache, run_request
from .lens import likelihood_lens
from .studies import compare_samplers, encode_image, guidance_sweep, same_noise, trajectory
from .xy import run_grid

# name -> function(cache, *args, **kwargs): every kind of work a Backend runs. A remote backend runs only these.
OPERATIONS = {
    "run_request": run_request,  # (request, progress(done, total), preview(step, t, x_t, x0_hat), ...) -> SampleResult
    "run_edit": run_edit,  # (EditRequest, image, mask, progress, preview) -> EditResult
    "compare_samplers": compare_samplers,  # (requests, progress(i, done, total)) -> (results, manifest)
    "guidance_sweep": guidance_sweep,  # (base, scales, methods, progress(i, n, done, total)) -> [SweepRow]
    "trajectory": trajectory,  # (request, frames, progress(done, total))
    "same_noise": same_noise,  # (requests, x_T, progress(i, done, total)) -> [FamilyColumn]
    "encode_image": encode_image,  # (checkpoints, image, label, progress(model, done, total)) -> [Inversion]
    "likelihood_lens": likelihood_lens,  # (checkpoints, pixels, seed, progress(column, fraction)) -> [LensColumn]
    "run_grid": run_grid,  # (XYPlan, progress(cell, cells, done, total)) -> rows of XYCell
}


def _operation(name: str):
    def method(self, *args, **kwargs):
        return self.call(name, *args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = f"serving: {OPERATIONS[name].__module__}.{name} on this backend's models."
    return method


class Backend(ABC):
    """Runs the app's work. `call(name, *args, **kwargs)` is the one thing a backend implements; callbacks are
    passed as the keywords `progress` and `preview` and called in the caller's thread (an exception raised by one,
    e.g. the app's Cancelled, stops the work within one network evaluation)."""

    @abstractmethod
    def call(self, name: str, *args, **kwargs):
        ...

    run_request = _operation("run_request")
    run_edit = _operation("run_edit")
    compare_samplers = _operation("compare_samplers")
    guidance_sweep = _operation("guidance_sweep")
    trajectory = _operation("trajectory")
    same_noise = _operation("same_noise")
    encode_image = _operation("encode_image")
    likelihood_lens = _operation("likelihood_lens")
    run_grid = _operation("run_grid")

    @property
    def workers(self) -> int:
        """How many jobs it runs at once (the page's sampling concurrency)."""
        return 1


class LocalBackend(Backend):
    """Today's behaviour: each operation runs here, in the calling thread, on `cache`'s models."""

    def __init__(self, cache: ModelCache):
        self.cache = cache

    def call(self, name: str, *args, **kwargs):
        if name not in OPERATIONS:
            raise KeyError(f"no operation {name!r}")
        return OPERATIONS[name](self.cache, *args, **kwargs)


def use_backend(cache: ModelCache, backend: Backend | None) -> None:
    """Bind the backend that runs `cache`'s app's work (None: back to LocalBackend)."""
    cache.backend = backend


def backend_for(cache: ModelCache) -> Backend:
    """The backend bound to the app's cache, or LocalBackend(cache)."""
    return getattr(cache, "backend", None) or LocalBackend(cache)
