"""The two-sample part: the classifier two-sample test (diffusion.evaluation.judge) of each judged setting and reference
against real test images: 0.5 = indistinguishable from real."""

from __future__ import annotations

from .judge import TwoSampleConfig, two_sample_accuracy
from .outsider import judged_images, outsider_rows, setting_words
from .part import Part

QUICK = TwoSampleConfig(epochs=2, patience=1)


def measure(evaluator, row: dict) -> dict | None:
    judged = judged_images(evaluator, row)
    if judged is None:
        return None
    config = QUICK if evaluator.config.quick else TwoSampleConfig()
    result = two_sample_accuracy(evaluator.real_split.comparison.images, judged.images, config, evaluator.config.seed)
    return {**row, "samples": len(judged.labels), **judged.extra, "two_sample_accuracy": result.accuracy,
            "two_sample_stderr": result.stderr, "held_out": result.held_out}


def table(results: dict) -> list[str]:
    rows = results.get("two_sample")
    if not rows:
        return []
    lines = ["", f"Classifier two-sample test (Lopez-Paz & Oquab 2017): a fresh small CNN trained to tell "
                 f"{rows[0]['samples']} images from as many real test images, accuracy on {rows[0]['held_out']} "
                 f"held-out images of both (0.5 = indistinguishable from real; ± is the binomial standard error):", "",
             "| setting | NFE | two-sample accuracy | ± |", "|---|---|---|---|"]
    return lines + [f"| {setting_words(r)} | {r.get('nfe', '-')} | {r['two_sample_accuracy']:.3f} | "
                    f"{r['two_sample_stderr']:.3f} |" for r in rows]


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


PART = Part("two_sample", ("denoiser", "normalizing-flow"), outsider_rows("two-sample"), table, measure=measure,
            summary=summary, title="Realism", help="classifier two-sample test against real test images (0.5 = indistinguishable)")
