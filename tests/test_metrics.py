from pathlib import Path

import pytest
import torch

from diffusion.core.metrics import class_accuracy, frechet_distance, mean_pairwise_distance


def test_frechet_distance_matches_the_closed_form_for_gaussians():
    # N(0, I) vs N(mu, 4 I) in d dims: |mu|^2 + tr(I + 4I - 2 * 2I) = |mu|^2 + d
    g = torch.Generator().manual_seed(0)
    d, n = 8, 200_000
    mu = torch.full((d,), 0.5)
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    b = mu + 2 * torch.randn(n, d, generator=g, dtype=torch.float64)
    assert frechet_distance(a, b) == pytest.approx(float(mu.pow(2).sum()) + d, rel=0.01)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_with_correlated_covariances():
    # 2-D case with non-commuting covariances, against sqrtm computed by eigendecomposition of the product
    cov_a = torch.tensor([[2.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    cov_b = torch.tensor([[1.0, -0.3], [-0.3, 0.5]], dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(400_000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov_a).T
    b = torch.randn(400_000, 2, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov_b).T
    eigenvalues = torch.linalg.eigvals(cov_a @ cov_b)  # real, positive for a product of SPD matrices
    expected = float(torch.trace(cov_a) + torch.trace(cov_b) - 2 * eigenvalues.sqrt().real.sum())
    assert frechet_distance(a, b) == pytest.approx(expected, abs=0.01)


def test_diversity_and_accuracy():
    assert mean_pairwise_distance(torch.ones(5, 3)) == 0.0
    two = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    assert mean_pairwise_distance(two) == pytest.approx(5.0)
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert class_accuracy(probs, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)


def test_forward_flops_counts_a_convolution_exactly():
    from diffusion.evaluation.benchmark import forward_flops

    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)

        def forward(self, x, log_snr, labels, x0_previous):
            return self.conv(x)

    x = torch.zeros(2, 1, 8, 8)
    assert forward_flops(Conv(), x, None) == 2 * 2 * 4 * 8 * 8 * 1 * 3 * 3  # 2 per multiply-add, per output tap


def test_box_blur_and_texture_position_closed_forms():
    from diffusion.core.metrics import box_blur, texture_position

    constant = torch.full((2, 1, 6, 6), 0.3)
    torch.testing.assert_close(box_blur(constant), constant)
    step = torch.zeros(1, 1, 1, 6)
    step[..., 3:] = 1.0
    assert box_blur(step.expand(1, 1, 3, 6).contiguous())[0, 0, 1].tolist() == pytest.approx([0, 0, 1 / 3, 2 / 3, 1, 1])
    assert texture_position(0.01, 0.01, 1.0) == 0 and texture_position(1.0, 0.01, 1.0) == 1
    assert texture_position(0.1, 0.01, 1.0) == pytest.approx(0.5)  # halfway on the log scale


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist").exists(), reason="needs dataset-fashion-mnist")
def test_texture_distance_ranks_real_noisy_and_blurred_images():
    """With the shipped evaluator: other real images are closest to the test set, then lightly noised, then more
    noised ones, and 3x3-blurred ones are far; the penultimate-feature FID reacts to blur much less (the reason
    for the texture distance)."""
    from diffusion.formats.checkpoint import load_checkpoint
    from diffusion.formats.data import load_fashion_mnist, to_model_range
    from diffusion.core.metrics import box_blur, evaluator_outputs, frechet_distance, texture_statistics

    evaluator = load_checkpoint(Path(__file__).resolve().parents[1] / "checkpoints/fashion-evaluator.safetensors").network
    reference = to_model_range(load_fashion_mnist("test").images[:1000])
    real = to_model_range(load_fashion_mnist("train").images[:500])
    noise = torch.randn(real.shape, generator=torch.Generator().manual_seed(0))
    sets = {"real": real, "noise 0.05": (real + 0.05 * noise).clamp(-1, 1), "noise 0.1": (real + 0.1 * noise).clamp(-1, 1),
            "blurred": box_blur(real)}
    texture_ref = texture_statistics(evaluator, reference)
    texture = {k: frechet_distance(texture_statistics(evaluator, v), texture_ref) for k, v in sets.items()}
    assert texture["real"] < texture["noise 0.05"] < texture["noise 0.1"] < texture["blurred"]
    assert texture["blurred"] > 50 * texture["real"]
    features_ref = evaluator_outputs(evaluator, reference)[1]
    fid = {k: frechet_distance(evaluator_outputs(evaluator, sets[k])[1], features_ref) for k in ("real", "blurred")}
    assert texture["blurred"] / texture["real"] > 3 * fid["blurred"] / fid["real"]
