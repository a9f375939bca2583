"""The guided-realism part (issue 31, part 2): which guided setting keeps class accuracy >= ACCURACY_FLOOR at the
lowest classifier two-sample accuracy.

Every classifier-free method of guidance.GUIDANCE_METHODS on a scale grid, at Generate's sampler (DPM-Solver++(2M)
with its steps), beside the unguided row. A row's images are judged by both evaluators' class accuracy and by JUDGES
two-sample judges (diffusion.evaluation.judge with seeds seed, seed + 1, ...): one judge's own randomness moves its
accuracy by about +-0.03-0.06, more than the differences between neighbouring settings, so the rows are ranked by the
judges' mean."""

from __future__ import annotations

import statistics

from ..core.guidance import GUIDANCE_METHODS
from ..core.metrics import evaluator_outputs
from .judge import TwoSampleConfig, two_sample_accuracy
from .outsider import APP_DEFAULT, judged_images
from .part import Part

METHODS = ("cfg", "cfg-rescale", "interval", "apg")
SCALES = (1.5, 2.0, 3.0)
JUDGES = 5
ACCURACY_FLOOR = 0.97  # the class accuracy users want from a guided default (issue 31), by the weaker evaluator
QUICK = dict(methods=("cfg", "apg"), scales=(3.0,), judges=2, steps=2)


def rows(evaluator, self_conditioning) -> list[dict]:
    if evaluator.model.config.get("null_class") is None:
        return []
    quick = evaluator.config.quick
    methods, scales = (QUICK["methods"], QUICK["scales"]) if quick else (METHODS, SCALES)
    plain = {k: v for k, v in APP_DEFAULT.items() if k in ("sampler", "solver", "steps")}
    plain |= dict(self_condition=evaluator.model.self_condition, steps=QUICK["steps"] if quick else plain["steps"])
    unguided = [dict(measure="guided-realism", method="none", **plain, guidance="none", scale=1.0)]
    return unguided + [dict(measure="guided-realism", method=name, **plain, **GUIDANCE_METHODS[name].settings,
                            scale=scale) for name in methods for scale in scales]


def measure(evaluator, row: dict) -> dict | None:
    judged = judged_images(evaluator, row)
    if judged is None:
        return None
    quick = evaluator.config.quick
    config = TwoSampleConfig(epochs=2, patience=1) if quick else TwoSampleConfig()
    real = evaluator.real_split.comparison.images
    seed = evaluator.config.seed
    judges = [two_sample_accuracy(real, judged.images, config, seed + j).accuracy
              for j in range(QUICK["judges"] if quick else JUDGES)]
    accuracy = {name: float((evaluator_outputs(network, judged.images)[0].argmax(1) == judged.labels).float().mean())
                for name, network in evaluator.judges.items()}
    return {**row, "samples": len(judged.labels), **judged.extra, "by_evaluator": accuracy,
            "two_sample_accuracy": statistics.fmean(judges), "two_sample_judges": judges}


def judges_standard_error(judges: list[float]) -> float:
    """The standard error of the judges' mean: their sample standard deviation / sqrt(count)."""
    return statistics.stdev(judges) / len(judges) ** 0.5 if len(judges) > 1 else 0.0


def method_words(row: dict) -> str:
    if row["method"] == "none":
        return "no guidance"
    label = GUIDANCE_METHODS[row["method"]].label if row["method"] in GUIDANCE_METHODS else row["method"]
    return f"{label}, scale {row['scale']:g}"


def chosen(rows: list[dict]) -> dict | None:
    """The row with every evaluator's accuracy >= ACCURACY_FLOOR at the lowest mean two-sample accuracy."""
    eligible = [r for r in rows if r["method"] != "none" and min(r["by_evaluator"].values()) >= ACCURACY_FLOOR]
    return min(eligible, key=lambda r: r["two_sample_accuracy"], default=None)


def table(results: dict) -> list[str]:
    rows = results.get("guided_realism")
    if not rows:
        return []
    evaluators = list(rows[0]["by_evaluator"])
    best = chosen(rows)
    judges = len(rows[0]["two_sample_judges"])
    lines = ["", f"Guided realism ({rows[0]['samples']} images per row at DPM-Solver++(2M)-{rows[0]['steps']}, the "
                 f"same noise for every row): class accuracy by each evaluator, and the classifier two-sample "
                 f"accuracy (0.5 = indistinguishable from real test images) as the mean of {judges} judges (seeds "
                 f"{results['config']['seed']}-{results['config']['seed'] + judges - 1}) with their spread. "
                 f"In bold: the lowest two-sample accuracy at accuracy >= {ACCURACY_FLOOR} by both evaluators.", "",
             "| guidance | NFE | " + " | ".join(f"{name}: accuracy" for name in evaluators)
             + " | two-sample accuracy (mean of judges) | ± (standard error) | judges' min - max |",
             "|---|---|" + "---|" * len(evaluators) + "---|---|---|"]
    for r in sorted(rows, key=lambda r: r["two_sample_accuracy"]):
        mean = f"{r['two_sample_accuracy']:.3f}"
        lines.append(f"| {method_words(r)} | {r.get('nfe', '-')} | "
                     + " | ".join(f"{r['by_evaluator'][name]:.3f}" for name in evaluators)
                     + f" | {f'**{mean}**' if r is best else mean} | {judges_standard_error(r['two_sample_judges']):.3f} | "
                     f"{min(r['two_sample_judges']):.3f} - {max(r['two_sample_judges']):.3f} |")
    return lines


def plot(results: dict, out_dir, plt):
    """Two-sample accuracy against class accuracy, one line per method over its scales."""
    rows = results.get("guided_realism")
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted((r["scale"], min(r["by_evaluator"].values()), r["two_sample_accuracy"],
                         judges_standard_error(r["two_sample_judges"])) for r in rows if r["method"] == method)
        label = "no guidance" if method == "none" else GUIDANCE_METHODS[method].label
        ax.errorbar([p[1] for p in points], [p[2] for p in points], yerr=[p[3] for p in points], marker="o",
                    capsize=2, label=label)
        for scale, accuracy, two_sample, _ in points:
            if method != "none":
                ax.annotate(f"{scale:g}", (accuracy, two_sample), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axvline(ACCURACY_FLOOR, color="0.5", linestyle="--", label=f"accuracy {ACCURACY_FLOOR}")
    ax.set(xlabel="class accuracy (the lower of the two evaluators)",
           ylabel="two-sample accuracy, judges' mean ± its standard error", title=f"{results['checkpoint']}: realism against accuracy "
           "(lower right is better; numbers are scales)")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_dir / f"{results['checkpoint']}-guided-realism.png", dpi=120)
    plt.close(fig)


def summary(results: dict) -> str:
    """'guided realism: APG ..., scale 3 keeps accuracy >= 0.97 at two-sample accuracy 0.66 (...)' or ''."""
    rows = results.get("guided_realism")
    if not isinstance(rows, list):
        return ""
    try:
        best = chosen(rows)
        unguided = next((r for r in rows if r["method"] == "none"), None)
        if best is None:
            return ""
        return (f"{method_words(best)} keeps class accuracy >= {ACCURACY_FLOOR} at two-sample accuracy "
                f"{float(best['two_sample_accuracy']):.2f}"
                + (f" (no guidance: {float(unguided['two_sample_accuracy']):.2f})" if unguided else ""))
    except (KeyError, TypeError, ValueError, AttributeError):  # a recorded file is data: unreadable rows say nothing
        return ""


PART = Part("guided_realism", ("denoiser",), rows, table, measure=measure, plot=plot, summary=summary,
            title="Guided realism",
            help="which guidance method and scale keep class accuracy >= 0.97 at the lowest two-sample accuracy")
