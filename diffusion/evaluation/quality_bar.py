"""The quality bar: one row at the setting the README quotes (a denoiser's DDIM-50 with CFG 3; a flow at T = 1)."""

from __future__ import annotations

from .part import Part


def rows(evaluator, self_conditioning) -> list[dict]:
    if evaluator.kind == "normalizing-flow":
        return [dict(temperature=1.0)]
    return [dict(sampler="ddim", steps=4 if evaluator.config.quick else 50, guidance="cfg", scale=3.0,
                 self_condition=evaluator.model.self_condition)]


def table(results: dict) -> list[str]:
    q = results.get("quality_bar")
    if not q:
        return []
    if "temperature" in q:
        return ["", f"Quality bar (temperature {q['temperature']:g}, {q['samples']} samples): evaluator accuracy "
                    f"{q['accuracy']:.3f}, feature FID {q['fid']:.2f}, diversity {q['diversity']:.3f}."]
    return ["", f"Quality bar (DDIM-50, classifier-free guidance 3, self-conditioning "
                f"{'on' if q['self_condition'] else 'off'}, {q['samples']} samples): evaluator accuracy "
                f"{q['accuracy']:.3f}, feature FID {q['fid']:.2f}, diversity {q['diversity']:.3f}."]


PART = Part("quality_bar", ("denoiser", "normalizing-flow"), rows, table, defaults_for=("normalizing-flow",),
            one_row=True, help="one row at the README's setting (DDIM-50 with CFG 3; a flow at T = 1)")
