"""The precision-recall part: improved precision and recall (Kynkaanniemi et al. 2019, k = 3) in each evaluation
classifier's feature space, against real test images: fidelity and diversity reported apart."""

from __future__ import annotations

from ..core.metrics import precision_recall
from .outsider import judged_row, outsider_rows, setting_words
from .part import Part

K = 3  # neighbours for the k-NN radii (the paper's choice)


def measure(evaluator, row: dict) -> dict | None:
    def score(name, probabilities, features, judged):
        precision, recall = precision_recall(features, evaluator.comparison_features[name], K)
        return {"precision": precision, "recall": recall}

    return judged_row(evaluator, row, score)


def table(results: dict) -> list[str]:
    rows = results.get("precision_recall")
    if not rows:
        return []
    names = list(rows[0]["by_evaluator"])
    lines = ["", f"Precision and recall (Kynkaanniemi et al. 2019, k = {K}; precision: share of images inside the real "
                 f"images' k-NN manifold, recall: share of real images inside theirs), {rows[0]['samples']} against as "
                 f"many real test images:", "",
             "| setting | " + " | ".join(f"{n}: precision | {n}: recall" for n in names) + " |",
             "|---|" + "---|---|" * len(names)]
    for r in rows:
        cells = " | ".join(f"{r['by_evaluator'][n]['precision']:.3f} | {r['by_evaluator'][n]['recall']:.3f}"
                           for n in names)
        lines.append(f"| {setting_words(r)} | {cells} |")
    return lines


PART = Part("precision_recall", ("denoiser", "normalizing-flow"), outsider_rows("precision-recall"), table,
            measure=measure, help="precision and recall (k = 3) in both evaluators' feature spaces")
