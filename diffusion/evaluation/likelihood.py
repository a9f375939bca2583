"""The likelihood part: bits/dim of the first test images, given the class and not; and the summary the model card
and the checkpoint table quote from a recorded run."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from ..formats.outputs import atomic_write
from ..serving.distributed import is_main, map_sharded, on_main, process_group
from ..core.likelihood import ODELikelihoodConfig, dequantize_each, model_log_likelihood, rademacher_probes
from ..core.sampling import image_generators
from .config import row_key
from .part import Part


def rows(evaluator, self_conditioning) -> list[dict]:
    """Conditioned on the true label, and not (a denoiser's null class; a flow's mixture over classes)."""
    c = evaluator.config
    if evaluator.kind == "normalizing-flow":
        solver = {"method": "exact"}
    else:
        solver = {"method": "pf-ode dopri5", "tolerance": c.likelihood_tolerance,
                  "t_start": ODELikelihoodConfig().t_start, "divergence": "hutchinson"}
    return [dict(likelihood=condition, images=c.likelihood_images, **solver)
            for condition in ("conditional", "unconditional")]


def measure(evaluator, row: dict) -> dict | None:
    """bits/dim of the first `images` test images (uniformly dequantized, noise and Hutchinson probe from image
    i's own generator), conditioned on the true label or not."""
    c = evaluator.config
    test = evaluator.test_set
    ode = ODELikelihoodConfig(rtol=row["tolerance"], atol=row["tolerance"], t_start=row["t_start"]) \
        if evaluator.kind == "denoiser" else ODELikelihoodConfig()

    def batch(start, end):
        generators = image_generators(c.seed, end - start, first_index=start)
        x = dequantize_each(test.images[start:end], generators)
        labels = test.labels[start:end] if row["likelihood"] == "conditional" else None
        return x, rademacher_probes(generators, x.shape[1:]), labels

    measured = resumable_bits(evaluator, row, min(row["images"], len(test)), c.batch_size, batch, ode)
    if measured is None:
        return None
    bits, nfes, seconds = measured
    return {**row, "bits_per_dim": float(bits.mean()), "stderr": float(bits.std() / len(bits) ** 0.5),
            "median": float(bits.median()), "p05": float(bits.quantile(0.05)), "p95": float(bits.quantile(0.95)),
            "nfe": round(sum(nfes) / len(nfes)), "nfe_max": max(nfes), "seconds": seconds}


def _read_progress(path: Path) -> dict:
    try:
        progress = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return progress if isinstance(progress, dict) else {}


def resumable_bits(evaluator, row: dict, count: int, step: int, batch, ode: ODELikelihoodConfig):
    """bits/dim for items 0..count in batches of `step` (batch(start, end) -> x, Hutchinson probes, labels),
    unconditional when labels is None. The missing batches go to the ranks one round of K batches at a time; rank 0
    saves each round's batches under progress_dir, so an interrupted row resumes. Returns (bits, NFE per batch,
    seconds) on rank 0, None on the other ranks."""
    c, model = evaluator.config, evaluator.model
    run_id = hashlib.sha256(f"{model.sha256} {row_key(row)} {c.seed} {c.batch_size}".encode()).hexdigest()[:16]
    progress_path = Path(c.progress_dir) / f"{c.checkpoint}-{run_id}.json"
    progress = on_main(lambda: _read_progress(progress_path))
    device = evaluator.cache.device

    def measure_batch(start: int) -> dict:
        x, probes, labels = batch(start, min(start + step, count))
        began = time.perf_counter()
        with torch.inference_mode():
            result = model_log_likelihood(model, x.to(device), None if labels is None else labels.to(device),
                                          probes.to(device), ode)
        return {"bits": result.bits_per_dim.cpu().tolist(), "nfe": result.nfe, "seconds": time.perf_counter() - began}

    missing = [start for start in range(0, count, step) if str(start) not in progress]
    world = process_group()[1]
    for first in range(0, len(missing), world):
        starts = missing[first:first + world]
        measured = map_sharded(measure_batch, starts)
        if measured is None:
            continue
        progress |= {str(start): entry for start, entry in zip(starts, measured)}
        progress_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(progress_path, lambda tmp: Path(tmp).write_text(json.dumps(progress)))
    if not is_main():
        return None
    bits = torch.tensor([b for start in sorted(progress, key=int) for b in progress[start]["bits"]], dtype=torch.float64)
    nfes = [entry["nfe"] for entry in progress.values()]
    return bits, nfes, round(sum(entry["seconds"] for entry in progress.values()), 1)


def table(results: dict) -> list[str]:
    rows = results.get("likelihood")
    if not rows:
        return []
    lines = ["", f"Likelihood of the first {rows[0]['images']} test images, uniformly dequantized (bits/dim: lower is "
                 f"better; ± is the standard error over images; 5-95 % is the spread of single images):", "",
             "| condition | method | bits/dim | ± | median | 5-95 % | NFE per batch (mean / max) | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        method = r["method"] + (f", rtol = atol = {r['tolerance']:g}, from t = {r['t_start']:g}"
                                if "tolerance" in r else "")
        nfe = f"{r['nfe']} / {r['nfe_max']}" if r["nfe_max"] else "one exact pass"
        lines.append(f"| {r['likelihood']} | {method} | {r['bits_per_dim']:.3f} | {r['stderr']:.3f} | "
                     f"{r['median']:.3f} | {r['p05']:.2f}-{r['p95']:.2f} | {nfe} | {r['seconds'] / 60:.1f} |")
    return lines


def recorded_results(model, out_dir: Path) -> dict:
    """The JSON that `evaluate` wrote to out_dir for exactly this checkpoint file (by SHA-256), or {}."""
    path = Path(out_dir) / f"{model.path.stem}.json" if model.path else None
    try:
        results = json.loads(path.read_text()) if path else {}
    except (OSError, json.JSONDecodeError):
        return {}
    if not isinstance(results, dict) or results.get("identity", {}).get("checkpoint_sha256") != model.sha256:
        return {}
    return results


def well_formed_rows(results: dict) -> list[dict]:
    """The likelihood rows of a recorded run that have the fields and types we wrote (the file is data)."""
    rows = results.get("likelihood")

    def well_formed(row) -> bool:
        return (isinstance(row, dict) and row.get("likelihood") in ("conditional", "unconditional")
                and row.get("method") in ("exact", "pf-ode dopri5") and type(row.get("images")) is int
                and all(type(row.get(key)) in (int, float) for key in ("bits_per_dim", "stderr")))

    return [r for r in rows if well_formed(r)] if isinstance(rows, list) else []


def recorded_likelihood(model, out_dir: Path) -> list[dict]:
    """The likelihood rows that `evaluate` wrote for exactly this checkpoint file (by SHA-256), if any."""
    return well_formed_rows(recorded_results(model, out_dir))


def likelihood_summary(rows: list[dict]) -> str:
    """'3.29 ± 0.03 bits/dim given the class, 3.31 ± 0.03 without (first 1000 test images, PF-ODE)', or ''."""
    by_condition = {r.get("likelihood"): r for r in rows}
    parts = [f"{by_condition[c]['bits_per_dim']:.2f} ± {by_condition[c]['stderr']:.2f} bits/dim {words}"
             for c, words in (("conditional", "given the class"), ("unconditional", "without it"))
             if c in by_condition]
    if not parts:
        return ""
    first = next(iter(by_condition.values()))
    method = "exact" if first.get("method") == "exact" else "probability-flow ODE"
    return f"{', '.join(parts)} ({method}, first {first.get('images')} test images)"


PART = Part("likelihood", ("denoiser", "normalizing-flow"), rows, table, measure=measure,
            summary=lambda results: likelihood_summary(well_formed_rows(results)), title="Likelihood",
            help="bits/dim of test images")
