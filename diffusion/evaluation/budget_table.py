"""The work budget against the clock (issue 39): requests spanning batch 1-64, NFE 1-4000, every guidance and
sampler kind, edits and studies, each estimated the way its endpoint checks it (request_work / edit_work /
network_work at the rate measured now) and then run, in one process on one machine. `python -m diffusion benchmark
--budget` prints the table and writes docs/benchmarks-budget.md; the target is every measured / estimated within
0.5x-2x, so that no request estimated under the limit runs past twice the limit."""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..serving.budget import Work, WorkBudget
from ..serving.edits import EditRequest, edit_work, run_edit
from ..serving.engine import FlowRequest, ModelCache, SampleRequest, request_work, run_request
from ..serving.lens import LENS_TYPICAL_NFE, PROBES, lens_work, likelihood_lens
from ..serving.studies import guidance_sweep
from ..serving.xy import plan_grid, run_grid

GENERATE_DEFAULT = SampleRequest(sampler="ode", solver="dpm++2m", steps=10, rescale=0.7)  # the app's Generate default


@dataclass(frozen=True)
class BudgetCase:
    label: str
    work: Callable[[ModelCache], Work]  # what the endpoint's check counts
    run: Callable[[ModelCache], object]  # the endpoint's work


@dataclass(frozen=True)
class BudgetRow:
    label: str
    evaluations: int
    estimated: float
    measured: float

    @property
    def ratio(self) -> float:
        return self.measured / self.estimated if self.estimated > 0 else float("inf")


def _sample(request: SampleRequest | FlowRequest) -> BudgetCase:
    nfe = "" if isinstance(request, FlowRequest) else f" NFE {_nfe(request)}"
    what = (f"{request.checkpoint} flow, {request.batch_size} images" if isinstance(request, FlowRequest) else
            f"{request.checkpoint} {request.sampler}{'/' + request.solver if request.sampler == 'ode' else ''}"
            f"{nfe}, {request.guidance}, {request.batch_size} image{'s' if request.batch_size > 1 else ''}")
    return BudgetCase(what, lambda cache: request_work(cache, request), lambda cache: run_request(cache, request))


def _nfe(request: SampleRequest) -> int:
    from ..serving.engine import expected_nfe
    return expected_nfe(request)


def _edit(label: str, request: EditRequest, mask: bool = False) -> BudgetCase:
    image = torch.zeros(1, 1, 28, 28)
    paint = torch.zeros(1, 1, 28, 28)
    paint[..., 8:20, 8:20] = 1
    return BudgetCase(label, lambda cache: edit_work(cache, request, cache.get(request.base.checkpoint)),
                      lambda cache: run_edit(cache, request, image, paint if mask else None))


def _sweep(base: SampleRequest, scales: list[float]) -> BudgetCase:
    requests = [replace(base, scale=s) for s in scales]
    return BudgetCase(f"guidance sweep, {len(scales)} scales x {base.batch_size} images, {base.sampler} {base.steps}",
                      lambda cache: sum((request_work(cache, r) for r in requests), Work()),
                      lambda cache: guidance_sweep(cache, base, scales, ["cfg"]))


def _grid(base: SampleRequest, x: str, x_text: str, y: str, y_text: str) -> BudgetCase:
    def work(cache):
        plan = plan_grid(cache, base, x, x_text, y, y_text)
        return sum((request_work(cache, r) for row in plan.requests for r in row), Work())
    return BudgetCase(f"X/Y grid {x} x {y} ({x_text} / {y_text}), {base.sampler} {base.steps}, {base.batch_size} image",
                      work, lambda cache: run_grid(cache, plan_grid(cache, base, x, x_text, y, y_text)))


def _lens(checkpoint: str) -> BudgetCase:
    pixels = torch.full((1, 28, 28), 128, dtype=torch.uint8)
    return BudgetCase(f"likelihood lens, {checkpoint} ({len(PROBES)} probes, ODE ~{LENS_TYPICAL_NFE} calls)",
                      lambda cache: lens_work(cache, cache.get(checkpoint)),
                      lambda cache: likelihood_lens(cache, [checkpoint], pixels))


def budget_cases(quick: bool = False) -> list[BudgetCase]:
    """The table's requests; quick: the same kinds at a few steps (CI)."""
    s = (lambda n: max(1, n // 50)) if quick else (lambda n: n)  # steps
    b = (lambda n: min(n, 2)) if quick else (lambda n: n)  # images
    d = SampleRequest()
    cases = [
        _sample(replace(GENERATE_DEFAULT, steps=s(10) if quick else 10)),
        _sample(replace(d, sampler="ddim", steps=s(1000), batch_size=b(1))),
        _sample(replace(d, sampler="ddim", steps=s(1000), batch_size=b(1), guidance="classifier")),
        _sample(replace(d, sampler="ddpm", steps=s(100), batch_size=b(64), guidance="none", scale=1.0)),
        _sample(replace(d, sampler="ode", solver="heun", steps=s(25), batch_size=b(4), guidance="autoguidance", scale=2.0)),
        _sample(replace(d, sampler="sde", steps=20 if quick else 200, spacing="log-snr", batch_size=b(8))),
        _sample(replace(d, sampler="pc", steps=s(100), batch_size=b(2), correctors=1, guidance="none", scale=1.0)),
        _sample(replace(d, sampler="langevin", steps=s(100), langevin_steps=40, batch_size=b(1), guidance="none",
                        scale=1.0)),
        _sample(replace(d, checkpoint="fashion-reflow", sampler="ode", solver="euler", steps=1, batch_size=b(64),
                        guidance="none", scale=1.0, self_condition=None)),
        _sample(FlowRequest(checkpoint="fashion-nice", batch_size=b(64))),
        _sample(replace(d, checkpoint="fashion-dit", steps=s(50), batch_size=b(8))),
        _edit(f"SDEdit, strength 0.6, DDIM {s(50)}, {b(4)} images",
              EditRequest("sdedit", replace(d, steps=s(50), batch_size=b(4)), strength=0.6)),
        _edit(f"RePaint, {s(50)} steps, jumps of 10, 5 resamplings, 1 image",
              EditRequest("repaint", replace(d, sampler="ddpm", steps=s(50), batch_size=b(1)), jump_length=10,
                          resamplings=5), mask=True),
        _edit(f"class swap, DDIM {s(25)}, 1 image", EditRequest("swap", replace(d, steps=s(25), batch_size=b(1)), source_class=0)),
        _sweep(replace(d, steps=s(25), batch_size=b(4)), [1.0, 3.0, 5.0]),
        _grid(replace(d, steps=s(20), batch_size=b(1)), "seed", "0, 1, 2", "class_index", "0, 1"),
    ]
    return cases if quick else cases + [_lens("fashion-diffusion")]


def measure_budget(cache: ModelCache, cases: list[BudgetCase], log=lambda line: None) -> list[BudgetRow]:
    """Each case estimated just before it runs (at the rate measured then), then run and timed."""
    rows = []
    for case in cases:
        work = case.work(cache)
        estimated = cache.estimate_seconds(work)
        started = time.perf_counter()
        case.run(cache)
        row = BudgetRow(case.label, work.evaluations, estimated, time.perf_counter() - started)
        log(f"{row.label}: estimated {row.estimated:.2f} s, measured {row.measured:.2f} s ({row.ratio:.2f}x)")
        rows.append(row)
    return rows


def budget_report(rows: list[BudgetRow], cache: ModelCache) -> str:
    worst = max(rows, key=lambda r: max(r.ratio, 1 / r.ratio))
    within = sum(0.5 <= r.ratio <= 2 for r in rows)
    lines = [f"Device: {cache.device} ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads); the budget's rate when the table ended: "
             f"{cache.budget.rate / 1e9:.1f} GFLOP/s.", "",
             "| request | image-evaluations | estimated (s) | measured (s) | measured / estimated |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.label} | {r.evaluations:,} | {r.estimated:.2f} | {r.measured:.2f} | {r.ratio:.2f} |" for r in rows]
    lines += ["", f"{within} of {len(rows)} requests within 0.5x-2x; the furthest: {worst.label} at {worst.ratio:.2f}x."]
    return "\n".join(lines)


def run_budget_table(checkpoint_dir: str, quick: bool = False, log=print) -> tuple[list[BudgetRow], str]:
    cache = ModelCache(checkpoint_dir, budget=WorkBudget(seconds=float("inf")))
    rows = measure_budget(cache, budget_cases(quick), log)
    return rows, budget_report(rows, cache)
