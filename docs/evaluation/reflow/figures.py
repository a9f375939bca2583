"""Issue 15's figures from `evaluate --parts few-step straightness` of the teacher, the student and the diffusion model.

    python docs/evaluation/reflow/figures.py docs/evaluation/reflow

Reads NAME.json (few-step part) and straightness/NAME.json for fashion-flow, fashion-reflow and fashion-diffusion in
that folder and writes
    steps.png         feature FID and accuracy against Euler steps (1, 2, 4, 8), DPM-Solver++(2M)-20 as dashed lines
    straightness.png  rms of v - (z - x) along the path against flow time, one curve per model and guidance
    side-by-side.png  teacher (CFG 2) and student on the same noise at 1, 2, 4, 8 Euler steps (the app's Compare view)
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from diffusion.serving.engine import ModelCache, SampleRequest  # noqa: E402
from diffusion.serving.xy import few_step_plan, grid_picture, run_grid  # noqa: E402

MODELS = {"fashion-flow": "teacher (fashion-flow)", "fashion-reflow": "student (fashion-reflow)",
          "fashion-diffusion": "fashion-diffusion"}


def load(folder: Path) -> dict:
    """NAME.json of the few-step part (1,000 samples) with the straightness rows of straightness/NAME.json (200 paths)."""
    results = {}
    for name in MODELS:
        for path, part in ((folder / f"{name}.json", "few_step"), (folder / "straightness" / f"{name}.json", "straightness")):
            if path.exists():
                results.setdefault(name, {})[part] = json.loads(path.read_text()).get(part)
    return results


def steps_figure(results: dict, path: Path):
    fig, (fid_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for (name, label), colour in zip(MODELS.items(), ("tab:blue", "tab:orange", "tab:green")):
        rows = results.get(name, {}).get("few_step") or []
        euler = [r for r in rows if r["solver"] == "euler"]
        reference = [r for r in rows if r["solver"] != "euler"]
        guidance = f", CFG {euler[0]['scale']:g}" if euler and euler[0]["guidance"] == "cfg" else ""
        if euler:
            fid_ax.plot([r["steps"] for r in euler], [r["fid"] for r in euler], "o-", color=colour, label=label + guidance)
            acc_ax.plot([r["steps"] for r in euler], [r["accuracy"] for r in euler], "o-", color=colour, label=label + guidance)
        for r in reference:
            fid_ax.axhline(r["fid"], color=colour, ls="--", lw=1)
            acc_ax.axhline(r["accuracy"], color=colour, ls="--", lw=1)
    for ax, what in ((fid_ax, "feature FID (lower is better)"), (acc_ax, "evaluator accuracy")):
        ax.set_xscale("log", base=2)
        ax.set_xticks([1, 2, 4, 8], ["1", "2", "4", "8"])
        ax.set_xlabel("Euler steps of the probability-flow ODE")
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    fid_ax.set_yscale("log")
    acc_ax.axhline(0.9, color="grey", lw=0.8, ls=":")
    acc_ax.legend(fontsize=8, title="dashed: DPM-Solver++(2M)-20", title_fontsize=8)
    fig.suptitle("Few steps: 1,000 class-balanced samples per point, the same noise for every model")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def straightness_figure(results: dict, path: Path):
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (name, label), colour in zip(MODELS.items(), ("tab:blue", "tab:orange", "tab:green")):
        for r in results.get(name, {}).get("straightness") or []:
            guided = r["guidance"] != "none"
            ax.plot(r["flow_time"], r["deviation"], "-" if guided or name == "fashion-reflow" else ":", color=colour,
                    label=f"{label}{', CFG ' + format(r['scale'], 'g') if guided else ', no guidance'}: S = {r['straightness']:.3f}")
    ax.set_xlabel("flow time s (1 = noise, 0 = image)")
    ax.set_ylabel("rms over pixels of v - (z - x)")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("How far each step's velocity is from the straight line (DDIM-50 paths)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def side_by_side(folder: Path, checkpoint_dir="checkpoints"):
    cache = ModelCache(checkpoint_dir, device="cpu")
    rows = []
    for class_index in (0, 5, 7):  # a T-shirt, a sandal, a sneaker
        base = SampleRequest(checkpoint="fashion-reflow", class_index=class_index, batch_size=4, seed=0)
        plan = few_step_plan(cache, "fashion-reflow", "1, 2, 4, 8", base)
        rows.append(grid_picture(plan, run_grid(cache, plan), columns=4))
    from PIL import Image

    picture = Image.new("RGB", (max(r.width for r in rows), sum(r.height for r in rows)), "white")
    top = 0
    for row in rows:
        picture.paste(row, (0, top))
        top += row.height
    picture.save(folder / "side-by-side.png")


def main(folder: str):
    folder = Path(folder)
    results = load(folder)
    steps_figure(results, folder / "steps.png")
    straightness_figure(results, folder / "straightness.png")
    side_by_side(folder)


if __name__ == "__main__":
    main(sys.argv[1])
