import pytest
import torch

from diffusion.core.objective import q_sample
from diffusion.core.parameterization import PARAMETERIZATIONS, to_x0_eps, training_target
from diffusion.core.schedules import Schedule


@pytest.mark.parametrize("name", PARAMETERIZATIONS)
@pytest.mark.parametrize("alpha, sigma", [(0.9, 0.2), (0.6, 0.8), (0.3, 0.7), (1e-3, 1.0)])
def test_conversion_inverts_the_target(name, alpha, sigma):
    generator = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 4, 4, generator=generator, dtype=torch.float64)
    x_t = alpha * x0 + sigma * eps
    x0_hat, eps_hat = to_x0_eps(name, training_target(name, x0, eps, alpha, sigma), x_t, alpha, sigma)
    torch.testing.assert_close(x0_hat, x0, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(eps_hat, eps, atol=1e-9, rtol=1e-9)


def test_v_and_flow_are_finite_at_pure_noise():
    x_t, prediction = torch.randn(2, 5, dtype=torch.float64)
    for name in ("v", "flow"):
        x0_hat, eps_hat = to_x0_eps(name, prediction, x_t, 0.0, 1.0)
        assert torch.isfinite(x0_hat).all()
        torch.testing.assert_close(eps_hat, x_t)  # at alpha = 0 the noise is x_t itself


@pytest.mark.parametrize("schedule", ["vp-cosine", "flow"])
def test_q_sample_mean_and_variance(schedule):
    generator = torch.Generator().manual_seed(1)
    x0 = torch.full((200_000, 1, 1, 1), 0.7)
    t = torch.full((200_000,), 0.4)
    x_t, alpha, sigma = q_sample(Schedule(schedule), x0, t, torch.randn(x0.shape, generator=generator))
    a, s = (float(v) for v in Schedule(schedule).alpha_sigma(torch.tensor(0.4)))
    assert float(x_t.mean()) == pytest.approx(a * 0.7, abs=4 * s / 200_000**0.5)
    assert float(x_t.std()) == pytest.approx(s, rel=0.01)
