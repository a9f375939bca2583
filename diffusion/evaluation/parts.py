"""The registry of evaluation parts, in the order their tables appear in a report. `evaluate --parts`, the report
writer and the model card read it, as the samplers' code reads sampling.SAMPLERS: a new part is a new module and a
line here."""

from __future__ import annotations

from . import (calibration, click_time, few_step, guidance, guidance_methods, guided_realism, likelihood, precision_recall, probes,
               quality_bar, samplers, second_evaluator, seed_spread, straightness, temperatures, texture, two_sample)
from .part import Part

PARTS: dict[str, Part] = {part.name: part for part in (
    texture.PART, samplers.PART, guidance.PART, guidance_methods.PART, few_step.PART, straightness.PART,
    seed_spread.PART, temperatures.PART, quality_bar.PART, likelihood.PART, probes.PART,
    second_evaluator.PART, precision_recall.PART, calibration.PART, two_sample.PART, guided_realism.PART,
    click_time.PART)}


def parts_of_kind(kind: str) -> list[Part]:
    """The parts a checkpoint of this kind can be evaluated by: its default ones first, then the others."""
    mine = [part for part in PARTS.values() if kind in part.kinds]
    return [p for p in mine if kind in p.defaults_for] + [p for p in mine if kind not in p.defaults_for]


def parts_help() -> str:
    """What each part measures, for `evaluate --help`."""
    defaults = {kind: [p.cli_name for p in parts_of_kind(kind) if kind in p.defaults_for]
                for kind in ("denoiser", "normalizing-flow")}
    return ("which tables to compute (default: " + "; ".join(f"{', '.join(names)} for a {kind}"
                                                            for kind, names in defaults.items()) + "). "
            + "; ".join(f"{p.cli_name}: {p.help}" for p in PARTS.values()))
