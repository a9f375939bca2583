"""The two-sample judge's calibration suite (issue 41): a measuring instrument shows its power before its verdict.

The judge (diffusion.evaluation.judge, the classifier two-sample test of Lopez-Paz & Oquab 2017) is asked to tell real
test images from other real test images that were altered in known ways: not at all (it must stay near 0.5: <=
REAL_MAX), by N(0, 0.05^2) noise (it must see it: >= NOISE_MIN), by N(0, 0.02^2) noise, by a 3x3 box blur and by a
one-pixel shift. Each alteration is judged as floats and quantized to 8 bits as a PNG holds them, by several judges
(one per seed), on the same split and seeds as the rows the judge measures (outsider.RealSplit: `comparison` is the
real side, the held-out `reference` images are altered)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from ..core.metrics import box_blur
from ..formats.data import to_model_range, to_uint8
from .judge import PANEL, PanelResult, TwoSampleConfig, config_of, judge_panel, run_judge, run_seeds
from .part import Part

REAL_MAX = 0.53  # real against real: a judge above this sees differences that are not there
NOISE_MIN = 0.75  # real against real + N(0, 0.05^2): a judge below this cannot see visible noise


def with_noise(sigma: float) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    def alter(images, generator):
        return (images + sigma * torch.randn(images.shape, generator=generator)).clamp(-1, 1)
    return alter


def shifted_one_pixel(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Every image moved one pixel to the right; the column that comes in is background (-1)."""
    return F.pad(images[..., :-1], (1, 0), value=-1.0)  # (N, C, H, W)


@dataclass(frozen=True)
class Alteration:
    words: str
    alter: Callable[[torch.Tensor, torch.Generator], torch.Tensor]  # (images in [-1, 1], noise generator) -> images
    bar: str = ""  # what the judge must reach on it, in words


ALTERATIONS: dict[str, Alteration] = {
    "real": Alteration("real (other test images)", lambda images, generator: images, f"<= {REAL_MAX}"),
    "noise-0.05": Alteration("real + N(0, 0.05²)", with_noise(0.05), f">= {NOISE_MIN}"),
    "noise-0.02": Alteration("real + N(0, 0.02²)", with_noise(0.02)),
    "blur": Alteration("real, 3x3 box blur", lambda images, generator: box_blur(images)),
    "shift": Alteration("real, shifted one pixel right", shifted_one_pixel),
}


def quantized(images: torch.Tensor) -> torch.Tensor:
    """Images as an 8-bit PNG holds them: rounded to the nearest of 256 levels, back in [-1, 1]."""
    return to_model_range(to_uint8(images))


def altered(reference: torch.Tensor, alteration: str, eight_bit: bool, noise_seed: int) -> torch.Tensor:
    images = ALTERATIONS[alteration].alter(reference, torch.Generator().manual_seed(noise_seed))
    return quantized(images) if eight_bit else images


@dataclass(frozen=True)
class CalibrationConfig:
    judge: TwoSampleConfig = TwoSampleConfig()
    seeds: tuple[int, ...] = tuple(range(PANEL))  # one judge per seed: split, weights and batch order
    alterations: tuple[str, ...] = tuple(ALTERATIONS)
    eight_bit: tuple[bool, ...] = (False, True)
    noise_seed: int = 1  # the noise of the noisy rows (outsider.RealSplit's noisy reference uses run seed + 1)


@dataclass(frozen=True)
class CalibrationRow(PanelResult):  # accuracies and best epochs: one per judge seed
    alteration: str = ""
    eight_bit: bool = False


def judge_row(real: torch.Tensor, reference: torch.Tensor, alteration: str, eight_bit: bool,
              config: CalibrationConfig) -> CalibrationRow:
    """One alteration judged by one judge per seed: real (label 0) against the altered reference (label 1)."""
    images = altered(reference, alteration, eight_bit, config.noise_seed)
    panel = judge_panel(real, images, config.judge, config.seeds)
    return CalibrationRow(panel.accuracies, panel.best_epochs, panel.held_out, alteration, eight_bit)


def calibration_suite(real: torch.Tensor, reference: torch.Tensor,
                      config: CalibrationConfig = CalibrationConfig()) -> list[CalibrationRow]:
    """Every alteration of `reference` (N, C, H, W) judged against `real` (other images of the same distribution)."""
    return [judge_row(real, reference, name, eight_bit, config) for name in config.alterations
            for eight_bit in config.eight_bit]


def bars_met(rows: list[CalibrationRow]) -> dict[str, bool]:
    """Whether the judge has shown its power: the mean of each bar's rows, floats and 8-bit, on the right side of it
    (a bar none of the rows reads is left out)."""
    met = {"real": [r.mean <= REAL_MAX for r in rows if r.alteration == "real"],
           "noise-0.05": [r.mean >= NOISE_MIN for r in rows if r.alteration == "noise-0.05"]}
    return {bar: all(checks) for bar, checks in met.items() if checks}


# --- the evaluation part: the suite on the run's own split and seeds ---

def planned_rows(evaluator, self_conditioning) -> list[dict]:
    judge = run_judge(evaluator.config.quick)
    return [dict(measure="judge-calibration", alteration=name, eight_bit=eight_bit, judge=asdict(judge))
            for name in ALTERATIONS for eight_bit in (False, True)]


def measure(evaluator, row: dict) -> dict:
    c, split = evaluator.config, evaluator.real_split
    config = CalibrationConfig(judge=config_of(row["judge"]), seeds=run_seeds(c.seed, c.quick), noise_seed=c.seed + 1)
    result = judge_row(split.comparison.images, split.images(split.reference_indices), row["alteration"],
                       row["eight_bit"], config)
    return {**row, "samples": len(split.reference_indices), "two_sample_accuracy": result.mean,
            "two_sample_spread": result.spread, "two_sample_judges": list(result.accuracies),
            "best_epochs": list(result.best_epochs)}


def cell(row: dict) -> str:
    judges = row["two_sample_judges"]
    return f"{row['two_sample_accuracy']:.3f} ± {row['two_sample_spread']:.3f} ({min(judges):.2f} - {max(judges):.2f})"


def table(results: dict) -> list[str]:
    rows = results.get("judge_calibration")
    if not rows:
        return []
    by = {(r["alteration"], r["eight_bit"]): r for r in rows}
    first = rows[0]
    lines = ["", f"The two-sample judge's calibration suite: real test images against {first['samples']} other real "
                 f"test images altered as named, as floats and quantized to 8 bits; mean ± standard deviation of "
                 f"{len(first['two_sample_judges'])} judges (seeds {results['config']['seed']}-"
                 f"{results['config']['seed'] + len(first['two_sample_judges']) - 1}), min - max in brackets.", "",
             "| altered reference | floats | 8-bit | must be |", "|---|---|---|---|"]
    for name, alteration in ALTERATIONS.items():
        cells = [cell(by[(name, eight_bit)]) if (name, eight_bit) in by else "-" for eight_bit in (False, True)]
        lines.append(f"| {alteration.words} | {' | '.join(cells)} | {alteration.bar or '-'} |")
    met = bars_met([CalibrationRow(tuple(r["two_sample_judges"]), tuple(r["best_epochs"]), 0, r["alteration"],
                                   r["eight_bit"]) for r in rows])
    words = {"real": f"real against real <= {REAL_MAX}", "noise-0.05": f"real + N(0, 0.05²) >= {NOISE_MIN}"}
    return lines + ["", "The judge's bars (means, floats and 8-bit): "
                    + "; ".join(f"{words[bar]}: {'met' if ok else 'NOT met'}" for bar, ok in met.items()) + "."]


PART = Part("judge_calibration", ("denoiser", "normalizing-flow"), planned_rows, table, measure=measure,
            title="Judge calibration",
            help="the two-sample judge's power: real against real, noisy, blurred and shifted real images")
