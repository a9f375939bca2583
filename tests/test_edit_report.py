"""python -m diffusion.evaluation.edit_report: its measures on closed forms, and its --quick run on tiny 28 px models."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from conftest import write_tiny_checkpoints

from diffusion.formats.data import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR
from diffusion.evaluation.edit_report import bend, mask_of, main, rms, stroke_masks


def test_rms_over_a_region_is_the_closed_form():
    a, b = torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    b[0, 0, 0, :2] = 3.0  # two pixels off by 3 in image 0
    where = torch.zeros(2, 1, 4, 4)
    where[..., 0, :] = 1  # the first row: 4 pixels
    assert torch.allclose(rms(a, b), torch.tensor([(18 / 16) ** 0.5, 0.0]))
    assert torch.allclose(rms(a, b, where), torch.tensor([(18 / 4) ** 0.5, 0.0]))


def test_masks_are_binary_and_paint_what_they_say():
    strokes = stroke_masks(5, 28, seed=1)
    assert strokes.shape == (5, 1, 28, 28) and set(strokes.unique().tolist()) == {0.0, 1.0}
    assert bool((strokes.flatten(1).sum(1) > 0).all()) and not torch.equal(strokes[0], strokes[1])
    assert torch.equal(stroke_masks(5, 28, seed=1), strokes)
    assert float(mask_of("left half", 1, 28, 0)[..., :14].mean()) == 1 and float(mask_of("left half", 1, 28, 0)[..., 14:].sum()) == 0
    assert float(mask_of("centre square", 1, 28, 0).sum()) == 14 * 14


def test_the_bend_is_where_the_slope_drops_most():
    rows = [{"strength": s, "rms_to_input": d, "target_probability": p}
            for s, d, p in [(0.2, 0.1, 0.05), (0.4, 0.2, 0.5), (0.6, 0.3, 0.9), (0.8, 0.5, 0.95), (1.0, 0.9, 0.97)]]
    assert bend(rows)["strength"] == 0.6  # slopes 4.5, 4.0, 0.25, 0.05: the largest drop after 0.6


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(),
                    reason="needs Debian's dataset-fashion-mnist (CI installs it)")
def test_quick_report_runs_on_tiny_models(tmp_path):
    folder = write_tiny_checkpoints(tmp_path / "checkpoints", image_size=28, class_names=FASHION_MNIST_CLASSES)
    main(["--quick", "--out", str(tmp_path / "report"), "--checkpoints", str(folder), "--models", "tiny"])
    report = json.loads((tmp_path / "report" / "editing.json").read_text())
    assert [row["strength"] for row in report["sdedit"]] == [0.2, 0.6, 1.0]
    distances = [row["rms_to_input"] for row in report["sdedit"][:3]]
    assert distances == sorted(distances)  # more strength, less of the input
    assert len(report["inpainting"]) == 3 * 2  # masks x (RePaint, no resampling)
    assert all(row["kept_max_change"] == 0 for row in report["inpainting"])
    readme = (tmp_path / "report" / "README.md").read_text()
    assert "the trade bends at strength" in readme and "swap-tiny.png" in readme
    for name in ("sdedit-trade.png", "swap-tiny.png"):
        assert (tmp_path / "report" / name).stat().st_size > 200
    strip = np.asarray(Image.open(tmp_path / "report" / "swap-tiny.png").convert("L"), dtype=np.float32)
    assert strip.min() < 100  # the images are drawn (a grid of uint8 read as [-1, 1] images came out white)
