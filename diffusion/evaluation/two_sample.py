"""The two-sample part: the classifier two-sample test (diffusion.evaluation.judge) of each judged setting against
real test images, by a panel of judges (seeds seed ... seed + 4): 0.5 = indistinguishable from real.

Its references (real, noisy and blurred real images against real) are the judge-calibration part's rows: the same
split, judge and seeds, so they are measured there once rather than again for every generator."""

from __future__ import annotations

from dataclasses import asdict

from .judge import config_of, judge_panel, run_judge, run_seeds
from .outsider import judged_images, judged_settings, setting_words
from .part import Part


def rows(evaluator, self_conditioning) -> list[dict]:
    judge = asdict(run_judge(evaluator.config.quick))
    return [dict(measure="two-sample", **setting, judge=judge) for setting in judged_settings(evaluator)]


def measure(evaluator, row: dict) -> dict | None:
    judged = judged_images(evaluator, row)
    if judged is None:
        return None
    panel = judge_panel(evaluator.real_split.comparison.images, judged.images, config_of(row["judge"]),
                        run_seeds(evaluator.config.seed, evaluator.config.quick))
    return {**row, "samples": len(judged.labels), **judged.extra, "two_sample_accuracy": panel.mean,
            "two_sample_stderr": panel.standard_error, "two_sample_judges": list(panel.accuracies),
            "best_epochs": list(panel.best_epochs), "held_out": panel.held_out}


def table(results: dict) -> list[str]:
    rows = results.get("two_sample")
    if not rows:
        return []
    judges = len(rows[0].get("two_sample_judges") or [None])
    lines = ["", f"Classifier two-sample test (Lopez-Paz & Oquab 2017): fresh CNNs (judges) trained to tell "
                 f"{rows[0]['samples']} images from as many real test images, accuracy on {rows[0]['held_out']} "
                 f"held-out images of both (0.5 = indistinguishable from real); the mean of {judges} judges and its "
                 f"standard error. The judge's power (real against real, noisy and blurred real images) is the "
                 f"judge-calibration part's:", "",
             "| setting | NFE | two-sample accuracy | ± | judges' min - max |", "|---|---|---|---|---|"]
    return lines + [f"| {setting_words(r)} | {r.get('nfe', '-')} | {r['two_sample_accuracy']:.3f} | "
                    f"{r['two_sample_stderr']:.3f} | {spread_words(r)} |" for r in rows]


def spread_words(row: dict) -> str:
    judges = row.get("two_sample_judges")
    return f"{min(judges):.3f} - {max(judges):.3f}" if judges else "-"


def readable(row) -> tuple[str, float] | None:
    """(setting words, accuracy) of a recorded row with the fields and types we wrote, else None (the file is data)."""
    if not isinstance(row, dict) or type(row.get("two_sample_accuracy")) not in (int, float):
        return None
    try:
        return setting_words(row), float(row["two_sample_accuracy"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def summary(results: dict) -> str:
    """'classifier two-sample accuracy 0.64 at DPM-Solver++(2M)-10, no guidance; ... (...; real against real: 0.49)'
    for the model card, or ''."""
    rows = results.get("two_sample")
    rows = [(row.get("reference"), read) for row in rows if (read := readable(row))] if isinstance(rows, list) else []
    judged = [f"{accuracy:.2f} at {words}" for reference, (words, accuracy) in rows if reference is None]
    real = [accuracy for reference, (_, accuracy) in rows if reference == "real"]
    if not judged:
        return ""
    return (f"classifier two-sample accuracy {'; '.join(judged)} (0.5 = indistinguishable from real test images"
            + (f"; real against real: {real[0]:.2f}" if real else "") + ")")


PART = Part("two_sample", ("denoiser", "normalizing-flow"), rows, table, measure=measure,
            summary=summary, title="Realism", help="classifier two-sample test against real test images (0.5 = indistinguishable)")
