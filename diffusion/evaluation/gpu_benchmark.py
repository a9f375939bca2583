"""The GPU rows of `python -m diffusion benchmark` (issue 30, item 3); they run only where CUDA exists.

Images/s at batch 1, 16 and 256 for the classic DDIM-50 with CFG 3 (fashion-diffusion) and for the reflow student at
its own setting, through the engine as the app samples (bf16 autocast on the network), and the share of the GPU's
bf16 peak those runs reach: the request's network FLOPs per second over the best rate of a large bf16 matmul measured
in the same run, so the ratio holds on any GPU.
"""

from __future__ import annotations

import time

import torch

from ..serving.engine import ModelCache, SampleRequest, request_work, run_request

GPU_BATCHES = (1, 16, 256)
# (checkpoint, setting); None: the checkpoint's own few-step defaults
GPU_RACERS = (("fashion-diffusion", {"sampler": "ddim", "steps": 50, "guidance": "cfg", "scale": 3.0}),
              ("fashion-reflow", None))


def best_seconds(fn, repeats: int) -> float:
    """Best wall time of fn() with the device drained before and after each call."""
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times)


def bf16_matmul_flops_per_second(size: int = 8192, repeats: int = 5) -> float:
    """The GPU's bf16 peak as people quote it: the best rate of a size x size bf16 matmul (2 size^3 FLOPs)."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    a @ a  # cuBLAS picks its kernel
    return 2 * size**3 / best_seconds(lambda: a @ a, repeats)


def gpu_rows(checkpoint_dir, batches=GPU_BATCHES, repeats: int = 3) -> dict:
    """{"gpu", "bf16_peak_tflops", "rows": [{checkpoint, setting, batch, images_per_s, share_of_bf16_peak}]}."""
    cache = ModelCache(checkpoint_dir, device="cuda", max_batch=max(batches))
    peak = bf16_matmul_flops_per_second()
    rows = []
    for name, setting in GPU_RACERS:
        if name not in cache.names("denoiser"):
            continue
        model = cache.get(name)
        setting = setting or model.sampling_defaults
        for batch in batches:
            request = SampleRequest(checkpoint=name, class_index=0, seed=0, batch_size=batch,
                                    **({"guidance": "none", "scale": 1.0} | setting))
            run_request(cache, request)  # warm-up: cuDNN's and autocast's first-call costs
            seconds = best_seconds(lambda: run_request(cache, request), repeats)
            rows.append({"checkpoint": name, "setting": setting, "batch": batch, "images_per_s": batch / seconds,
                         "flops_per_s": request_work(cache, request, model).flops / seconds})
    peak = max(peak, bf16_matmul_flops_per_second())  # read again after the rows, the higher reading kept: a busy
    for row in rows:  # moment during one reading must not flatter the shares
        row["share_of_bf16_peak"] = row.pop("flops_per_s") / peak
    return {"gpu": torch.cuda.get_device_name(), "bf16_peak_tflops": peak / 1e12, "rows": rows}


def gpu_report(results: dict) -> list[str]:
    lines = ["", f"### GPU: {results['gpu']} (bf16 matmul peak {results['bf16_peak_tflops']:.0f} TFLOP/s)", "",
             "| model and setting | batch | images/s | share of bf16 peak |", "|---|---|---|---|"]
    for row in results["rows"]:
        s = row["setting"]
        sampler = f"ode-{s.get('solver', 'heun')}" if s["sampler"] == "ode" else s["sampler"]
        guidance = "no guidance" if s.get("guidance", "none") == "none" else f"{s['guidance']} {s['scale']:g}"
        lines.append(f"| {row['checkpoint']}: {sampler}-{s['steps']}, {guidance} | {row['batch']} | "
                     f"{row['images_per_s']:.1f} | {row['share_of_bf16_peak']:.1%} |")
    return lines
