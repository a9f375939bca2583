"""What the model card quotes: each part's summary of the runs recorded for exactly this checkpoint file."""

from __future__ import annotations

from pathlib import Path

from .likelihood import recorded_results
from .parts import PARTS


def recorded_summaries(model, evaluation_dir: Path) -> list[tuple[str, str]]:
    """(title, sentence) per part with a summary, from the first run recorded for this file (by SHA-256) in
    evaluation_dir or one of its subfolders that has rows of that part."""
    folders = [Path(evaluation_dir)] + sorted(p for p in Path(evaluation_dir).glob("*") if p.is_dir())
    runs = [results for folder in folders if (results := recorded_results(model, folder))]
    summaries = []
    for part in PARTS.values():
        if part.summary is not None:
            text = next((sentence for results in runs if (sentence := part.summary(results))), "")
            if text:
                summaries.append((part.title, text))
    return summaries
