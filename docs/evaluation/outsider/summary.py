"""Issue 31's table: every shipped generator at no guidance and at its default, judged by both evaluators (feature FID,
accuracy, precision / recall) and the classifier two-sample test, beside the real, noisy and blurred references.

    python docs/evaluation/outsider/summary.py docs/evaluation/outsider > docs/evaluation/outsider/table.md

Reads NAME.json (`evaluate --parts second-evaluator precision-recall two-sample --out-dir docs/evaluation/outsider`)
for each generator in that folder; the references are the first file's (every run cuts the same held-out images),
and their two-sample cells are the judge's calibration suite on that same split with the same judges
(../judge/fashion-diffusion.json, floats).
"""

import json
import sys
from pathlib import Path

from diffusion.evaluation.outsider import setting_words

GENERATORS = ("fashion-diffusion", "fashion-flow", "fashion-reflow", "fashion-instant", "fashion-dit", "fashion-nice")
PARTS = ("second_evaluator", "precision_recall", "two_sample")
CALIBRATION = Path(__file__).parent.parent / "judge" / "fashion-diffusion.json"
ALTERATION_OF = {"real": "real", "noisy": "noise-0.05", "blurred": "blur"}  # outsider reference -> calibration row


def calibrated_references(path: Path = CALIBRATION) -> dict:
    """{outsider reference name: the calibration suite's row (floats) judging it}."""
    rows = json.loads(path.read_text())["judge_calibration"]
    by_alteration = {r["alteration"]: r for r in rows if not r["eight_bit"]}
    return {name: by_alteration[alteration] for name, alteration in ALTERATION_OF.items()}


def rows_by_setting(results: dict) -> dict:
    """{row's setting words: {part: row}}, in the order of the two-sample part."""
    merged: dict = {}
    for part in PARTS:
        for row in results.get(part) or []:
            merged.setdefault(setting_words(row), {})[part] = row
    return merged


def line(name: str, setting: str, by_part: dict, evaluators: list[str]) -> str:
    first = next(iter(by_part.values()))
    cells = [name, setting, str(first.get("nfe", "-"))]
    fid = by_part.get("second_evaluator", {}).get("by_evaluator", {})
    pr = by_part.get("precision_recall", {}).get("by_evaluator", {})
    for evaluator in evaluators:
        cells += [f"{fid[evaluator]['fid']:.2f}" if evaluator in fid else "-",
                  f"{fid[evaluator]['accuracy']:.3f}" if evaluator in fid else "-",
                  f"{pr[evaluator]['precision']:.2f} / {pr[evaluator]['recall']:.2f}" if evaluator in pr else "-"]
    two = by_part.get("two_sample")
    if two and "two_sample_stderr" not in two:  # a calibration row: the judges' spread, not yet its standard error
        judges = two["two_sample_judges"]
        two = dict(two, two_sample_stderr=two["two_sample_spread"] / len(judges) ** 0.5)
    cells.append(f"**{two['two_sample_accuracy']:.3f}** ± {two['two_sample_stderr']:.3f}" if two else "-")
    return "| " + " | ".join(cells) + " |"


def table(folder: Path) -> str:
    runs = {name: json.loads((folder / f"{name}.json").read_text()) for name in GENERATORS
            if (folder / f"{name}.json").exists()}
    first = next(iter(runs.values()))
    evaluators = list(first["second_evaluator"][0]["by_evaluator"])
    header = ("| generator | setting | NFE | " + " | ".join(f"{e}: FID | {e}: accuracy | {e}: precision / recall"
                                                        for e in evaluators) + " | two-sample accuracy |")
    lines = [header, "|" + "---|" * (4 + 3 * len(evaluators))]
    calibrated = calibrated_references()
    for setting, by_part in rows_by_setting(first).items():
        reference = next(iter(by_part.values())).get("reference")
        if reference:
            lines.append(line("*reference*", setting, by_part | {"two_sample": calibrated[reference]}, evaluators))
    for name, results in runs.items():
        for setting, by_part in rows_by_setting(results).items():
            if "reference" not in next(iter(by_part.values())):
                lines.append(line(name, setting, by_part, evaluators))
    samples = first["config"]["samples"]
    return (f"{samples} class-balanced images per row (seed {first['config']['seed']}); FID against the test images "
            f"no reference row uses; precision / recall (k = 3) and the two-sample test against {samples} other test "
            f"images. Two-sample accuracy: the mean of 5 calibrated judges (seeds 0-4) ± its standard error; the "
            f"references' are the judge's calibration suite on the same split and seeds.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    print(table(Path(sys.argv[1])))
