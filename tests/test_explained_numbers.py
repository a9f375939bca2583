"""Numbers a student can read (issue 37, item 10): sharpness on closed forms, the few-step table's accuracy and
sharpness beside the confidence, the 2-D lab's reading of its distance, support and S, and the sweep's w = 0."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from diffusion.core.metrics import box_blur, sharpness


def test_sharpness_on_closed_forms():
    assert sharpness(torch.zeros(2, 1, 8, 8) + 0.3) == 0.0  # a constant image has no detail
    impulse = torch.zeros(1, 1, 8, 8)
    impulse[0, 0, 4, 4] = 1.0  # Laplacian: 4 at the centre, -1 at its four neighbours
    assert sharpness(impulse) == pytest.approx(8 / 64)
    noise = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert sharpness(box_blur(noise)) < 0.5 * sharpness(noise)  # a blur removes detail


def test_the_few_step_cell_shows_accuracy_and_sharpness_beside_confidence():
    from diffusion.app.compare import few_step_cell

    cell = SimpleNamespace(result=SimpleNamespace(nfe=1, seconds=0.25), confidence=0.99, accuracy=0.75,
                           sharpness=0.041)
    assert few_step_cell(cell) == "NFE 1, 0.25 s, accuracy 0.75, confidence 0.99, sharpness 0.041"
    cell.confidence = cell.accuracy = None
    assert few_step_cell(cell) == "NFE 1, 0.25 s, sharpness 0.041"


def test_the_lab_caption_explains_its_numbers_and_the_autoguidance_surprise():
    from diffusion.app.lab2d import caption
    from diffusion.lab2d.metrics import SampleQuality

    def view(model, auto_outside):
        return SimpleNamespace(notes=[], quality=SampleQuality(0.05, 0.03, 0.1),
                               cfg_quality=SampleQuality(0.06, 0.03, 0.366),
                               autoguidance_quality=SampleQuality(0.07, 0.03, auto_outside),
                               request=SimpleNamespace(model=model))

    text = caption(view("mlp", 0.546))
    for words in ("lower is better", "noise floor", "1.7x the noise floor", "S** measures how much the sampling paths "
                  "bend", "autoguidance puts more samples outside their class (54.6%) than CFG (36.6%)"):
        assert words in text
    assert "autoguidance puts more" not in caption(view("exact", 0.0))


def test_the_sweep_says_what_w_0_means_for_apg():
    from diffusion.app.sweep import SWEEP_TEXT

    assert "`w = 0` ignores the class" in SWEEP_TEXT and "its `w = 0` row still shows the class" in SWEEP_TEXT
