"""The guidance-methods part: every method of guidance.GUIDANCE_METHODS on one scale grid, with the trade-off plot."""

from __future__ import annotations

from ..core.guidance import GUIDANCE_METHODS
from .part import Part
from .scale_table import scale_table

METHOD_SCALES = (2.0, 4.0, 7.0)  # at 1 every CFG variant is the conditional model


def available_methods(evaluator) -> set[str]:
    """The guidance methods this part compares: CFG and its variants with a null class, autoguidance with a -weak
    sibling (classifier guidance has its rows in the guidance table)."""
    methods = set()
    if evaluator.model.config.get("null_class") is not None:
        methods |= {n for n, m in GUIDANCE_METHODS.items() if m.settings["guidance"] == "cfg"}
    if f"{evaluator.config.checkpoint}-weak" in evaluator.cache.names("denoiser"):
        methods.add("autoguidance")
    return methods


def rows(evaluator, self_conditioning) -> list[dict]:
    """DDIM-50 (self-conditioning off, as the guidance table), the same noise for every point."""
    c = evaluator.config
    available = available_methods(evaluator)
    scales = (3.0,) if c.quick else METHOD_SCALES
    steps = 4 if c.quick else 50
    return [dict(measure="guidance-methods", method=name, sampler="ddim", steps=steps, **method.settings, scale=s)
            for name, method in GUIDANCE_METHODS.items() if name in available for s in scales]
    # classifier guidance is left to the guidance table: it needs scales near 8 to do anything


def table(results: dict) -> list[str]:
    if not results.get("guidance_methods"):
        return []
    return scale_table(results["guidance_methods"], "method", "method",
                       "Guidance methods (DDIM-50, self-conditioning off, the same noise for every point; each "
                       "method at its paper's suggested setting, guidance.GUIDANCE_METHODS):")


def plot(results: dict, out_dir, plt):
    """Accuracy and feature FID against scale, and FID against accuracy (the trade-off), one line per method."""
    rows = results.get("guidance_methods")
    if not rows:
        return
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted((r["scale"], r["accuracy"], r["fid"]) for r in rows if r["method"] == method)
        label = GUIDANCE_METHODS[method].label if method in GUIDANCE_METHODS else method
        axes[0].plot([p[0] for p in points], [p[1] for p in points], marker="o", label=label)
        axes[1].plot([p[0] for p in points], [p[2] for p in points], marker="o", label=label)
        axes[2].plot([p[1] for p in points], [p[2] for p in points], marker="o", label=label)
    real = results.get("real_data")
    if real:
        for ax, key in ((axes[0], "accuracy"), (axes[1], "fid"), (axes[2], "fid")):
            ax.axhline(real[key], color="0.5", linestyle="--", label="real images")
    axes[0].set(xlabel="guidance scale", title="class accuracy (evaluator)", ylim=(0, 1.02))
    axes[1].set(xlabel="guidance scale", title="feature FID (lower is better)", yscale="log")
    axes[2].set(xlabel="class accuracy", ylabel="feature FID", title="the trade-off (lower right is better)",
                yscale="log")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{results['checkpoint']}: guidance methods against scale ({results['config']['samples']} samples "
                 f"per point, DDIM-50)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / f"{results['checkpoint']}-guidance-methods.png", dpi=120)
    plt.close(fig)


PART = Part("guidance_methods", ("denoiser",), rows, table, plot=plot,
            help="accuracy, FID and diversity against scale for every guidance method, with a plot")
