"""Precision / recall in feature space (Kynkaanniemi et al. 2019) against hand-computed cases, the classifier
two-sample test at its two ends, and the second evaluator's per-image shifts."""

import pytest
import torch

from diffusion.core.metrics import knn_radii, manifold_coverage, precision_recall
from diffusion.training.tasks import random_shifts
from diffusion.evaluation.judge import TwoSampleConfig, two_sample_accuracy


def points(*values):
    return torch.tensor(values, dtype=torch.float64)[:, None]  # (N, 1): features on a line


def test_knn_radii_on_a_line():
    line = points(0, 1, 3, 6, 10)
    assert knn_radii(line, k=1).tolist() == [1, 1, 2, 3, 4]
    # k = 3: 0 -> (1, 3, 6); 1 -> (1, 2, 5); 3 -> (2, 3, 3); 6 -> (3, 4, 5); 10 -> (4, 7, 9)
    assert knn_radii(line, k=3).tolist() == [6, 5, 3, 5, 9]


def test_manifold_coverage_counts_queries_inside_any_ball_border_included():
    support, radii = points(0, 10), torch.tensor([1.0, 2.0])
    assert manifold_coverage(points(0.5, 1.5, 11.9, 12.1), support, radii) == 0.5
    assert manifold_coverage(points(1.0, 12.0), support, radii) == 1.0  # |q - s| = r is inside


def test_precision_recall_of_a_collapsed_generator():
    """Generated images from one of two real modes: all of them look real (precision 1), half of the real images
    have no generated neighbour (recall 0.5)."""
    real = points(0, 1, 2, 3, 100, 101, 102, 103)
    generated = points(0.5, 1, 1.5, 2.5)
    # generated radii, k = 3: 0.5 -> 2, 1 -> 1.5, 1.5 -> 1, 2.5 -> 2: real 0..3 are covered, 100..103 are not
    assert precision_recall(generated, real, k=3) == (1.0, 0.5)
    assert precision_recall(real, real, k=3) == (1.0, 1.0)
    assert precision_recall(real + 1000, real, k=3) == (0.0, 0.0)


def test_two_sample_accuracy_at_its_two_ends():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(60, 1, 8, 8, generator=generator) * 0.1 - 0.5
    b = torch.randn(60, 1, 8, 8, generator=generator) * 0.1 + 0.5
    config = TwoSampleConfig(epochs=20, batch_size=16, lr=3e-3, widths=(4, 8), hidden=16)
    separable = two_sample_accuracy(a, b, config, seed=0)
    assert separable.accuracy == 1.0 and separable.stderr == 0.0
    assert (separable.held_out, separable.validated_on, separable.trained_on) == (24, 20, 76)  # 20 % held out, 20 % of the rest validates
    same = two_sample_accuracy(a, a.clone(), config, seed=0)  # the same images on both sides: a coin toss
    assert 0.25 <= same.accuracy <= 0.75
    assert same.stderr == pytest.approx((same.accuracy * (1 - same.accuracy) / 24) ** 0.5)
    assert two_sample_accuracy(a, b[:, :, :, :], config, seed=0) == separable  # a function of its inputs and seed


def test_random_shifts_move_each_image_by_its_own_offset():
    torch.manual_seed(0)
    images = torch.zeros(64, 1, 9, 9)
    images[:, 0, 4, 4] = 1.0  # one bright pixel in the middle
    shifted = random_shifts(images, pad=2)
    assert shifted.shape == images.shape and (shifted.sum(dim=(1, 2, 3)) == 1).all()
    where = shifted[:, 0].flatten(1).argmax(1)
    rows, cols = where // 9, where % 9
    assert rows.min() >= 2 and rows.max() <= 6 and cols.min() >= 2 and cols.max() <= 6
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # not one offset for the whole batch
