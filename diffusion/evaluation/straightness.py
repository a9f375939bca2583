"""The straightness part: Liu et al. 2022's S along DDIM paths, at the few-step setting and without guidance."""

from __future__ import annotations

import torch

from ..serving.distributed import map_sharded
from ..serving.engine import SampleRequest, run_request
from ..core.sampling import draw_noise, image_generators
from ..core.schedules import time_grid
from ..core.straightness import readout_from_trajectory
from .few_step import few_step_setting, guidance_words
from .part import Part

STRAIGHTNESS_STEPS = 50  # DDIM (Euler in flow coordinates) steps along which a path's straightness is read


def rows(evaluator, self_conditioning) -> list[dict]:
    model = evaluator.model
    settings = [few_step_setting(model)]
    if settings[0]["guidance"] != "none":
        settings.append(dict(guidance="none", scale=1.0))
    return [dict(measure="straightness", sampler="ddim", steps=4 if evaluator.config.quick else STRAIGHTNESS_STEPS,
                 self_condition=model.self_condition, **setting) for setting in settings]


def measure(evaluator, row: dict) -> dict | None:
    """Straightness of config.samples class-balanced paths (the score() rows' noise), each read along its own
    DDIM run (straightness.readout_from_trajectory): mean and spread over images, and the mean rms distance of
    the velocity from z - x at every step (the curve plotted against flow time). Rank 0 returns the row, the
    other ranks None."""
    c = evaluator.config
    fields = {k: v for k, v in row.items() if k != "measure"}
    per_class = max(1, c.samples // evaluator.classes)
    schedule = evaluator.model.schedule
    requests = [SampleRequest(checkpoint=c.checkpoint, class_index=label, seed=c.seed,
                              first_index=label * per_class + start, batch_size=min(c.batch_size, per_class - start),
                              **fields)
                for label in range(evaluator.classes) for start in range(0, per_class, c.batch_size)]

    def readout(request):
        result = run_request(evaluator.cache, request, model=evaluator.model, record_trajectory=True)
        x_T = draw_noise(image_generators(c.seed, request.batch_size, request.first_index), result.images.shape[1:])
        return readout_from_trajectory(schedule, time_grid(schedule, request.steps), x_T, result.trajectory)

    readouts = map_sharded(readout, requests)
    if readouts is None:
        return None
    per_image = torch.cat([r.per_image for r in readouts]).double()
    deviation = torch.cat([r.deviation for r in readouts], dim=1).double()
    flow_time = readouts[-1].s[:-1]
    return {**row, "samples": len(per_image), "straightness": float(per_image.mean()),
            "straightness_std": float(per_image.std()), "flow_time": [round(float(v), 5) for v in flow_time],
            "deviation": [round(float(v), 5) for v in deviation.mean(1)]}


def table(results: dict) -> list[str]:
    if not results.get("straightness"):
        return []
    lines = ["", "Straightness S (Liu et al. 2022, per pixel, 0 = straight paths; read along DDIM paths in "
                 "flow-equivalent coordinates, diffusion.core.straightness):", "",
             "| guidance | steps | paths | S (mean) | S (std over paths) |", "|---|---|---|---|---|"]
    return lines + [f"| {guidance_words(r)} | {r['steps']} | {r['samples']} | {r['straightness']:.4f} | "
                    f"{r['straightness_std']:.4f} |" for r in results["straightness"]]


PART = Part("straightness", ("denoiser",), rows, table, measure=measure, help="how straight the sampling paths are")
