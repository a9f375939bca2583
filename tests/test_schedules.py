import math

import pytest
import torch

from diffusion.core.schedules import SCHEDULES, Schedule, time_grid

T = torch.linspace(0, 1, 101, dtype=torch.float64)


@pytest.mark.parametrize("name", ["vp-cosine", "vp-linear"])
def test_variance_preserving(name):
    alpha, sigma = Schedule(name).alpha_sigma(T)
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(T), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", SCHEDULES)
def test_endpoints_and_monotone_log_snr(name):
    schedule = Schedule(name)
    alpha, sigma = schedule.alpha_sigma(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert float(alpha[0]) == 1.0 and float(sigma[0]) == 0.0  # t = 0 is exactly data
    assert float(sigma[1]) == pytest.approx(1.0, abs=1e-4)
    lam = schedule.log_snr(T[1:])
    assert torch.all(lam[1:] < lam[:-1])


@pytest.mark.parametrize("name", SCHEDULES)
def test_t_from_log_snr_inverts_log_snr(name):
    schedule = Schedule(name)
    t = torch.linspace(0.001, 0.999, 57, dtype=torch.float64)
    torch.testing.assert_close(schedule.t_from_log_snr(schedule.log_snr(t)), t, atol=1e-9, rtol=0)


def test_flow_and_cosine_closed_forms():
    alpha, sigma = Schedule("flow").alpha_sigma(T)
    torch.testing.assert_close(alpha, 1 - T)
    torch.testing.assert_close(sigma, T)
    alpha, _ = Schedule("vp-cosine").alpha_sigma(torch.tensor(0.5, dtype=torch.float64))
    max_angle = math.atan(math.exp(7.5))
    assert float(alpha) == pytest.approx(math.cos(0.5 * max_angle), abs=1e-15)
    assert float(Schedule("vp-cosine").log_snr(torch.tensor(1.0))) == pytest.approx(-15.0, abs=1e-9)


def test_linear_schedule_is_ddpm_at_its_timesteps():
    # DDPM: alphabar_k = prod_{i<=k} (1 - beta_i), beta linear 1e-4..0.02; our t = (k + 1) / 1000.
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    alpha, _ = Schedule("vp-linear").alpha_sigma(t)
    torch.testing.assert_close(alpha**2, alphas_cumprod, atol=1e-12, rtol=1e-10)


def test_uniform_grid_is_exact():
    grid = time_grid(Schedule("vp-cosine"), 4)
    assert grid.tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]


@pytest.mark.parametrize("name", SCHEDULES)
def test_log_snr_grid_is_even_in_log_snr_and_ends_on_data(name):
    schedule = Schedule(name)
    grid = time_grid(schedule, 10, "log-snr")
    assert len(grid) == 11 and grid[0] == 1.0 and grid[-1] == 0.0
    assert torch.all(grid[1:] < grid[:-1])
    lam = schedule.log_snr(grid[1:-1])
    steps = lam[1:] - lam[:-1]
    torch.testing.assert_close(steps, steps.mean().expand_as(steps), atol=1e-6, rtol=1e-6)
    assert float(schedule.log_snr(grid[-2])) == pytest.approx(float(schedule.log_snr(torch.tensor(1e-3))), abs=1e-6)


def test_bad_schedule_and_grid_arguments():
    with pytest.raises(ValueError, match="unknown schedule"):
        Schedule("cosine")
    with pytest.raises(ValueError, match="steps must be"):
        time_grid(Schedule("flow"), 0)
    with pytest.raises(ValueError, match="unknown time spacing"):
        time_grid(Schedule("flow"), 5, "karras")
