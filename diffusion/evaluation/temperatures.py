"""The temperatures part: a normalizing flow's samples at z ~ N(0, T^2 I) for several T."""

from __future__ import annotations

from .part import Part

TEMPERATURES = (0.5, 0.7, 0.85, 1.0)


def rows(evaluator, self_conditioning) -> list[dict]:
    return [dict(temperature=t) for t in (TEMPERATURES[1:] if evaluator.config.quick else TEMPERATURES)]


def table(results: dict) -> list[str]:
    if not results.get("temperatures"):
        return []
    lines = ["", "Temperature (z ~ N(0, T^2 I), one exact pass per image; T = 1 is the model's own distribution):",
             "", "| temperature | feature FID | accuracy | diversity |", "|---|---|---|---|"]
    return lines + [f"| {r['temperature']:g} | {r['fid']:.2f} | {r['accuracy']:.3f} | {r['diversity']:.3f} |"
                    for r in results["temperatures"]]


def plot(results: dict, out_dir, plt):
    """Accuracy, diversity and feature FID against a normalizing flow's sampling temperature."""
    rows = results.get("temperatures")
    if not rows:
        return
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    real = results.get("real_data")
    for ax, (key, title) in zip(axes, [("accuracy", "class accuracy (evaluator)"),
                                       ("diversity", "diversity (within-class feature distance)"),
                                       ("fid", "feature FID (lower is better)")]):
        ax.plot([r["temperature"] for r in rows], [r[key] for r in rows], marker="o", label="samples")
        if real:
            ax.axhline(real[key], color="0.5", linestyle="--", label="real images")
        ax.set(xlabel="temperature T", title=title)
    axes[0].set_ylim(0, 1.02)
    axes[2].set_yscale("log")
    axes[0].legend()
    fig.suptitle(f"{results['checkpoint']}: what the temperature does ({results['config']['samples']} samples per point)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out_dir / f"{results['checkpoint']}-temperature.png", dpi=120)
    plt.close(fig)


PART = Part("temperatures", ("normalizing-flow",), rows, table, defaults_for=("normalizing-flow",), plot=plot,
            help="a normalizing flow's FID, accuracy and diversity against temperature")
