"""The few-step part: issue 15's steps-vs-FID curve, 1, 2, 4, 8 Euler steps of the probability-flow ODE."""

from __future__ import annotations

from .part import Part
from .texture import position

FEW_STEPS = (1, 2, 4, 8)
TEACHER_SCALE = 2.0  # the classifier-free guidance fashion-reflow's pairs were made with (`pairs --scale`)


def few_step_setting(model) -> dict:
    """How a model is run in the few-step and straightness parts: a reflow student as it is (its pairs carry the
    teacher's guidance), every other model with the guidance the student's pairs were made with, so the two
    integrate the same map."""
    reflow = model.config.get("reflow")
    if isinstance(reflow, dict):
        return dict(guidance="none", scale=1.0)
    return dict(guidance="cfg", scale=TEACHER_SCALE) if model.config.get("null_class") is not None else dict(guidance="none")


def rows(evaluator, self_conditioning) -> list[dict]:
    """Euler with 1, 2, 4, 8 steps and DPM-Solver++(2M)-20 as the converged reference, at the model's few-step setting
    (self-conditioning as the model was trained)."""
    model, quick = evaluator.model, evaluator.config.quick
    setting = few_step_setting(model) | dict(self_condition=model.self_condition)
    steps = (1, 2) if quick else FEW_STEPS
    return ([dict(measure="few-step", sampler="ode", solver="euler", steps=n, **setting) for n in steps]
            + [dict(measure="few-step", sampler="ode", solver="dpm++2m", steps=3 if quick else 20, **setting)])


def guidance_words(row: dict) -> str:
    return "none" if row["guidance"] == "none" else f"{row['guidance']} {row['scale']:g}"


def table(results: dict) -> list[str]:
    if not results.get("few_step"):
        return []
    lines = ["", "Few steps (probability-flow ODE, the same noise for every row; issue 15's steps-vs-FID curve):",
             "", "| solver | steps | NFE | guidance | feature FID | accuracy | diversity | texture position |",
             "|---|---|---|---|---|---|---|---|"]
    return lines + [f"| {r['solver']} | {r['steps']} | {r['nfe']} | {guidance_words(r)} | {r['fid']:.2f} | "
                    f"{r['accuracy']:.3f} | {r['diversity']:.3f} | {position(r, results.get('real_data'))} |"
                    for r in results["few_step"]]


PART = Part("few_step", ("denoiser",), rows, table, help="FID against 1, 2, 4, 8 Euler steps")
