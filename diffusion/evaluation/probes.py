"""The probes part: bits/dim of out-of-distribution probes of test images (diffusion.serving.lens), unconditional."""

from __future__ import annotations

import torch

from ..serving.lens import PROBES, probe_images
from ..core.likelihood import ODELikelihoodConfig, dequantize_each, rademacher_probes
from ..core.sampling import image_generators
from .likelihood import resumable_bits
from .part import Part


def rows(evaluator, self_conditioning) -> list[dict]:
    method = {"tolerance": evaluator.config.probe_tolerance} if evaluator.kind == "denoiser" else {"method": "exact"}
    return [dict(probes="unconditional", images=evaluator.config.probe_images, **method)]


def measure(evaluator, row: dict) -> dict | None:
    """Mean bits/dim per probe, and how often a probe is rated likelier than its own original."""
    c = evaluator.config
    test = evaluator.test_set
    ode = ODELikelihoodConfig(rtol=row["tolerance"], atol=row["tolerance"]) if evaluator.kind == "denoiser" \
        else ODELikelihoodConfig()

    def batch(start, end):  # images start..end, each with its probes: image i's noise probe drawn from seed + i
        pixels = torch.cat([probe_images(test.images[i], c.seed + i) for i in range(start, end)])
        generators = image_generators(c.seed, len(pixels), first_index=start * len(PROBES))
        x = dequantize_each(pixels, generators)
        return x, rademacher_probes(generators, x.shape[1:]), None

    count = min(row["images"], len(test))
    step = max(1, c.batch_size // len(PROBES))
    measured = resumable_bits(evaluator, row, count, step, batch, ode)
    if measured is None:
        return None
    bits, nfes, seconds = measured
    bits = bits.view(count, len(PROBES))
    by_probe = {probe: {"bits_per_dim": float(bits[:, p].mean()), "stderr": float(bits[:, p].std() / count ** 0.5),
                        "likelier_than_original": float((bits[:, p] < bits[:, 0]).double().mean())}
                for p, probe in enumerate(PROBES)}
    return {**row, "by_probe": by_probe, "nfe": round(sum(nfes) / len(nfes)), "nfe_max": max(nfes), "seconds": seconds}


def table(results: dict) -> list[str]:
    r = results.get("probes")
    if not r:
        return []
    how = "exact" if r.get("method") == "exact" else f"probability-flow ODE, rtol = atol = {r['tolerance']:g}"
    lines = ["", f"Out-of-distribution probes of the first {r['images']} test images, scored unconditionally ({how}; "
                 f"Nalisnick et al. 2019 ask whether such inputs are rated *likelier* than real data):", "",
             "| probe | bits/dim | ± | rated likelier than its original |", "|---|---|---|---|"]
    for probe, p in r["by_probe"].items():
        share = "" if probe == PROBES[0] else f"{100 * p['likelier_than_original']:.0f} %"
        lines.append(f"| {probe} | {p['bits_per_dim']:.2f} | {p['stderr']:.2f} | {share} |")
    return lines


PART = Part("probes", ("denoiser", "normalizing-flow"), rows, table, measure=measure, one_row=True,
            help="bits/dim of out-of-distribution probes of test images")
