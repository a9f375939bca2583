"""One work budget for every endpoint: what a request will cost, estimated before any work starts.

A network call costs a fixed overhead (Python, dispatch, many small kernels: what dominates one image through a
small UNet) plus its arithmetic (the FLOPs of each image in the batch). Both are kept in one unit, FLOPs: the
overhead of a call is measured once per model as (seconds of a batch-1 call x this machine's rate - its FLOPs),
so an estimate is (FLOPs + calls x overhead) / the rate now. The rate is re-measured by short probes while the
server lives (the median of the recent ones), so a server started on a busy machine does not refuse for its
whole life what an idle one accepts. A DDIM-1000 grid of one image and a 64-image one are then both estimated
within 2x of what they take (docs/benchmarks-budget.md), not only the large ones.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch

# Convolutions and attention at the app's batch sizes reach about this share of a large matmul's FLOP rate
# (measured: 55-71 % for fashion-diffusion's UNet at batch 16-64 on 2 CPU cores, issue 30).
MODEL_EFFICIENCY = 0.6
DEFAULT_REQUEST_SECONDS = 180.0  # DDPM-1000 with CFG for 16 images fits; an hour-long grid does not
PROBE_INTERVAL_SECONDS = 30.0  # at most one rate probe (about 0.1 s of matmuls) per this long
PROBES_KEPT = 5  # the rate is the median of this many recent probes: one probe on a loaded moment does not rule


@dataclass(frozen=True)
class Work:
    """The estimated cost of some sampling: image-evaluations (for the sentence), the arithmetic, and the per-call
    overhead of every network call, both in FLOPs."""

    evaluations: int = 0
    flops: float = 0.0
    overhead_flops: float = 0.0  # calls x each network's measured per-call overhead, in FLOP-equivalents

    def __add__(self, other: "Work") -> "Work":
        return Work(self.evaluations + other.evaluations, self.flops + other.flops,
                    self.overhead_flops + other.overhead_flops)

    def __mul__(self, times: int) -> "Work":
        return Work(self.evaluations * times, self.flops * times, self.overhead_flops * times)

    @property
    def total_flops(self) -> float:
        return self.flops + self.overhead_flops


@dataclass(frozen=True)
class MeasuredFigures:
    """What a work budget can only measure by running networks, measured where they run (a Ray replica) and given
    to a front that holds none: the FLOP rate, and each file's per-call overhead in FLOP-equivalents by SHA-256."""

    flops_per_second: float
    overheads: dict = field(default_factory=dict)
    device_type: str = "cpu"  # where they were measured (FLOPs are counted as that device's kernels count them)


def matmul_flops_per_second(device_type: str = "cpu") -> float:
    """One probe of this machine's float32 matmul rate: the best of 5 products of 1024^2 matrices (about 0.1 s on
    a CPU)."""
    device = torch.device(device_type)
    a = torch.randn(1024, 1024, device=device)
    best = float("inf")
    for _ in range(5):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ a
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * 1024**3 / max(best, 1e-9)


class MachineRate:
    """The FLOP rate a model reaches here now: MODEL_EFFICIENCY x the median of the last PROBES_KEPT matmul probes,
    probing again when the newest probe is older than `interval` seconds. Thread-safe."""

    def __init__(self, device_type: str = "cpu", interval: float = PROBE_INTERVAL_SECONDS, kept: int = PROBES_KEPT,
                 probe: Callable[[str], float] = matmul_flops_per_second, clock: Callable[[], float] = time.monotonic):
        self.device_type, self.interval, self.probe, self.clock = device_type, interval, probe, clock
        self.probes: deque[float] = deque(maxlen=kept)
        self.last_probe = -float("inf")
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            if self.clock() - self.last_probe >= self.interval:
                self.probes.append(self.probe(self.device_type))
                self.last_probe = self.clock()
            return MODEL_EFFICIENCY * statistics.median(self.probes)


@dataclass(frozen=True)
class WorkBudget:
    """At most `seconds` of estimated work per request. `flops_per_second` None: this machine's rate, re-measured
    (MachineRate); tests pass a fixed rate, so their limits do not depend on the machine."""

    seconds: float = DEFAULT_REQUEST_SECONDS
    flops_per_second: float | None = None
    device_type: str | None = None  # where the rate is measured; None: the model cache's device (it fills this in)
    machine_rate: MachineRate | None = field(default=None, compare=False, repr=False)
    # A network call's fixed cost in seconds; None: measured per model as it loads. A fixed rate describes a fixed,
    # imagined machine, whose calls cannot be timed on this one: it has a fixed call cost too (0 unless given).
    call_seconds: float | None = None

    def __post_init__(self):
        if self.flops_per_second is None and self.machine_rate is None:
            object.__setattr__(self, "machine_rate", MachineRate(self.device_type or "cpu"))
        if self.flops_per_second is not None and self.call_seconds is None:
            object.__setattr__(self, "call_seconds", 0.0)

    @property
    def bounded(self) -> bool:
        """False for the command line's and evaluations' unbounded budget: it refuses nothing, so it needs no rate."""
        return self.seconds < float("inf")

    @property
    def rate(self) -> float:
        return self.flops_per_second or self.machine_rate()

    def probe_rate(self) -> float:
        """The rate at this moment (one probe, not the median): to turn a timing taken now into FLOPs."""
        return self.flops_per_second or MODEL_EFFICIENCY * self.machine_rate.probe(self.machine_rate.device_type)

    def estimate_seconds(self, work: Work) -> float:
        return work.total_flops / self.rate

    def check(self, work: Work, what: str = "this request") -> float:
        """The estimated seconds, or a ValueError sentence with the estimate and the limit."""
        estimate = self.estimate_seconds(work)
        if estimate > self.seconds:
            raise ValueError(f"{what} needs {work.evaluations:,} image-evaluations, about {estimate:,.0f} s of work on "
                             f"this machine; the limit is {self.seconds:,.0f} s per request: fewer images, steps, cells "
                             f"or rows")
        return estimate
