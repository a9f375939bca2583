"""The work budget's model (issue 39, items 3-4): a call's fixed overhead counted per network call, not only FLOPs
per image, and a rate re-measured while the server lives, never from one loaded probe."""

from __future__ import annotations

import pytest

from diffusion.serving.budget import MODEL_EFFICIENCY, MachineRate, Work, WorkBudget
from diffusion.serving.engine import ModelCache, SampleRequest, request_work
from diffusion.serving.edits import EditRequest, edit_work


TERAFLOP = MachineRate(probe=lambda device: 1e12 / MODEL_EFFICIENCY)  # every probe reads 1 TFLOP/s for models


def test_a_fixed_rate_has_a_fixed_call_cost():
    """A budget with a fixed rate (tests, an imagined machine) does not time this machine's calls: its call cost is
    given (0 unless set), so its refusals are the same on every machine and under any load."""
    assert WorkBudget(flops_per_second=1e9).call_seconds == 0.0
    assert WorkBudget(flops_per_second=1e9, call_seconds=0.01).call_seconds == 0.01
    assert WorkBudget().call_seconds is None  # measured


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_rate_is_the_median_of_recent_probes_and_is_probed_again_after_the_interval():
    readings = iter([10e9, 1e9, 12e9, 11e9, 13e9, 14e9, 15e9])
    clock = FakeClock()
    rate = MachineRate(interval=30, kept=5, probe=lambda device: next(readings), clock=clock)
    assert rate() == pytest.approx(MODEL_EFFICIENCY * 10e9)
    clock.now = 10
    assert rate() == pytest.approx(MODEL_EFFICIENCY * 10e9)  # within the interval: no new probe
    clock.now = 30
    assert rate() == pytest.approx(MODEL_EFFICIENCY * 5.5e9)  # median of 10 and 1
    clock.now = 60
    assert rate() == pytest.approx(MODEL_EFFICIENCY * 10e9)  # median of 10, 1, 12: the loaded probe does not rule
    for step in range(4):  # four more probes push the early ones out of the five kept
        clock.now = 90 + 30 * step
        rate()
    assert list(rate.probes) == [12e9, 11e9, 13e9, 14e9, 15e9]
    assert rate() == pytest.approx(MODEL_EFFICIENCY * 13e9)


def test_a_server_started_on_a_busy_machine_recovers_its_rate():
    """The issue's case: 8.9 GFLOP/s measured at start-up under load, 58.6 on an idle machine."""
    readings = iter([8.9e9] + [58.6e9] * 10)
    clock = FakeClock()
    budget = WorkBudget(seconds=100, machine_rate=MachineRate(interval=30, probe=lambda d: next(readings), clock=clock))
    work = Work(1, 50 * 100 * MODEL_EFFICIENCY * 8.9e9 / 50)  # 100 s at the loaded rate
    assert budget.estimate_seconds(work) == pytest.approx(100)
    for minute in range(1, 4):
        clock.now = 30 * minute
        budget.rate
    assert budget.estimate_seconds(work) == pytest.approx(100 * 8.9 / 58.6)


def test_one_image_costs_its_calls_not_only_its_flops(checkpoint_dir):
    """DDIM-1000 on one image was estimated at 1.6 s and took 14.2 s: per call the fixed cost dominates. Here the
    estimate of one image's 1000 calls is at least 1000 batch-1 calls' measured overhead, and a batch of 64 at the
    same steps costs far less than 64 single images."""
    # At 1 TFLOP/s (probed) a batch-1 call of the tiny UNet (a few MFLOPs) is all overhead.
    cache = ModelCache(checkpoint_dir, budget=WorkBudget(seconds=1e9, machine_rate=TERAFLOP))
    model = cache.get("tiny")
    overhead = cache.overhead_per_call(model)
    assert overhead > 0
    one = request_work(cache, SampleRequest(checkpoint="tiny", steps=1000, batch_size=1, guidance="none", scale=1.0))
    many = request_work(cache, SampleRequest(checkpoint="tiny", steps=1000, batch_size=64, guidance="none", scale=1.0))
    assert one.overhead_flops == pytest.approx(1000 * overhead) == pytest.approx(many.overhead_flops)
    assert one.flops * 64 == pytest.approx(many.flops)
    assert cache.estimate_seconds(many) < 64 * cache.estimate_seconds(one)


def test_an_edit_costs_its_calls(checkpoint_dir):
    cache = ModelCache(checkpoint_dir, budget=WorkBudget(seconds=1e9, machine_rate=TERAFLOP))
    base = SampleRequest(checkpoint="tiny", steps=25, batch_size=1, guidance="none", scale=1.0)
    repaint = EditRequest(method="repaint", base=base, jump_length=10, resamplings=10)
    work = edit_work(cache, repaint, cache.get("tiny"))
    from diffusion.core.editing import repaint_nfe
    calls = repaint_nfe(25, 10, 10)
    assert work.overhead_flops == pytest.approx(calls * cache.overhead_per_call(cache.get("tiny")))
    assert work.evaluations == calls


def test_the_budget_table_runs_every_kind_of_request_quickly(tmp_path):
    """`benchmark --budget --quick` on the shipped checkpoints: every case estimated and run, the table written.
    (The ratios themselves are the benchmark's to report, not a test's to assert: these machines are noisy.)"""
    from pathlib import Path

    from conftest import run_cli

    checkpoints = Path(__file__).resolve().parent.parent / "checkpoints"
    out = tmp_path / "budget.md"
    result = run_cli("benchmark", "--budget", "--quick", "--checkpoint-dir", checkpoints, "--budget-out", out)
    assert result.returncode == 0, result.stderr
    table = [line for line in out.read_text().splitlines() if line.startswith("| ") and "request" not in line]
    assert len(table) == 16
    labels = " ".join(table)
    for kind in ("classifier", "autoguidance", "langevin", "pc", "sde", "flow", "RePaint", "SDEdit", "swap", "sweep",
                 "X/Y"):
        assert kind in labels
    ratios = [float(line.split("|")[5]) for line in table]  # measured / estimated, from the unrounded times
    assert all(0 < ratio < float("inf") for ratio in ratios)


def test_a_run_past_twice_its_limit_is_stopped_with_a_sentence():
    import time as clock

    import gradio as gr

    from diffusion.app.common import run_in_worker

    evaluations = []

    def work(emit):
        for step in range(10_000):  # one emit per network evaluation, as the samplers' progress does
            clock.sleep(0.01)
            evaluations.append(step)
            emit(("progress", step))

    with pytest.raises(gr.Error, match=r"passed twice the 0 s limit per request"):
        for _ in run_in_worker(work, lambda event: None, limit_seconds=0.1):
            pass
    assert 10 < len(evaluations) < 10_000  # it ran past 0.2 s and then stopped


def test_generate_stops_a_run_whose_estimate_was_wrong(checkpoint_dir):
    """The estimate says the run fits (a budget whose estimates are all 0 s), the clock says otherwise: the
    Generate handler stops it at twice its limit instead of running on."""
    import gradio as gr

    from diffusion.app.generate import generate

    class WrongBudget(WorkBudget):
        def estimate_seconds(self, work):
            return 0.0

    cache = ModelCache(checkpoint_dir, budget=WrongBudget(seconds=0.05))
    handler = generate(cache, "tiny", "ddim", "heun", 1000, 0.0, "uniform", "none", 0, 1.0, False, 0, 64)
    with pytest.raises(gr.Error, match="passed twice the 0 s limit"):
        for _ in handler:
            pass


def test_the_2d_lab_is_stopped_past_twice_the_limit_too():
    import gradio as gr

    from diffusion.app.lab2d import show_lab2d

    handler = show_lab2d("rings", "exact", "ode", "heun", 50, "flow", "cfg", 3.0, 0.0, 1.0, 0, 0.5, "x0", 2000,
                         limit_seconds=0.001)
    with pytest.raises(gr.Error, match="passed twice the 0 s limit per request"):
        for _ in handler:
            pass
