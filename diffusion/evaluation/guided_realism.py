"""The guided-realism part (issue 31, part 2; issue 41, item 2): which guided setting keeps class accuracy >=
ACCURACY_FLOOR at the lowest classifier two-sample accuracy, within Generate's time budget.

At Generate's sampler (DPM-Solver++(2M)) and 10 steps: every classifier-free method of guidance.GUIDANCE_METHODS on
a scale grid, beside the unguided row; at 15 and 20 steps the methods that modify CFG at the scales that kept accuracy
(LONGER), and no guidance. A row's images are judged by both evaluators' class accuracy and by a panel of two-sample
judges (diffusion.evaluation.judge: the judge named in the row, seeds seed ... seed + 4): one judge's own randomness
moves its accuracy by about +-0.03-0.06, more than the differences between neighbouring settings, so the rows are
ranked by the panel's mean. The click-time part says which rows fit the time budget (click_time.BUDGET)."""

from __future__ import annotations

import statistics
from dataclasses import asdict

from ..core.guidance import GUIDANCE_METHODS
from ..core.metrics import evaluator_outputs
from .judge import config_of, judge_panel, run_judge, run_seeds
from .outsider import APP_DEFAULT, judged_images
from .part import Part

STEPS = 10  # the full grid's steps: Generate's until issue 41 (2026-12-08)
METHODS = ("cfg", "cfg-rescale", "interval", "apg")
SCALES = (1.5, 2.0, 3.0)
# Beyond Generate's 10 steps (issue 41, item 2): plain CFG was the least real method at every scale at 10 steps, and
# scale 1.5 stayed below the accuracy floor for APG and interval guidance, so the longer rows leave both out.
LONGER = dict(steps=(15, 20), methods=("cfg-rescale", "interval", "apg"), scales=(2.0, 3.0))
ACCURACY_FLOOR = 0.97  # the class accuracy users want from a guided default (issue 31), by the weaker evaluator
TIME_BUDGET = 0.3  # a default takes at most this share of the classic DDIM-50 with CFG 3's click-to-result time (issue 41)
CLASSIC = dict(sampler="ddim", steps=50, guidance="cfg", scale=3.0)  # what TIME_BUDGET is a share of
QUICK = dict(methods=("cfg", "apg"), scales=(3.0,), steps=2)


def rows(evaluator, self_conditioning) -> list[dict]:
    """The grid at Generate's steps, then the longer rows; only the step counts config.guided_steps names, if any."""
    if evaluator.model.config.get("null_class") is None:
        return []
    c = evaluator.config
    plain = {k: v for k, v in APP_DEFAULT.items() if k in ("sampler", "solver")}
    plain |= dict(self_condition=evaluator.model.self_condition, judge=asdict(run_judge(c.quick)))
    grids = ([(QUICK["steps"], QUICK["methods"], QUICK["scales"])] if c.quick else
             [(STEPS, METHODS, SCALES)] + [(steps, LONGER["methods"], LONGER["scales"])
                                                          for steps in LONGER["steps"]])
    planned = []
    for steps, methods, scales in grids:
        if c.guided_steps and steps not in c.guided_steps:
            continue
        planned.append(dict(measure="guided-realism", method="none", **plain, steps=steps, guidance="none", scale=1.0))
        planned += [dict(measure="guided-realism", method=name, **plain, steps=steps,
                         **GUIDANCE_METHODS[name].settings, scale=scale) for name in methods for scale in scales]
    return planned


def measure(evaluator, row: dict) -> dict | None:
    judged = judged_images(evaluator, row)
    if judged is None:
        return None
    panel = judge_panel(evaluator.real_split.comparison.images, judged.images, config_of(row["judge"]),
                        run_seeds(evaluator.config.seed, evaluator.config.quick))
    accuracy = {name: float((evaluator_outputs(network, judged.images)[0].argmax(1) == judged.labels).float().mean())
                for name, network in evaluator.judges.items()}
    return {**row, "samples": len(judged.labels), **judged.extra, "by_evaluator": accuracy,
            "two_sample_accuracy": panel.mean, "two_sample_judges": list(panel.accuracies),
            "best_epochs": list(panel.best_epochs)}


def judges_standard_error(judges: list[float]) -> float:
    """The standard error of the judges' mean: their sample standard deviation / sqrt(count)."""
    return statistics.stdev(judges) / len(judges) ** 0.5 if len(judges) > 1 else 0.0


def method_words(row: dict) -> str:
    if row["method"] == "none":
        return "no guidance"
    label = GUIDANCE_METHODS[row["method"]].label if row["method"] in GUIDANCE_METHODS else row["method"]
    return f"{label}, scale {row['scale']:g}"


def setting_of(row: dict) -> tuple:
    """What names a row of this part: (steps, method, scale)."""
    return row["steps"], row["method"], row["scale"]


def time_shares(results: dict) -> dict[tuple, float]:
    """{setting_of(row): its click-to-result time / the classic DDIM-50 with CFG 3's}, or {} when the run has no
    click-time part (a recorded file is data: unreadable timings say nothing). Measured through the app where the
    click-time row holds such a measurement (`through_app`, docs/evaluation/guided-realism/click_app.py: the queue,
    progress, previews and PNGs too), else the engine's time alone, a lower bound of each share."""
    timed = results.get("click_time")
    try:
        timed = timed.get("through_app") or timed
        return {(t["steps"], t["method"], t["scale"]): float(t["seconds"]) / float(timed["classic_seconds"])
                for t in timed["timings"]}
    except (AttributeError, KeyError, TypeError, ValueError, ZeroDivisionError):
        return {}


def chosen(rows: list[dict], shares: dict | None = None) -> dict | None:
    """The guided row with every evaluator's accuracy >= ACCURACY_FLOOR and, when the time shares are known, a time
    share <= TIME_BUDGET, at the lowest mean two-sample accuracy."""
    eligible = [r for r in rows if r["method"] != "none" and min(r["by_evaluator"].values()) >= ACCURACY_FLOOR
                and (not shares or shares.get(setting_of(r), float("inf")) <= TIME_BUDGET)]
    return min(eligible, key=lambda r: r["two_sample_accuracy"], default=None)


def table(results: dict) -> list[str]:
    rows = results.get("guided_realism")
    if not rows:
        return []
    evaluators = list(rows[0]["by_evaluator"])
    shares = time_shares(results)
    best = chosen(rows, shares)
    judges = len(rows[0]["two_sample_judges"])
    steps = ", ".join(str(n) for n in sorted({r["steps"] for r in rows}))
    lines = ["", f"Guided realism ({rows[0]['samples']} images per row at DPM-Solver++(2M) with {steps} steps, the "
                 f"same noise for every row): class accuracy by each evaluator, and the classifier two-sample "
                 f"accuracy (0.5 = indistinguishable from real test images) as the mean of {judges} judges (seeds "
                 f"{results['config']['seed']}-{results['config']['seed'] + judges - 1}) with their spread"
                 + (f"; time: Generate's click-to-result time (16 images) as a share of DDIM-50 with CFG 3's, from "
                    f"the click-time part" if shares else "") + ". "
                 f"In bold: the lowest two-sample accuracy at accuracy >= {ACCURACY_FLOOR} by both evaluators"
                 + (f" and time <= {TIME_BUDGET}" if shares else "") + ".", "",
             "| guidance | steps | NFE | " + " | ".join(f"{name}: accuracy" for name in evaluators)
             + " | two-sample accuracy (mean of judges) | ± (standard error) | judges' min - max |"
             + (" time |" if shares else ""),
             "|---|---|---|" + "---|" * len(evaluators) + "---|---|---|" + ("---|" if shares else "")]
    for r in sorted(rows, key=lambda r: r["two_sample_accuracy"]):
        mean = f"{r['two_sample_accuracy']:.3f}"
        share = shares.get(setting_of(r))
        lines.append(f"| {method_words(r)} | {r['steps']} | {r.get('nfe', '-')} | "
                     + " | ".join(f"{r['by_evaluator'][name]:.3f}" for name in evaluators)
                     + f" | {f'**{mean}**' if r is best else mean} | {judges_standard_error(r['two_sample_judges']):.3f} | "
                     f"{min(r['two_sample_judges']):.3f} - {max(r['two_sample_judges']):.3f} |"
                     + ((f" {share:.2f} |" if share is not None else " - |") if shares else ""))
    return lines


def plot(results: dict, out_dir, plt):
    """Two-sample accuracy against class accuracy, one panel per step count, one line per method over its scales."""
    rows = results.get("guided_realism")
    if not rows:
        return
    step_counts = sorted({r["steps"] for r in rows})
    fig, axes = plt.subplots(1, len(step_counts), figsize=(4.2 * len(step_counts) + 1, 4.4), sharey=True,
                             squeeze=False)
    for ax, steps in zip(axes[0], step_counts):
        at_steps = [r for r in rows if r["steps"] == steps]
        for method in dict.fromkeys(r["method"] for r in at_steps):
            points = sorted((r["scale"], min(r["by_evaluator"].values()), r["two_sample_accuracy"],
                             judges_standard_error(r["two_sample_judges"])) for r in at_steps if r["method"] == method)
            label = "no guidance" if method == "none" else GUIDANCE_METHODS[method].label
            ax.errorbar([p[1] for p in points], [p[2] for p in points], yerr=[p[3] for p in points], marker="o",
                        capsize=2, label=label)
            for scale, accuracy, two_sample, _ in points:
                if method != "none":
                    ax.annotate(f"{scale:g}", (accuracy, two_sample), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")
        ax.axvline(ACCURACY_FLOOR, color="0.5", linestyle="--", label=f"accuracy {ACCURACY_FLOOR}")
        ax.set(xlabel="class accuracy (the lower of the two evaluators)", title=f"DPM-Solver++(2M), {steps} steps")
        ax.title.set_fontsize(9)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("two-sample accuracy, judges' mean ± its standard error")
    fig.suptitle(f"{results['checkpoint']}: realism against accuracy (lower right is better; numbers are scales)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(out_dir / f"{results['checkpoint']}-guided-realism.png", dpi=120)
    plt.close(fig)


def summary(results: dict) -> str:
    """'guided realism: CFG rescale ..., scale 3 at 10 steps keeps accuracy >= 0.97 at two-sample accuracy 0.66 (...)'
    or ''."""
    rows = results.get("guided_realism")
    if not isinstance(rows, list):
        return ""
    try:
        best = chosen(rows, time_shares(results))
        unguided = next((r for r in rows if r["method"] == "none" and r["steps"] == best["steps"]), None) if best else None
        if best is None:
            return ""
        return (f"{method_words(best)} at {best['steps']} steps keeps class accuracy >= {ACCURACY_FLOOR} at two-sample "
                f"accuracy {float(best['two_sample_accuracy']):.2f}"
                + (f" (no guidance: {float(unguided['two_sample_accuracy']):.2f})" if unguided else ""))
    except (KeyError, TypeError, ValueError, AttributeError):  # a recorded file is data: unreadable rows say nothing
        return ""


PART = Part("guided_realism", ("denoiser",), rows, table, measure=measure, plot=plot, summary=summary,
            title="Guided realism",
            help="which guidance method and scale keep class accuracy >= 0.97 at the lowest two-sample accuracy")
