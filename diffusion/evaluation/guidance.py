"""The guidance part: classifier-free (and classifier) guidance against scale, DDIM-50."""

from __future__ import annotations

from .part import Part
from .scale_table import scale_table


def guidance_grid(quick: bool, has_classifier: bool) -> list[dict]:
    scales = (0.0, 3.0) if quick else (0.0, 1.0, 2.0, 3.0, 5.0, 8.0)
    modes = ["cfg"] + (["classifier"] if has_classifier else [])
    return [dict(guidance=mode, scale=s) for mode in modes for s in scales]


def rows(evaluator, self_conditioning) -> list[dict]:
    c = evaluator.config
    return [dict(sampler="ddim", steps=4 if c.quick else 50, **row)
            for row in guidance_grid(c.quick, bool(evaluator.cache.names("noisy-classifier")))]


def table(results: dict) -> list[str]:
    if not results.get("guidance"):
        return []
    return scale_table(results["guidance"], "mode", "guidance",
                       "Guidance (DDIM, self-conditioning off; scale 0 is the unconditional model, "
                       "classifier-free scale 1 the conditional one):")


def plot(results: dict, out_dir, plt):
    """Accuracy, diversity and feature FID against guidance scale, one line per guidance mode."""
    from matplotlib.ticker import FormatStrFormatter

    if not results.get("guidance"):
        return
    name = results["checkpoint"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    metrics = [("accuracy", "class accuracy (evaluator)"), ("diversity", "diversity (within-class feature distance)"),
               ("fid", "feature FID (lower is better)")]
    labels = {"cfg": "classifier-free", "classifier": "classifier"}
    for mode in sorted({r["guidance"] for r in results["guidance"]}):
        rows = [r for r in results["guidance"] if r["guidance"] == mode]
        for ax, (key, _) in zip(axes, metrics):
            ax.plot([r["scale"] for r in rows], [r[key] for r in rows], marker="o", label=labels.get(mode, mode))
    real = results.get("real_data")
    for ax, (key, title) in zip(axes, metrics):
        if real:
            ax.axhline(real[key], color="0.5", linestyle="--", label="real images")
        ax.set(xlabel="guidance scale", title=title)
    axes[0].set_ylim(0, 1.02)
    axes[2].set_yscale("log")
    for set_formatter in (axes[2].yaxis.set_major_formatter, axes[2].yaxis.set_minor_formatter):
        set_formatter(FormatStrFormatter("%.1f"))
    axes[0].legend()
    fig.suptitle(f"{name}: what the guidance scale does ({results['config']['samples']} samples per point; "
                 f"scale 0 = unconditional)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / f"{name}-guidance.png", dpi=120)
    plt.close(fig)


PART = Part("guidance", ("denoiser",), rows, table, defaults_for=("denoiser",), plot=plot,
            help="feature FID, accuracy and diversity against the guidance scale")
