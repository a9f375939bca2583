"""What the outsider parts (second-evaluator, precision-recall, two-sample) share: the settings they judge each
generator at, the real images they compare with, and the references (real, noisy, blurred) beside them.

The test split is cut once per run, class by class, from the run's seed: `held_out_reference` (N images, the
"real" reference rows are made of them and nothing else uses them), `comparison` (N other images: the real side of
precision / recall and of the two-sample test), and `pool` (every test image but the reference ones, up to
config.reference: the statistics feature FID is measured against). N = config.samples."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from ..formats.data import to_model_range
from ..serving.engine import RequestError
from ..core.metrics import box_blur, evaluator_outputs

# Generate's default sampling (diffusion/app/generate.py APP_SAMPLING | APP_GUIDANCE; a test holds the two equal):
# what a user sees first.
APP_DEFAULT = dict(sampler="ode", solver="dpm++2m", steps=15, guidance="cfg", scale=2.0, interval_low=-4.7,
                   interval_high=1.2)
NOISE_SIGMA = 0.05  # the noisy reference: real + N(0, 0.05^2) per pixel (in [-1, 1] units), as in issue 31
REFERENCES = ("real", "noisy", "blurred")


def judged_settings(evaluator) -> list[dict]:
    """Each generator at no guidance and at its default: a few-step model at its own settings (no guidance: its pairs
    carry the teacher's) and at one step (two, for a one-step model); another denoiser at Generate's sampler without
    guidance and with its default guidance (when it has a null class); a normalizing flow at T = 1."""
    model, quick = evaluator.model, evaluator.config.quick
    if evaluator.kind == "normalizing-flow":
        return [dict(temperature=1.0)]
    own = dict(self_condition=model.self_condition)
    if model.sampling_defaults:
        default = dict(model.sampling_defaults) | dict(scale=1.0) | own
        return [default, default | dict(steps=2 if default.get("steps") == 1 else 1)]  # an instant model: also at 2
    plain = {k: v for k, v in APP_DEFAULT.items() if k in ("sampler", "solver", "steps")} | own
    plain["steps"] = 2 if quick else plain["steps"]
    settings = [plain | dict(guidance="none", scale=1.0)]
    if model.config.get("null_class") is not None:
        settings.append(plain | {k: v for k, v in APP_DEFAULT.items() if k not in plain})
    return settings


def outsider_rows(measure: str):
    """A part's rows: the references first, then the judged settings."""
    def rows(evaluator, self_conditioning) -> list[dict]:
        return ([dict(measure=measure, reference=name) for name in REFERENCES]
                + [dict(measure=measure, **setting) for setting in judged_settings(evaluator)])
    return rows


@dataclass(frozen=True)
class Images:
    images: torch.Tensor  # (N, C, H, W) in [-1, 1]
    labels: torch.Tensor  # (N,)
    extra: dict  # nfe and seconds of generated images; nothing for a reference


class RealSplit:
    """The run's cut of the test split (see the module docstring)."""

    def __init__(self, evaluator):
        c = evaluator.config
        test = evaluator.test_set
        per_class = max(1, c.samples // evaluator.classes)
        generator = torch.Generator().manual_seed(c.seed)
        reference, comparison = [], []
        for k in range(evaluator.classes):
            members = (test.labels == k).nonzero()[:, 0]
            members = members[torch.randperm(len(members), generator=generator)]
            if len(members) < 2 * per_class:
                raise RequestError(f"the test split has {len(members)} images of class {k}; the outsider parts need "
                                   f"{2 * per_class} (--samples {c.samples}: two disjoint sets of {per_class} per class)")
            reference.append(members[:per_class])
            comparison.append(members[per_class:2 * per_class])
        reference, comparison = torch.cat(reference), torch.cat(comparison)
        self._test, self._seed = test, c.seed
        self.reference_indices, self.comparison_indices = reference, comparison
        outside = torch.ones(len(test), dtype=torch.bool)
        outside[reference] = False
        self.pool_indices = outside.nonzero()[:, 0][:c.reference]

    def images(self, indices: torch.Tensor) -> torch.Tensor:
        return to_model_range(self._test.images[indices])

    @cached_property
    def comparison(self) -> Images:
        return Images(self.images(self.comparison_indices), self._test.labels[self.comparison_indices], {})

    @cached_property
    def pool(self) -> torch.Tensor:
        return self.images(self.pool_indices)

    def reference(self, name: str) -> Images:
        """The held-out real images as they are, plus N(0, NOISE_SIGMA^2) noise (clamped), or blurred by a 3x3 box."""
        images = self.images(self.reference_indices)
        if name == "noisy":
            noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(self._seed + 1))
            images = (images + NOISE_SIGMA * noise).clamp(-1, 1)
        elif name == "blurred":
            images = box_blur(images)
        return Images(images, self._test.labels[self.reference_indices], {})


def judged_images(evaluator, row: dict) -> Images | None:
    """A row's images: a reference's, or the generator's at the row's setting (None on ranks other than 0)."""
    if "reference" in row:
        return evaluator.real_split.reference(row["reference"])
    drawn = evaluator.draw(**row)
    return None if drawn is None else Images(drawn.images, drawn.labels, dict(nfe=drawn.nfe, seconds=drawn.seconds))


def judged_row(evaluator, row: dict, score) -> dict | None:
    """A row measured by every judge: score(name, probabilities, features, images) -> that judge's numbers, under
    "by_evaluator", beside the row's sample count and sampling figures (None on ranks other than 0)."""
    judged = judged_images(evaluator, row)
    if judged is None:
        return None
    by_evaluator = {name: score(name, *evaluator_outputs(network, judged.images), judged)
                    for name, network in evaluator.judges.items()}
    return {**row, "samples": len(judged.labels), **judged.extra, "by_evaluator": by_evaluator}


def setting_words(row: dict) -> str:
    """'real test images', 'DPM-Solver++(2M)-10, CFG 3', 'Euler-1, no guidance', 'T = 1'."""
    if "reference" in row:
        return {"real": "real (other test images)", "noisy": f"real + N(0, {NOISE_SIGMA:g}²)",
                "blurred": "real, 3x3 box blur"}[row["reference"]]
    if "temperature" in row:
        return f"T = {row['temperature']:g}"
    solver = {"dpm++2m": "DPM-Solver++(2M)", "euler": "Euler", "heun": "Heun"}.get(row.get("solver"), row.get("solver"))
    sampler = solver if row["sampler"] == "ode" else row["sampler"].upper()
    guidance = "no guidance" if row["guidance"] == "none" else f"{row['guidance'].upper()} {row['scale']:g}"
    if row.get("rescale"):
        guidance += f", rescale {row['rescale']:g}"
    return f"{sampler}-{row['steps']}, {guidance}"
