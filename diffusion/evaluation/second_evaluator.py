"""The second-evaluator part: feature FID and class accuracy by both evaluation classifiers (the project's evaluator
and config.second_evaluator, another architecture and recipe), against the same held-out test images."""

from __future__ import annotations

from ..core.metrics import class_accuracy, frechet_distance
from .outsider import judged_row, outsider_rows, setting_words
from .part import Part


def measure(evaluator, row: dict) -> dict | None:
    def score(name, probabilities, features, judged):
        return {"fid": frechet_distance(features, evaluator.pool_features[name]),
                "accuracy": class_accuracy(probabilities, judged.labels)}

    return judged_row(evaluator, row, score)


def table(results: dict) -> list[str]:
    rows = results.get("second_evaluator")
    if not rows:
        return []
    names = list(rows[0]["by_evaluator"])
    lines = ["", f"Two evaluators (feature FID against test images that no reference row uses; class accuracy), "
                 f"{rows[0]['samples']} images per row:", "",
             "| setting | NFE | " + " | ".join(f"{n}: FID | {n}: accuracy" for n in names) + " |",
             "|---|---|" + "---|---|" * len(names)]
    for r in rows:
        cells = " | ".join(f"{r['by_evaluator'][n]['fid']:.2f} | {r['by_evaluator'][n]['accuracy']:.3f}" for n in names)
        lines.append(f"| {setting_words(r)} | {r.get('nfe', '-')} | {cells} |")
    return lines


PART = Part("second_evaluator", ("denoiser", "normalizing-flow"), outsider_rows("second-evaluator"), table,
            measure=measure, help="feature FID and accuracy by both evaluators at no guidance and the default setting, "
                                  "beside real, noisy and blurred references")
