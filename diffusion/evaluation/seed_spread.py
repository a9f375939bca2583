"""The seed-spread part: DDIM-20 with SPREAD_SEEDS other seeds, for how much one row's numbers move with the noise."""

from __future__ import annotations

import torch

from .part import Part

SPREAD_SEEDS = 5


def rows(evaluator, self_conditioning) -> list[dict]:
    c = evaluator.config
    return [dict(sampler="ddim", steps=4 if c.quick else 20, self_condition=evaluator.model.self_condition,
                 seed=c.seed + k) for k in range(1, 3 if c.quick else SPREAD_SEEDS + 1)]


def table(results: dict) -> list[str]:
    rows = results.get("seed_spread")
    if not rows:
        return []
    fids = torch.tensor([r["fid"] for r in rows], dtype=torch.float64)
    accuracies = torch.tensor([r["accuracy"] for r in rows], dtype=torch.float64)
    return ["", f"Seed spread: DDIM-{rows[0]['steps']} (self-conditioning {'on' if rows[0]['self_condition'] else 'off'}) "
                f"with {len(rows)} other seeds: feature FID {float(fids.mean()):.2f} ± {float(fids.std()):.2f} "
                f"(min {float(fids.min()):.2f}, max {float(fids.max()):.2f}), accuracy {float(accuracies.mean()):.3f} "
                f"± {float(accuracies.std()):.3f}. One row's numbers move this much with the noise alone; rows "
                f"of deterministic samplers share their noise, so their differences are less noisy than that."]


PART = Part("seed_spread", ("denoiser",), rows, table,
            help="DDIM-20 with other seeds: how much one row's numbers move with the noise")
