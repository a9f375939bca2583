"""The report of an evaluation run: the JSON, a Markdown page of every part's table and every part's plot."""

from __future__ import annotations

import json
from pathlib import Path

from ..formats.outputs import atomic_write
from .parts import PARTS
from .texture import references


def markdown_tables(results: dict) -> str:
    lines = [f"### {results['checkpoint']} ({results['config']['samples']} samples per row, "
             f"{results['config']['reference']} test images as reference, {results['device']}, torch {results['torch']}, "
             f"{results['date']})"]
    if "real_data" in results:
        r = results["real_data"]
        lines += ["", f"Real training images, {r['samples']} per draw (class-balanced), {r['draws']} draws: feature FID "
                      f"{r['fid']:.2f} ± {r['fid_std']:.2f}, accuracy {r['accuracy']:.3f}, diversity {r['diversity']:.3f}. "
                      f"This is the score of a perfect sampler at this sample count: FID differences within about "
                      f"twice that spread are noise."]
    lines += references(results)
    for part in PARTS.values():
        lines += part.table(results)
    return "\n".join(lines) + "\n"


def write_report(results: dict, out_dir: Path, parts=None):
    """The JSON and the tables of every part; the plots of `parts` (names; None: all), the parts whose rows this run
    may have changed: a part not run keeps its rows, so its plot from the run that made them still holds."""
    out_dir.mkdir(parents=True, exist_ok=True)
    name = results["checkpoint"]
    atomic_write(out_dir / f"{name}.json", lambda tmp: Path(tmp).write_text(json.dumps(results, indent=2)))
    (out_dir / f"{name}.md").write_text(markdown_tables(results))
    plot_results(results, out_dir, parts)


def plot_results(results: dict, out_dir: Path, parts=None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for part in PARTS.values():
        if part.plot is not None and (parts is None or part.name in parts):
            part.plot(results, out_dir, plt)
