"""One work budget for every endpoint: what a request will cost, estimated before any work starts.

The unit is floating-point operations: network evaluations x images x the FLOPs of one image through each network
a step runs (both rows of classifier-free guidance, autoguidance's weaker model, the noisy classifier's forward and
backward pass), counted once per model by torch's FlopCounterMode. Divided by the rate this machine reaches, that is
an estimated time, which the budget bounds: a 1-step grid and a 725-second one are no longer the same "one request".
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass

import torch

# Convolutions and attention at the app's batch sizes reach about this share of a large matmul's FLOP rate
# (measured: 55-71 % for fashion-diffusion's UNet at batch 16-64 on 2 CPU cores, issue 30).
MODEL_EFFICIENCY = 0.6
DEFAULT_REQUEST_SECONDS = 180.0  # DDPM-1000 with CFG for 16 images fits; an hour-long grid does not


@dataclass(frozen=True)
class Work:
    """The estimated cost of some sampling: image-evaluations (for the sentence) and FLOPs (for the bound)."""

    evaluations: int = 0
    flops: float = 0.0

    def __add__(self, other: "Work") -> "Work":
        return Work(self.evaluations + other.evaluations, self.flops + other.flops)


@functools.cache
def measured_flops_per_second(device_type: str = "cpu") -> float:
    """This machine's float32 matmul rate (best of a few 1024^3 products, about 0.1 s on a CPU), once per process."""
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


@dataclass(frozen=True)
class WorkBudget:
    """At most `seconds` of estimated work per request. `flops_per_second` None: this machine's measured matmul rate
    times MODEL_EFFICIENCY (tests pass a fixed rate, so their limits do not depend on the machine)."""

    seconds: float = DEFAULT_REQUEST_SECONDS
    flops_per_second: float | None = None
    device_type: str | None = None  # where the rate is measured; None: the model cache's device (it fills this in)

    @property
    def rate(self) -> float:
        return self.flops_per_second or MODEL_EFFICIENCY * measured_flops_per_second(self.device_type or "cpu")

    def estimate_seconds(self, work: Work) -> float:
        return work.flops / self.rate

    def check(self, work: Work, what: str = "this request") -> float:
        """The estimated seconds, or a ValueError sentence with the estimate and the limit."""
        estimate = self.estimate_seconds(work)
        if estimate > self.seconds:
            raise ValueError(f"{what} needs {work.evaluations:,} image-evaluations, about {estimate:,.0f} s of work on "
                             f"this machine; the limit is {self.seconds:,.0f} s per request: fewer images, steps, cells "
                             f"or rows")
        return estimate
