"""`python app.py --ray local|ADDRESS`: the Sampler deployment started from the front's settings, or one line saying
why not (Ray not installed, not reachable). Importing this module does not import Ray."""

from __future__ import annotations

import socket

from .engine import ModelCache

CONNECT_SECONDS = 5.0  # ray.init waits minutes for an address nobody answers at; a TCP probe says so at once


class RayUnavailable(RuntimeError):
    """Ray Serve cannot be used: the message is one line for the terminal."""


def start_ray_backend(cache: ModelCache, address: str, replicas: int = 1, *, batching: bool = True,
                      compile: bool = False, min_replicas: int | None = None, max_replicas: int | None = None,
                      temp_dir: str | None = None, num_cpus: int | None = None):
    """A RayBackend over `replicas` Sampler replicas that load what `cache` serves (same folders, same budget). A
    `cache` built with weights=False (app.py's front) then takes the budget's rate and each file's call overhead from
    one replica, measured once here (only running a network measures them; the replica re-checks every request with
    its own, re-measured rate)."""
    try:
        from . import ray_serve
    except ImportError as error:
        raise RayUnavailable(f"--ray needs Ray Serve, which is not installed ({error}); install it with "
                             f"pip install -e \".[serve]\"") from None
    if address != "local":
        _probe(address)
    budget = cache.budget
    config = ray_serve.SamplerConfig(
        str(cache.checkpoint_dir), tuple(map(str, cache.extra_folders)),
        max_request_seconds=budget.seconds if budget else None,
        flops_per_second=budget.flops_per_second if budget else None, compile=compile, batching=batching)
    try:
        backend = ray_serve.start(config, address, replicas, temp_dir=temp_dir, num_cpus=num_cpus, front=cache,
                                  min_replicas=min_replicas, max_replicas=max_replicas)
        if not cache.weights:  # a front that holds no network: its budget's rate and overheads come from a replica
            cache.measured_by(backend)
        return backend
    except Exception as error:  # noqa: BLE001 - any failure to join or deploy is one line, not a traceback
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:300]
        where = "start a local Ray" if address == "local" else f"reach Ray at {address[:200]}"
        raise RayUnavailable(f"could not {where}: {first}") from None


def _probe(address: str) -> None:
    """RayUnavailable unless something accepts a TCP connection at HOST:PORT (ray://HOST:PORT too)."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"--ray takes 'local' or HOST:PORT (the head's GCS port, 6379 by default), got "
                             f"{address[:200]!r}")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as error:
        raise RayUnavailable(f"could not reach Ray at {address[:200]}: {error.strerror or error} (is `ray start "
                             f"--head` running there?)") from None
