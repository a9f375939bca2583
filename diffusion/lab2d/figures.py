"""The lab's pictures, drawn with matplotlib from a LabView and returned as PIL images:

    samples_and_field   samples over the true density with a few trajectories | the field at t over p_t
    comparisons         CFG | autoguidance at the same w | the exact teacher's paths against the reflow student's
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from .view import LabView  # noqa: E402

CLASS_COLOURS = plt.get_cmap("tab10").colors
DPI = 80


def _to_pil(fig) -> Image.Image:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def _density_background(ax, view: LabView):
    """Filled contours of the exact log p_0 (the data density) over its top 8 nats."""
    log_p = view.density
    e = view.extent
    xs, ys = torch.linspace(e[0], e[1], log_p.shape[1]), torch.linspace(e[2], e[3], log_p.shape[0])
    top = float(log_p.max())
    ax.contourf(xs, ys, log_p.clamp(min=top - 8).numpy(), levels=[top - 8, top - 6, top - 4, top - 2, top],
                cmap="Greys", alpha=0.35)
    ax.set_xlim(e[0], e[1])
    ax.set_ylim(e[2], e[3])
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])


def _scatter(ax, view: LabView, samples: torch.Tensor):
    colours = [CLASS_COLOURS[int(k) % 10] for k in view.labels]
    ax.scatter(samples[:, 0], samples[:, 1], s=6, c=colours, alpha=0.8, linewidths=0)


def _paths(ax, paths: torch.Tensor, colour: str, width=1.0, style="-"):
    """paths (S + 1, P, 2): a line per point from its noise (hollow circle) to its end (dot)."""
    for p in range(paths.shape[1]):
        ax.plot(paths[:, p, 0], paths[:, p, 1], style, color=colour, linewidth=width, alpha=0.9)
        ax.plot(paths[0, p, 0], paths[0, p, 1], "o", markersize=3, markerfacecolor="none", color=colour)
        ax.plot(paths[-1, p, 0], paths[-1, p, 1], "o", markersize=3, color=colour)


def samples_and_field(view: LabView) -> Image.Image:
    r = view.request
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 5))
    _density_background(left, view)
    _scatter(left, view, view.run.samples)
    _paths(left, view.run.paths, "black", width=0.8)
    guidance = "no guidance" if r.guidance == "none" else f"{r.guidance} w = {r.scale:g}"
    left.set_title(f"{r.points} samples ({r.model}, {r.sampler}, {r.steps} steps, {guidance})\n"
                   f"over the true density; black: {view.run.paths.shape[1]} paths from noise (o)", fontsize=9)
    f = view.field
    e = f.extent
    right.imshow(f.density.numpy(), origin="lower", extent=e, cmap="Blues", aspect="equal")
    right.quiver(f.grid[:, 0], f.grid[:, 1], f.arrows[:, 0], f.arrows[:, 1], angles="xy", color="darkred", width=0.004)
    right.set_xlim(e[0], e[1])
    right.set_ylim(e[2], e[3])
    right.set_xticks([])
    right.set_yticks([])
    whose = "the mixture" if f.label is None else f"class '{view.mixture.class_names[f.label]}'"
    right.set_title(f"t = {f.t:.2f} ({r.schedule}): exact p_t of {whose} (blue);\n"
                    f"arrows {'x0_hat - x_t' if r.arrows == 'x0' else 'velocity x0_hat - eps_hat'} of the "
                    f"{'guided ' if f.label is not None else ''}model", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return _to_pil(fig)


def comparisons(view: LabView) -> Image.Image:
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 5.0))
    w = view.request.scale if view.request.guidance != "none" else 3.0
    panels = [(view.cfg.samples, f"CFG, w = {w:g}: {view.cfg_quality.outside_share:.1%} outside the support")]
    if view.autoguidance is not None:
        panels.append((view.autoguidance.samples, f"autoguidance, w = {w:g}: "
                       f"{view.autoguidance_quality.outside_share:.1%} outside"))
    for ax, (samples, title) in zip(axes, panels):
        _density_background(ax, view)
        _scatter(ax, view, samples)
        ax.set_title(title, fontsize=9)
    if view.autoguidance is None:
        axes[1].axis("off")
        axes[1].text(0.5, 0.5, "autoguidance needs a weaker model of the\nsame family: not defined for the reflow "
                     "student", ha="center", va="center", fontsize=9, transform=axes[1].transAxes)
    ax = axes[2]
    _density_background(ax, view)
    _paths(ax, view.teacher_paths, "tab:blue", width=2.5)
    _paths(ax, view.student_paths, "tab:red", width=1.0, style="--")
    s = view.straightness
    ax.set_title(f"exact teacher (blue, S = {s['teacher']:.3f}) against the reflow\nstudent (red, "
                 f"{view.request.steps} Euler steps, S = {s['student']:.4f}), same noise", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    return _to_pil(fig)
