"""The two-sample judge (Lopez-Paz & Oquab 2017) and its calibration suite: near 0.5 on one distribution, near 1.0 on
an easy shift, early stopping read on the validation part, the suite's rows judged on the run's stated split."""

from pathlib import Path

import pytest
import torch

from diffusion.evaluation.calibration import (ALTERATIONS, CalibrationConfig, altered, bars_met, calibration_suite,
                                              quantized, shifted_one_pixel)
from diffusion.evaluation.judge import (Split, TwoSampleConfig, judge_network, split_sets, train_with_early_stopping,
                                        two_sample_accuracy)
from diffusion.formats.data import to_model_range

TINY = TwoSampleConfig(epochs=30, patience=4, batch_size=32, lr=3e-3, widths=(4, 8), hidden=16)


def blobs(n: int, seed: int, brightness: float = 0.0) -> torch.Tensor:
    """(n, 1, 8, 8) smooth random images around a mean brightness."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 1, 8, 8, generator=generator) * 0.3 + brightness).clamp(-1, 1)


def test_the_split_holds_out_a_fifth_and_validates_on_a_fifth_of_the_rest():
    a, b = torch.arange(50.0).view(50, 1, 1, 1), 100 + torch.arange(50.0).view(50, 1, 1, 1)
    split = split_sets(a, b, TwoSampleConfig(), torch.Generator().manual_seed(0))
    sizes = [len(images) for images, _ in (split.train, split.validation, split.held_out)]
    assert sizes == [64, 16, 20]  # of each set: 10 held out, 8 of the other 40 for validation, 32 to train
    values = [set(images.flatten().tolist()) for images, _ in (split.train, split.validation, split.held_out)]
    assert not (values[0] & values[1] or values[0] & values[2] or values[1] & values[2])
    assert set().union(*values) == set(range(50)) | set(range(100, 150))
    for images, labels in (split.train, split.validation, split.held_out):
        assert torch.equal(labels, (images.flatten() >= 100).float())  # set B is label 1
    # the held-out part is the one the first judge held out: the last fifth of each set's permutation
    generator = torch.Generator().manual_seed(0)
    first = torch.randperm(50, generator=generator)[40:]
    assert sorted(split.held_out[0][:10].flatten().tolist()) == sorted(first.float().tolist())


def test_one_distribution_on_both_sides_stays_near_a_coin_toss():
    accuracies = [two_sample_accuracy(blobs(150, 0), blobs(150, 1), TINY, seed).accuracy for seed in range(3)]
    assert all(0.35 <= a <= 0.65 for a in accuracies) and 0.4 <= sum(accuracies) / 3 <= 0.6  # 60 held out each


def test_an_easy_shift_is_told_apart_almost_always():
    result = two_sample_accuracy(blobs(150, 0), blobs(150, 1, brightness=0.3), TINY, seed=0)
    assert result.accuracy >= 0.95 and (result.held_out, result.validated_on, result.trained_on) == (60, 48, 192)
    assert result == two_sample_accuracy(blobs(150, 0), blobs(150, 1, brightness=0.3), TINY, seed=0)  # seeded


def test_early_stopping_reads_the_validation_loss_and_keeps_the_best_epochs_weights():
    """Validation labels opposite to the training labels: every epoch of training makes the validation loss worse,
    so the best epoch is the first, training stops `patience` epochs later, and the judge holds epoch 1's weights."""
    train = (torch.cat([blobs(64, 0), blobs(64, 1, brightness=0.5)]), torch.cat([torch.zeros(64), torch.ones(64)]))
    validation = (torch.cat([blobs(16, 2), blobs(16, 3, brightness=0.5)]), torch.cat([torch.ones(16), torch.zeros(16)]))
    split = Split(train=train, validation=validation, held_out=validation)

    def fresh():
        torch.manual_seed(0)
        return judge_network(1, 8, TINY)

    judge = fresh()
    best_epoch, losses = train_with_early_stopping(judge, split, TINY, torch.Generator().manual_seed(0))
    assert best_epoch == 1 and len(losses) == 1 + TINY.patience < TINY.epochs
    assert losses[0] == min(losses) and losses[-1] > losses[0] + 0.05
    once = fresh()
    train_with_early_stopping(once, split, TwoSampleConfig(**{**TINY.__dict__, "epochs": 1}),
                              torch.Generator().manual_seed(0))
    assert all(torch.equal(p, q) for p, q in zip(judge.state_dict().values(), once.state_dict().values()))


def test_the_judge_flattens_its_features_or_averages_them():
    flat = judge_network(1, 28, TwoSampleConfig())
    assert [type(m).__name__ for m in flat] == ["Conv2d", "ReLU", "MaxPool2d"] * 3 + ["Flatten", "Linear", "ReLU",
                                                                                     "Dropout", "Linear"]
    assert [m.out_channels for m in flat if isinstance(m, torch.nn.Conv2d)] == [32, 64, 128]
    assert (flat[10].in_features, flat[10].out_features) == (128 * 3 * 3, 128)  # 28 -> 14 -> 7 -> 3 px
    pooled = judge_network(1, 28, TwoSampleConfig(widths=(16, 32), hidden=0))
    assert type(pooled[6]).__name__ == "AdaptiveAvgPool2d" and pooled[-1].in_features == 32
    assert flat(torch.zeros(3, 1, 28, 28)).shape == pooled(torch.zeros(3, 1, 28, 28)).shape == (3, 1)


def test_the_alterations_and_8_bit_quantization():
    real = to_model_range(torch.randint(0, 256, (4, 1, 6, 6), generator=torch.Generator().manual_seed(0)).to(torch.uint8))
    assert torch.equal(quantized(real), real)  # real images are 8-bit already: quantizing changes nothing
    noisy = altered(real, "noise-0.05", eight_bit=False, noise_seed=1)
    assert torch.equal(noisy, altered(real, "noise-0.05", eight_bit=False, noise_seed=1))
    assert 0.03 < float((noisy - real).std()) < 0.06 and not torch.equal(quantized(noisy), noisy)
    levels = (altered(real, "noise-0.05", eight_bit=True, noise_seed=1) + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-4)  # on the 256 levels
    shifted = shifted_one_pixel(real, torch.Generator())
    assert torch.equal(shifted[..., 1:], real[..., :-1]) and (shifted[..., 0] == -1).all()
    assert torch.equal(quantized(shifted), shifted)  # so the shift's 8-bit row judges the very same images
    blurred = altered(real, "blur", eight_bit=False, noise_seed=1)
    assert not torch.equal(quantized(blurred), blurred)  # a 3x3 mean falls between the 256 levels


def test_the_suite_judges_every_alteration_and_reports_its_bars():
    real, reference = blobs(100, 0), blobs(100, 1)
    config = CalibrationConfig(judge=TINY, seeds=(0, 1), alterations=("real", "noise-0.05"))
    rows = calibration_suite(real, reference, config)
    assert [(r.alteration, r.eight_bit) for r in rows] == [("real", False), ("real", True), ("noise-0.05", False),
                                                           ("noise-0.05", True)]
    assert rows[0].accuracies == tuple(two_sample_accuracy(real, reference, TINY, s).accuracy for s in (0, 1))
    assert rows[0].spread == pytest.approx(abs(rows[0].accuracies[0] - rows[0].accuracies[1]) / 2 ** 0.5)
    assert set(bars_met(rows)) == {"real", "noise-0.05"} and list(ALTERATIONS)[:2] == ["real", "noise-0.05"]
    assert bars_met(rows)["real"] == all(r.mean <= 0.53 for r in rows[:2]) and bars_met(rows[:2]) == {
        "real": bars_met(rows)["real"]}


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION.exists(), reason="needs Debian's dataset-fashion-mnist (CI installs it)")
def test_the_calibration_part_judges_the_runs_own_split_and_seeds(tmp_path):
    """`evaluate --quick --parts judge-calibration`: every row, float and 8-bit, judged as the two-sample rows are
    (the run's comparison images against its held-out reference images, judge seeds from the run's seed)."""
    from conftest import write_tiny_checkpoints
    from diffusion.evaluation import EvalConfig, Evaluator
    from diffusion.evaluation.judge import QUICK_JUDGE

    folder = write_tiny_checkpoints(tmp_path / "ckpt", image_size=28, class_names=tuple(f"c{i}" for i in range(10)))
    config = EvalConfig(checkpoint="tiny", checkpoint_dir=str(folder), out_dir=str(tmp_path / "eval"), quick=True,
                        seed=3)
    evaluator = Evaluator(config)
    rows = evaluator.run(parts=("judge-calibration",))["judge_calibration"]
    assert [(r["alteration"], r["eight_bit"]) for r in rows] == [(n, e) for n in ALTERATIONS for e in (False, True)]
    split = evaluator.real_split
    reference = altered(split.images(split.reference_indices), "noise-0.05", eight_bit=True, noise_seed=4)
    expected = [two_sample_accuracy(split.comparison.images, reference, QUICK_JUDGE, seed).accuracy for seed in (3, 4)]
    assert rows[3]["two_sample_judges"] == expected and rows[3]["samples"] == 20
    assert rows[0]["two_sample_judges"] == rows[1]["two_sample_judges"]  # real images are 8-bit already
    table = (tmp_path / "eval" / "tiny.md").read_text()
    assert "| real + N(0, 0.05²) |" in table and "| real, shifted one pixel right |" in table
    assert "The judge's bars (means, floats and 8-bit): real against real <= 0.53: " in table
