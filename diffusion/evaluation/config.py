"""An evaluation run's settings and identity: which rows an earlier run's JSON may lend to this one."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path


@dataclass(frozen=True)
class EvalConfig:
    checkpoint: str = "fashion-diffusion"
    checkpoint_dir: str = "checkpoints"
    samples: int = 1000  # per configuration, class-balanced
    reference: int = 10_000  # test images for the reference statistics
    batch_size: int = 50
    seed: int = 0
    out_dir: str = "docs/evaluation"
    quick: bool = False  # a tiny run for CI: few samples, few configurations
    likelihood_images: int = 1000  # the first N test images, for the likelihood part
    likelihood_tolerance: float = 1e-4  # dopri5's rtol = atol (1e-5 costs 2.2x the NFE and moved bits/dim by 0.001)
    progress_dir: str = "runs/likelihood"  # per-batch results of a likelihood row, so a killed run resumes
    probe_images: int = 100  # test images whose out-of-distribution probes are scored (the probes part)
    probe_tolerance: float = 1e-3  # their dopri5 rtol = atol: the app's likelihood lens (serving.lens.LENS_ODE)
    samplers: tuple[str, ...] = ()  # the samplers part's rows of only these samplers (empty: all of them)
    guided_steps: tuple[int, ...] = ()  # the guided-realism part's rows at only these step counts (empty: all of them)
    second_evaluator: str = "fashion-second-evaluator"  # the other evaluator of the outsider parts (a checkpoint name)

    def scaled(self) -> "EvalConfig":
        if not self.quick:
            return self
        return replace(self, samples=min(self.samples, 20), reference=min(self.reference, 200),
                       likelihood_images=min(self.likelihood_images, 4), likelihood_tolerance=1e-2,
                       probe_images=min(self.probe_images, 2), probe_tolerance=1e-2)


NOISE_INDEXING = "one image index per sample"  # part of a run's identity: rows sampled otherwise are not reused
METRICS = ("nfe", "samples", "fid", "texture_fid", "accuracy", "diversity", "seconds",
           "bits_per_dim", "stderr", "median", "p05", "p95", "nfe_max", "by_probe",
           "straightness", "straightness_std", "flow_time", "deviation",
           "by_evaluator", "two_sample_accuracy", "two_sample_stderr", "two_sample_judges",
           "two_sample_spread", "best_epochs", "held_out", "classic_seconds", "timings", "through_app")


def row_key(row: dict) -> str:
    """A row's identity: its request fields (everything but the metrics)."""
    return json.dumps({k: v for k, v in row.items() if k not in METRICS}, sort_keys=True)


def earlier_run(path: Path, identity: dict) -> dict:
    """The JSON of an earlier run at `path` if its checkpoint and sample settings equal `identity`, else {}."""
    if not path.exists():
        return {}
    try:
        earlier = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return earlier if isinstance(earlier, dict) and earlier.get("identity") == identity else {}


def reusable_rows(earlier: dict, parts) -> dict[str, dict]:
    """The rows of an earlier run's JSON (earlier_run) under the given part names, by row_key."""
    held = [earlier.get(part) for part in parts]
    rows = [r for part in held for r in ([part] if isinstance(part, dict) else part or []) if isinstance(r, dict)]
    return {row_key(r): r for r in rows}
