"""`python -m diffusion benchmark`: sampling speed as ratios measured in one run.

- sampler overhead: a sampler's wall time / the same number of bare network forwards at the same batch
- guidance cost: a classifier-free-guided DDIM step at batch B / one bare forward at batch 2B
- peer: our DDIM loop / diffusers' DDIMScheduler loop around the same denoiser, and their max pixel difference
- cache: a cold checkpoint load / a cached lookup
- network cost: FLOPs of one forward (counted by torch's FlopCounterMode), the FLOP rate the bare forwards
  achieve, and with --peak-tflops the fraction of the device's peak
- share of peak: the network's FLOP rate at batch 1, 16, 32 and 64 over a large matmul's, measured in the same run
  (so the ratio holds on any machine), for the eager network, in channels_last, and with --compile also compiled
- compile (with --compile): bare forwards of torch.compile(network) / eager forwards, same batch
- GPU (only where CUDA exists; diffusion/gpu_benchmark.py): images/s at batch 1, 16 and 256 for DDIM-50 with CFG 3
  and the reflow student, and their share of the GPU's bf16 matmul peak
Absolute times are printed for context only; these machines are noisy, so read the ratios.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..serving.compiled import BackgroundCompiler, CompiledNetwork
from ..core.denoiser import Denoiser
from ..serving.engine import ModelCache, SampleRequest, run_request
from .gpu_benchmark import GPU_BATCHES, gpu_report, gpu_rows
from ..core.sampling import draw_noise, image_generators, sample_ddim
from ..core.schedules import time_grid


@dataclass(frozen=True)
class BenchConfig:
    checkpoint: str = "fashion-diffusion"
    checkpoint_dir: str = "checkpoints"
    batch: int = 64
    steps: int = 50
    repeats: int = 3  # best of N, to damp noise from other processes
    quick: bool = False
    compile: bool = False  # also time torch.compile(network) (compiling takes minutes on a CPU)
    peak_tflops: float | None = None  # the device's peak (dense, this dtype) for the fraction-of-peak row

    def scaled(self) -> "BenchConfig":
        return replace(self, batch=min(self.batch, 4), steps=min(self.steps, 5), repeats=1) if self.quick else self


def best_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run_benchmark(config: BenchConfig) -> dict:
    c = config.scaled()
    cache = ModelCache(c.checkpoint_dir)
    started = time.perf_counter()
    model = cache.get(c.checkpoint)
    cold = time.perf_counter() - started
    cached = best_time(lambda: cache.get(c.checkpoint), 20)
    network, device = model.network, cache.device
    shape = (model.config["image_channels"], model.config["image_size"], model.config["image_size"])
    x = draw_noise(image_generators(0, c.batch), shape, device)
    labels = torch.zeros(c.batch, dtype=torch.long, device=device) if model.class_names else None
    base = SampleRequest(checkpoint=c.checkpoint, steps=c.steps, batch_size=c.batch, guidance="none",
                         class_index=0 if model.class_names else None, scale=1.0)

    def forwards(count, batch_x, batch_labels, net=network):
        log_snr = torch.zeros(len(batch_x), device=device)
        with torch.inference_mode():
            for _ in range(count):
                net(batch_x, log_snr, batch_labels, None)
        if device.type == "cuda":
            torch.cuda.synchronize()

    results = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
               "date": time.strftime("%Y-%m-%d"), "checkpoint": c.checkpoint, "batch": c.batch, "steps": c.steps,
               "threads": torch.get_num_threads(), "quick": c.quick}
    forwards(2, x, labels)  # warm-up
    bare = best_time(lambda: forwards(c.steps, x, labels), c.repeats)
    results["bare_forward_s"] = bare / c.steps
    results["forward_gflops"] = forward_flops(network, x, labels) / 1e9
    results["achieved_tflops"] = results["forward_gflops"] / results["bare_forward_s"] / 1e3
    if c.peak_tflops:
        results["fraction_of_peak"] = results["achieved_tflops"] / c.peak_tflops
    if c.compile:
        compiled = torch.compile(network)
        forwards(2, x, labels, compiled)  # compiles
        results["compiled_over_eager"] = best_time(lambda: forwards(c.steps, x, labels, compiled), c.repeats) / bare
    if device.type == "cpu":
        variants = {"eager": network, "channels_last": ChannelsLastCall(network)}
        if c.compile:
            variants["compiled, channels_last"] = ChannelsLastCall(torch.compile(network))
            app_cache = ModelCache(c.checkpoint_dir, compiler=BackgroundCompiler())  # as app.py serves it
            variants["the app's path (CompiledNetwork)"] = app_cache.get(c.checkpoint).network
        batches = (1, 4) if c.quick else EFFICIENCY_BATCHES
        results["share_of_peak"] = share_of_peak(model, variants, batches, repeats=1 if c.quick else 3)
    overhead = {}
    for sampler, solver, nfe in [("ddim", "heun", c.steps), ("ddpm", "heun", c.steps), ("ode", "euler", c.steps)]:
        request = replace(base, sampler=sampler, solver=solver)
        overhead[f"{sampler}{'-' + solver if sampler == 'ode' else ''}"] = (
            best_time(lambda: run_request(cache, request), c.repeats) / (bare * nfe / c.steps))
    results["sampler_overhead"] = overhead

    # classifier-free guidance: one step at batch B vs one forward at batch 2B
    if model.config.get("null_class") is not None:
        cfg_request = replace(base, guidance="cfg", scale=3.0)
        x2, labels2 = torch.cat([x, x]), torch.cat([labels, labels])
        forwards(1, x2, labels2)
        double = best_time(lambda: forwards(c.steps, x2, labels2), c.repeats)
        results["cfg_step_vs_forward_2B"] = best_time(lambda: run_request(cache, cfg_request), c.repeats) / double

    results |= peer_comparison(model, x, labels, c)
    results["cache_cold_s"], results["cache_hit_s"] = cold, cached
    results["cache_cold_over_hit"] = cold / cached
    if device.type == "cuda":
        results["gpu"] = gpu_rows(c.checkpoint_dir, batches=(1, 4) if c.quick else GPU_BATCHES, repeats=c.repeats)
    return results


EFFICIENCY_BATCHES = (1, 16, 32, 64)


def matmul_flops_per_second(size: int = 2048, repeats: int = 5) -> float:
    """The machine's float32 peak as people quote it: the best rate of a size x size matmul (2 size^3 FLOPs)."""
    a = torch.randn(size, size)
    return 2 * size**3 / best_time(lambda: a @ a, repeats)


def share_of_peak(model, variants: dict, batches=EFFICIENCY_BATCHES, repeats: int = 3, forwards: int = 5) -> dict:
    """{variant: {batch: achieved FLOP rate / matmul peak}}; the peak is measured again before each variant's rows
    and the larger of the two readings kept, so a busy moment lowers no row by raising the peak's share."""
    shape = (model.config["image_channels"], model.config["image_size"], model.config["image_size"])
    rows, peak = {}, matmul_flops_per_second()
    for name, network in variants.items():
        peak = max(peak, matmul_flops_per_second())
        rows[name] = {}
        for batch in batches:
            x = torch.randn(batch, *shape)
            log_snr = torch.zeros(batch)
            labels = torch.zeros(batch, dtype=torch.long) if model.class_names else None
            flops = forward_flops(model.network, x, labels)
            with torch.inference_mode():
                network(x, log_snr, labels, None)  # warm-up (and, compiled, the compile for this shape)
                if isinstance(network, CompiledNetwork):
                    network.compiler.idle()  # the app's path compiles in its background thread
                seconds = best_time(lambda: [network(x, log_snr, labels, None) for _ in range(forwards)], repeats)
            rows[name][batch] = flops * forwards / seconds / peak
    return {"peak_gflops": peak / 1e9, "rows": rows}


def forward_flops(network, x, labels) -> float:
    """Floating-point operations of one forward at this batch (a multiply-add counts 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        network(x, torch.zeros(len(x), device=x.device), labels, None)
    return float(counter.get_total_flops())


class ChannelsLastCall:
    """A network called on channels_last inputs (NHWC in memory, which oneDNN's convolutions prefer on a CPU); the
    weights stay as they are, so the eager network is shared, not copied."""

    def __init__(self, network):
        self.network = network

    def __call__(self, x, *args):
        return self.network(x.contiguous(memory_format=torch.channels_last), *args)


def peer_comparison(model, x_T, labels, c: BenchConfig) -> dict:
    """Our DDIM vs diffusers' DDIMScheduler stepping the same eps predictions ("trailing" spacing)."""
    try:
        from diffusers import DDIMScheduler
    except ImportError:
        return {"peer": "diffusers not installed (pip install -e '.[test]')"}
    schedule = model.schedule
    grid = time_grid(schedule, c.steps)
    # The peer's discrete alphabar_k is our alpha((k + 1) / 1000)^2.
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    alphas_cumprod = schedule.alpha_sigma(t)[0] ** 2
    betas = 1 - alphas_cumprod / torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
    peer = DDIMScheduler(num_train_timesteps=1000, trained_betas=betas.float().numpy(), clip_sample=False,
                         set_alpha_to_one=True, timestep_spacing="trailing", prediction_type="epsilon")
    peer.set_timesteps(c.steps)

    def make_denoiser():
        return Denoiser(model.network, schedule, model.parameterization, labels=labels)

    def ours():
        with torch.inference_mode():
            return sample_ddim(make_denoiser(), x_T, grid, schedule=schedule)

    def theirs():
        denoise = make_denoiser()
        with torch.inference_mode():
            x = x_T
            for k in peer.timesteps.tolist():
                _, eps = denoise(x, (k + 1) / 1000)
                x = peer.step(eps, k, x).prev_sample
            return x

    ours_time, theirs_time = best_time(ours, c.repeats), best_time(theirs, c.repeats)
    difference = float((ours() - theirs()).abs().max())
    return {"peer_ours_over_diffusers": ours_time / theirs_time, "peer_max_pixel_difference": difference}


def report(results: dict) -> str:
    lines = [f"## Sampling speed: {results['checkpoint']} on {results['device']}",
             f"torch {results['torch']}, Python {results['python']}, {results['threads']} threads, {results['date']}; "
             f"batch {results['batch']}, {results['steps']} steps{' (quick mode)' if results['quick'] else ''}.", "",
             "| measurement | ratio | target |", "|---|---|---|"]
    for name, ratio in results["sampler_overhead"].items():
        lines.append(f"| {name} wall time / bare network forwards | {ratio:.3f} | <= 1.03 |")
    if "cfg_step_vs_forward_2B" in results:
        lines.append(f"| CFG DDIM at batch B / bare forwards at batch 2B | {results['cfg_step_vs_forward_2B']:.3f} | <= 1.1 |")
    if "peer_ours_over_diffusers" in results:
        lines.append(f"| our DDIM / diffusers DDIMScheduler loop (same denoiser) | {results['peer_ours_over_diffusers']:.3f} | <= 1.0 |")
        lines.append(f"| max pixel difference ours vs diffusers | {results['peer_max_pixel_difference']:.2e} | float rounding |")
    lines.append(f"| cold checkpoint load / cached lookup | {results['cache_cold_over_hit']:.0f} | >> 1 |")
    if "compiled_over_eager" in results:
        lines.append(f"| bare forwards: torch.compile / eager | {results['compiled_over_eager']:.3f} | < 1 if compile pays |")
    if "fraction_of_peak" in results:
        lines.append(f"| achieved / peak FLOP rate (bare forwards) | {results['fraction_of_peak']:.3f} | |")
    if "share_of_peak" in results:
        share = results["share_of_peak"]
        batches = list(next(iter(share["rows"].values())))
        lines += ["", f"Share of peak: the network's FLOP rate over a 2048^2 float32 matmul's on this machine "
                      f"({share['peak_gflops']:.0f} GFLOP/s, measured in this run).", "",
                  "| network | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---|" + "---|" * len(batches)]
        for name, row in share["rows"].items():
            lines.append(f"| {name} | " + " | ".join(f"{row[b]:.0%}" for b in batches) + " |")
    lines += ["", f"Network cost: {results['forward_gflops']:.2f} GFLOP per forward at batch {results['batch']} "
              f"({results['forward_gflops'] / results['batch'] * 1e3:.1f} MFLOP per image, multiply-add = 2); the bare "
              f"forwards ran at {results['achieved_tflops'] * 1e3:.1f} GFLOP/s."]
    lines += ["", f"For context: one bare forward at batch {results['batch']} took {results['bare_forward_s'] * 1e3:.1f} ms; "
              f"cold load {results['cache_cold_s'] * 1e3:.0f} ms, cached lookup {results['cache_hit_s'] * 1e6:.0f} us."]
    if "gpu" in results:
        lines += gpu_report(results["gpu"])
    else:
        lines += ["", "No GPU on this machine: the GPU rows (images/s and share of the bf16 peak at batch 1, 16 and 256) "
                      "are measured only where CUDA exists."]
    return "\n".join(lines) + "\n"


def write_report(results: dict, out: Path):
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Benchmarks\n\nWritten by `python -m diffusion benchmark`.\n\n" + report(results))
