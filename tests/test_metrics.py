import pytest
import torch

from diffusion.metrics import class_accuracy, frechet_distance, mean_pairwise_distance


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
    from diffusion.benchmark import forward_flops

    class Conv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 4, 3, padding=1, bias=False)

        def forward(self, x, log_snr, labels, x0_previous):
            return self.conv(x)

    x = torch.zeros(2, 1, 8, 8)
    assert forward_flops(Conv(), x, None) == 2 * 2 * 4 * 8 * 8 * 1 * 3 * 3  # 2 per multiply-add, per output tap
