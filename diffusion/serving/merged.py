"""Several users' requests as one network batch, each user's images byte-identical to their request run alone.

Requests that differ only in class, seed, first image index and batch size (same checkpoint, sampler, steps and
guidance) can share every network call: image i of a request depends only on (seed, first_index + i) through its
own generator, and its class is one label per row. `merge_key` says which requests may merge (None: never, because
the result would not be identical); `run_merged` runs them and hands each its own SampleResult.
"""

from __future__ import annotations

import time
from dataclasses import fields

import torch

from ..core.denoiser import Denoiser
from ..core.sampling import SAMPLERS, draw_noise, image_generators
from ..core.schedules import time_grid
from .engine import (SampleRequest, SampleResult, _autocast, _finite, _sampling_failures, check_work, clip_x0,
                     expected_nfe, guidance_of, prepare, sampler_options, self_conditioning)

PER_USER = ("class_index", "seed", "first_index", "batch_size")  # what may differ between merged requests
MERGEABLE_GUIDANCE = ("none", "cfg")  # per-row arithmetic only; classifier and autoguidance stay one user a batch
# CPU kernels are not batch-invariant for few rows: which matrix / convolution kernel runs depends on the row count,
# and with it the last bit. Measured here (torch 2.13 CPU, one thread; each request merged with one of 1-32 other
# images): fashion-reflow's CFG images were bit-identical from 2 images (4 rows) on; the tiny test UNet's only from
# 8 images (16 rows) on (2-6 images: identical merged with few others, not with 8+). With two threads small batches
# differ even between two runs alone. So a request whose network calls have fewer rows than this runs alone, and
# replicas run one thread each.
MIN_MERGE_ROWS = 16


def merge_key(request) -> tuple | None:
    """The settings a request shares with those it may merge with, or None where merging is not byte-identical (a
    flow, classifier guidance or autoguidance, or under MIN_MERGE_ROWS rows a network call). CFG's modifiers (rescale,
    APG, dynamic thresholding) are per-image statistics (guidance.py), so they merge: measured bit-identical."""
    if type(request) is not SampleRequest or request.guidance not in MERGEABLE_GUIDANCE:
        return None
    if not isinstance(request.batch_size, int) or request.batch_size * (2 if request.guidance == "cfg" else 1) < MIN_MERGE_ROWS:
        return None
    shared = tuple((f.name, getattr(request, f.name)) for f in fields(request) if f.name not in PER_USER)
    return shared + (("conditional", request.class_index is not None),)


def run_merged(cache, requests: list[SampleRequest], progress=None, preview=None) -> list[SampleResult]:
    """Run requests with one merge_key as one batch: progress(done, total) per network evaluation,
    preview(step, t, x_t, x0_hat) of the whole batch (rows in the requests' order)."""
    keys = {merge_key(r) for r in requests}
    if len(keys) != 1 or None in keys:
        raise ValueError("run_merged takes requests with one merge_key")
    checked = [prepare(cache, r) for r in requests]  # each validated as if alone
    model, classifier, guide = checked[0]
    for request, (own, _, _) in zip(requests, checked):
        check_work(cache, [request], model=own)
        if own is not model:
            raise ValueError("merged requests must use one loaded model")
    first = requests[0]
    device, schedule = cache.device, model.schedule
    generators = [g for r in requests for g in image_generators(int(r.seed), int(r.batch_size), int(r.first_index))]
    labels = None
    if first.class_index is not None:
        labels = torch.tensor([int(r.class_index) for r in requests for _ in range(int(r.batch_size))],
                              dtype=torch.long, device=device)
    total = expected_nfe(first)
    started = time.perf_counter()
    with _sampling_failures("sampling"), torch.inference_mode(), _autocast(device):
        denoise = Denoiser(model.network, schedule, model.parameterization, labels=labels, guidance=guidance_of(first),
                           self_condition=self_conditioning(first, model), clip_x0=clip_x0(first, model))

        def counted(x_t, t):
            out = denoise(x_t, t)
            if progress:
                progress(denoise.nfe, total)
            return out

        x_T = draw_noise(generators, (model.config["image_channels"], model.config["image_size"],
                                      model.config["image_size"]), device)
        grid = time_grid(schedule, int(first.steps), first.spacing)
        callback = preview or (lambda step, t, x_t, x0_hat: None)
        images = SAMPLERS[first.sampler].sample(counted, x_T, grid, schedule=schedule, generators=generators,
                                                callback=callback, **sampler_options(first))
        images = _finite(images.float(), first).clamp(-1, 1).cpu()
    seconds = time.perf_counter() - started
    results, start = [], 0
    for request in requests:
        rows = images[start:start + int(request.batch_size)].clone()
        start += int(request.batch_size)
        results.append(SampleResult(rows, denoise.nfe, seconds, [], request, [], model.sha256, model.class_names))
    return results


def split_rows(x: torch.Tensor, requests) -> list[torch.Tensor]:
    """A merged batch's tensor (B, ...) as each request's rows."""
    return list(torch.split(x, [int(r.batch_size) for r in requests]))

