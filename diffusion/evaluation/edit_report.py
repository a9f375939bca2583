"""Image editing measured, for docs/evaluation/editing (python -m diffusion.evaluation.edit_report [--quick] [--out FOLDER]):

    SDEdit's trade     for strengths 0.1 ... 1.0, the evaluator's probability of the target class of an edit of a
                       test image of another class, against its RMS distance to the input (Meng et al. 2022 plot
                       realism against faithfulness the same way)
    inpainting         on class-balanced test images with three masks (centre square, left half, random strokes):
                       RePaint with and without resampling; the evaluator's accuracy for the true class, the painted
                       region's RMS error against the truth, and the kept region's largest change (0: exactly kept)
    class swap         one test image inverted with its own class and decoded with each of the 10
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from ..formats.data import load_fashion_mnist, to_model_range
from ..serving.edits import EditRequest, run_edit
from ..serving.engine import ModelCache, SampleRequest
from ..formats.images import image_grid, labelled_rows, to_pil
from ..core.metrics import evaluator_outputs

STRENGTHS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
MASKS = ("centre square", "left half", "random strokes")
SWAP_IMAGE = 0  # test image 0, an ankle boot


@dataclass(frozen=True)
class ReportConfig:
    checkpoints: tuple[str, ...] = ("fashion-diffusion", "fashion-flow")
    per_class: int = 3  # test images per class for inpainting
    sdedit_per_class: int = 1  # SDEdit: for each target class, this many images of each other class
    steps: int = 20  # SDEdit and class swap: DDIM steps / ODE steps between t0 and 0
    repaint_steps: int = 25
    jump_length: int = 5
    resamplings: int = 5
    scale: float = 3.0  # classifier-free guidance, as Generate's default
    strengths: tuple[float, ...] = STRENGTHS
    classes: tuple[int, ...] = tuple(range(10))  # SDEdit's targets and inpainting's test images
    seed: int = 0


QUICK = ReportConfig(checkpoints=("fashion-diffusion",), per_class=1, sdedit_per_class=1, steps=4, repaint_steps=6,
                     jump_length=2, resamplings=2, strengths=(0.2, 0.6, 1.0), classes=(0, 5))


def class_balanced(images: torch.Tensor, labels: torch.Tensor, per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `per_class` test images of each class, in class order."""
    picked = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in range(10)])
    return images[picked], labels[picked]


def stroke_masks(count: int, size: int, seed: int) -> torch.Tensor:
    """(count, 1, size, size) masks of three random 3-pixel-wide straight strokes each (1: paint)."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(count, 1, size, size)
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    for mask in masks:
        for _ in range(3):
            (y0, x0), (y1, x1) = torch.randint(0, size, (2, 2), generator=g).tolist()
            direction = torch.tensor([y1 - y0, x1 - x0], dtype=torch.float32)
            length = float(direction.norm().clamp_min(1))
            # distance of each pixel to the segment (y0, x0) -> (y1, x1)
            along = (((ys - y0) * direction[0] + (xs - x0) * direction[1]) / length**2).clamp(0, 1)
            dy, dx = ys - (y0 + along * direction[0]), xs - (x0 + along * direction[1])
            mask[0][(dy**2 + dx**2) <= 2.25] = 1
    return masks


def mask_of(kind: str, count: int, size: int, seed: int) -> torch.Tensor:
    mask = torch.zeros(count, 1, size, size)
    if kind == "centre square":
        mask[..., size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1
    elif kind == "left half":
        mask[..., : size // 2] = 1
    else:
        mask = stroke_masks(count, size, seed)
    return mask


def rms(a: torch.Tensor, b: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image root mean square of a - b, over `where` (a 0/1 mask) if given."""
    squared = (a - b) ** 2
    if where is None:
        return squared.flatten(1).mean(1).sqrt()
    where = where.expand_as(squared)
    return ((squared * where).flatten(1).sum(1) / where.flatten(1).sum(1).clamp_min(1)).sqrt()


def sdedit_rows(cache, evaluator, name, images, labels, config: ReportConfig) -> list[dict]:
    """Per strength: mean target-class probability, target accuracy and RMS distance to the input, over every target
    class with the test images of the other classes."""
    rows = []
    for strength in config.strengths:
        probs, hits, distances = [], [], []
        for target in config.classes:
            inputs = images[labels != target]
            request = EditRequest("sdedit", SampleRequest(checkpoint=name, sampler="ddim", steps=config.steps,
                                                          class_index=target, scale=config.scale,
                                                          batch_size=len(inputs), seed=config.seed + target),
                                  strength=strength)
            edited = run_edit(cache, request, inputs).images
            p, _ = evaluator_outputs(evaluator, edited)
            probs.append(p[:, target])
            hits.append((p.argmax(1) == target).float())
            distances.append(rms(edited, inputs))
        rows.append({"checkpoint": name, "strength": strength, "target_probability": float(torch.cat(probs).mean()),
                     "target_accuracy": float(torch.cat(hits).mean()), "rms_to_input": float(torch.cat(distances).mean())})
    return rows


def inpainting_rows(cache, evaluator, name, images, labels, config: ReportConfig) -> list[dict]:
    """Per mask and method: the evaluator's accuracy for the true class, the painted region's RMS error against the
    truth, and the kept region's largest change. One request per class (its guidance class is the true one)."""
    rows = []
    size = images.shape[-1]
    for kind in MASKS:
        masks = mask_of(kind, len(images), size, config.seed)
        for method, resamplings in (("RePaint", config.resamplings), ("no resampling", 1)):
            results, started = [], time.perf_counter()
            for label in config.classes:
                chosen = labels == label
                request = EditRequest("repaint", SampleRequest(checkpoint=name, steps=config.repaint_steps,
                                                               class_index=label, scale=config.scale,
                                                               batch_size=int(chosen.sum()), seed=config.seed + label),
                                      jump_length=config.jump_length, resamplings=resamplings)
                results.append(run_edit(cache, request, images[chosen], masks[chosen]).images)
            edited = torch.cat(results)
            used = torch.cat([torch.nonzero(labels == label).flatten() for label in config.classes])
            truth, painted = images[used], masks[used]
            p, _ = evaluator_outputs(evaluator, edited)
            kept_change = ((edited - truth).abs() * (1 - painted)).flatten(1).max(1).values
            rows.append({"checkpoint": name, "mask": kind, "method": method, "resamplings": resamplings,
                         "accuracy": float((p.argmax(1) == labels[used]).float().mean()),
                         "painted_rms": float(rms(edited, truth, painted).mean()),
                         "kept_max_change": float(kept_change.max()), "seconds": time.perf_counter() - started})
    return rows


def swap_strip(cache, name, image, label: int, config: ReportConfig) -> torch.Tensor:
    """The image, then its swap to each class (the own class with guidance too)."""
    edits = []
    for target in range(10):
        request = EditRequest("swap", SampleRequest(checkpoint=name, sampler="ddim", steps=config.steps,
                                                    class_index=target, scale=config.scale, batch_size=1),
                              source_class=label)
        edits.append(run_edit(cache, request, image).images[0])
    return torch.stack([image[0], *edits])


def plot_trade(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["checkpoint"] for r in rows):
        mine = [r for r in rows if r["checkpoint"] == name]
        distance = [r["rms_to_input"] for r in mine]
        probability = [r["target_probability"] for r in mine]
        left.plot(distance, probability, "o-", label=name)
        for r in mine:
            left.annotate(f"{r['strength']:g}", (r["rms_to_input"], r["target_probability"]), fontsize=7,
                          textcoords="offset points", xytext=(4, -8))
        right.plot([r["strength"] for r in mine], probability, "o-", label=f"{name}: target probability")
        right.plot([r["strength"] for r in mine], distance, "s--", label=f"{name}: RMS to input")
    left.set_xlabel("RMS distance to the input (pixels in [-1, 1]; lower: more faithful)")
    left.set_ylabel("evaluator's probability of the target class")
    left.set_title("SDEdit: realism of the edit against faithfulness (labels: strength)")
    right.set_xlabel("strength t0")
    right.set_title("both against the strength")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def bend(rows: list[dict]) -> dict:
    """Where the trade bends: the strength after which the target probability gains least per unit of distance
    given up (the largest drop in the slope between consecutive strengths)."""
    slopes = [(b["target_probability"] - a["target_probability"]) / max(b["rms_to_input"] - a["rms_to_input"], 1e-6)
              for a, b in zip(rows, rows[1:])]
    drops = [slopes[i] - slopes[i + 1] for i in range(len(slopes) - 1)]
    at = max(range(len(drops)), key=drops.__getitem__) + 1 if drops else 0
    return rows[at]


def write_readme(out: Path, config: ReportConfig, trade: list[dict], inpainting: list[dict], swaps: list[str],
                 quick: bool) -> None:
    lines = ["# Image editing, measured", "",
             f"Written by `python -m diffusion.evaluation.edit_report{' --quick' if quick else ''}`. "
             f"CFG {config.scale:g}; seed {config.seed}.", "",
             "## Image-to-image (SDEdit): realism against faithfulness", "",
             f"{config.sdedit_per_class} test image(s) per class, each edited towards every class other than its own "
             f"(DDIM, {config.steps} steps spread "
             "between t0 and 0). The evaluator's probability of the target class measures how far the edit became "
             "that class; the RMS distance to the input how much of the input it kept.", "",
             "![SDEdit trade](sdedit-trade.png)", "",
             "| checkpoint | strength | target probability | target accuracy | RMS to input |", "|---|---|---|---|---|"]
    lines += [f"| {r['checkpoint']} | {r['strength']:g} | {r['target_probability']:.3f} | {r['target_accuracy']:.3f} | "
              f"{r['rms_to_input']:.3f} |" for r in trade]
    for name in dict.fromkeys(r["checkpoint"] for r in trade):
        mine = [r for r in trade if r["checkpoint"] == name]
        knee = bend(mine)
        lines += ["", f"**{name}: the trade bends at strength {knee['strength']:g}** (target probability "
                      f"{knee['target_probability']:.2f} at RMS {knee['rms_to_input']:.2f}): beyond it each further "
                      f"step of strength buys less of the target class per unit of the input given up."]
    lines += ["", "SSIM is not reported: no well-kept library in the chosen dependencies computes it.", "",
              "## Inpainting (RePaint)", "",
              f"{config.per_class} test images per class. RePaint with {config.repaint_steps} steps, jump length {config.jump_length} and {config.resamplings} "
              "resamplings, against the same sampler without resampling (each step's kept region replaced by the "
              "input noised to that level). Guided towards the true class.", "",
              "| checkpoint | mask | method | accuracy (true class) | painted region RMS vs truth | kept region: "
              "largest change | seconds |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['checkpoint']} | {r['mask']} | {r['method']} (r = {r['resamplings']}) | {r['accuracy']:.3f} | "
              f"{r['painted_rms']:.3f} | {r['kept_max_change']:.1e} | {r['seconds']:.0f} |" for r in inpainting]
    lines += ["", "The kept region is the input exactly after the last step (alpha = 1, sigma = 0 there): its largest "
                  "change is 0.", "", "## Class swap by inversion", ""]
    lines += [f"![class swap, {name}]({file})" for name, file in swaps]
    lines += ["", f"Test image {SWAP_IMAGE} (left), inverted with its own class by DDIM ({config.steps} steps), then "
                  f"decoded with each class in turn (T-shirt/top ... Ankle boot), CFG {config.scale:g}.", ""]
    (out / "README.md").write_text("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m diffusion.evaluation.edit_report", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few images and steps (a test of the command)")
    parser.add_argument("--out", default=None, help="output folder (default: docs/evaluation/editing; --quick: a "
                                                    "new temporary folder)")
    parser.add_argument("--checkpoints", default="checkpoints", help="the checkpoint folder")
    parser.add_argument("--models", default=None, help="comma-separated denoisers to measure (default: "
                                                       f"{', '.join(ReportConfig.checkpoints)})")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else ReportConfig()
    if args.models:
        config = replace(config, checkpoints=tuple(name.strip() for name in args.models.split(",")))
    out = Path(args.out) if args.out else (Path(tempfile.mkdtemp(prefix="edit-report-")) if args.quick
                                          else Path("docs/evaluation/editing"))
    out.mkdir(parents=True, exist_ok=True)
    cache = ModelCache(args.checkpoints)
    evaluator = cache.first_of_kind("evaluator").network
    test = load_fashion_mnist("test")
    images, labels = class_balanced(to_model_range(test.images), torch.as_tensor(test.labels), config.per_class)
    trade, inpainting, swaps = [], [], []
    few, few_labels = class_balanced(to_model_range(test.images), torch.as_tensor(test.labels), config.sdedit_per_class)
    for name in config.checkpoints:
        trade += sdedit_rows(cache, evaluator, name, few, few_labels, config)
        inpainting += inpainting_rows(cache, evaluator, name, images, labels, config)
        image = to_model_range(test.images[SWAP_IMAGE:SWAP_IMAGE + 1])
        strip = swap_strip(cache, name, image, int(test.labels[SWAP_IMAGE]), config)
        file = f"swap-{name}.png"
        labelled_rows([to_pil(image_grid(strip, columns=11), 3)], [name]).save(out / file)
        swaps.append((name, file))
        print(f"{name}: done", flush=True)
    plot_trade(trade, out / "sdedit-trade.png")
    (out / "editing.json").write_text(json.dumps({"config": asdict(config), "sdedit": trade,
                                                  "inpainting": inpainting}, indent=1))
    write_readme(out, config, trade, inpainting, swaps, args.quick)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
