import math

import pytest
import torch

from diffusion.core.sampling import (ddim_noise_scale, ddim_step, draw_noise, image_generators, ode_nfe, posterior_mean_std,
                                sample_ddim, sample_ddpm, sample_ode)
from diffusion.core.schedules import SCHEDULES, Schedule, time_grid

MU, S = 0.5, 0.5  # data distribution N(MU, S^2) per pixel: its denoiser is known in closed form


def gaussian_oracle(schedule: Schedule):
    """Exact E[x0 | x_t] and E[eps | x_t] for x0 ~ N(MU, S^2)."""
    calls = []

    def denoise(x_t, t):
        calls.append(t)
        alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        var = alpha**2 * S**2 + sigma**2  # Var[x_t]
        x0 = MU + alpha * S**2 / var * (x_t - alpha * MU)
        eps = sigma / var * (x_t - alpha * MU)
        return x0, eps

    denoise.calls = calls
    return denoise


def start(n, seed=0, pixels=1):
    generators = image_generators(seed, n)
    return draw_noise(generators, (pixels,)).double(), generators


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("sampler, steps", [("ddpm", 1000), ("ddim", 200), ("ddim-eta1", 1000), ("euler", 200),
                                            ("heun", 50), ("dpm++2m", 50)])
def test_samplers_reach_the_data_distribution(name, sampler, steps):
    schedule = Schedule(name)
    x_T, generators = start(4, pixels=10_000)  # 40,000 i.i.d. pixels, 4 noise streams
    grid = time_grid(schedule, steps, "log-snr" if sampler in ("heun", "dpm++2m") else "uniform")
    denoise = gaussian_oracle(schedule)
    if sampler == "ddpm":
        x = sample_ddpm(denoise, x_T, grid, schedule=schedule, generators=generators)
    elif sampler.startswith("ddim"):
        x = sample_ddim(denoise, x_T, grid, schedule=schedule, generators=generators, eta=1.0 if "eta1" in sampler else 0.0)
    else:
        x = sample_ode(denoise, x_T, grid, schedule=schedule, solver=sampler)
    # 40,000 samples: standard errors 0.0015 (mean) and 0.35% (std). Ancestral samplers are biased low
    # in variance at coarse steps (Bao et al. 2022), hence 1000 steps for them
    # (the DDPM paper's setting). S = 0.5 makes the ODE stiff near log-SNR 1.4: first-order samplers need
    # ~200 steps for 2%.
    assert float(x.mean()) == pytest.approx(MU, abs=0.006)
    assert float(x.std()) == pytest.approx(S, rel=0.02)


def test_deterministic_samplers_match_the_exact_ode_solution():
    # For Gaussian data the PF-ODE maps x_1 ~ N(0, 1) to MU + S * x_1 exactly (VP, alpha_1 ~ 0).
    schedule = Schedule("flow")
    x_T, _ = start(256)
    exact = MU + S * x_T
    errors = {}
    for solver, steps in [("euler", 50), ("heun", 50), ("dpm++2m", 50)]:
        grid = time_grid(schedule, steps, "log-snr")
        errors[solver] = float((sample_ode(gaussian_oracle(schedule), x_T, grid, schedule=schedule, solver=solver) - exact).abs().max())
    assert errors["heun"] < errors["euler"] / 5
    assert errors["dpm++2m"] < errors["euler"] / 5
    assert errors["dpm++2m"] < 0.01  # measured 0.0089; Euler 0.10 (max over 256 pixels)


def test_ddim_eta0_is_euler_in_natural_variables():
    # y = x / alpha, rho = sigma / alpha: dy/drho = eps_hat. One Euler step equals one DDIM step.
    schedule = Schedule("vp-cosine")
    x_t = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    x0, eps = gaussian_oracle(schedule)(x_t, 0.7)
    (a_t, s_t), (a_s, s_s) = [(float(a), float(s)) for a, s in (schedule.alpha_sigma(torch.tensor(v, dtype=torch.float64)) for v in (0.7, 0.4))]
    y_s = x_t / a_t + (s_s / a_s - s_t / a_t) * eps
    torch.testing.assert_close(ddim_step(x0, eps, a_s, s_s), a_s * y_s, atol=1e-12, rtol=1e-12)


def test_ddim_on_flow_is_euler_in_t():
    schedule = Schedule("flow")
    x_T, _ = start(64)
    denoise = gaussian_oracle(schedule)
    grid = time_grid(schedule, 8)
    x = x_T.clone()
    for t, s in zip(grid[:-1].tolist(), grid[1:].tolist()):
        x0, eps = denoise(x, t)
        x = x + (s - t) * (eps - x0)  # Euler step of dx/dt = u = eps - x0
    torch.testing.assert_close(sample_ddim(denoise, x_T, grid, schedule=schedule), x, atol=1e-12, rtol=1e-12)


def test_ddim_eta1_is_the_ddpm_posterior():
    x_t, x0 = torch.randn(2, 5, dtype=torch.float64)
    a_t, s_t, a_s, s_s = 0.6, 0.8, 0.9, math.sqrt(1 - 0.81)
    eps = (x_t - a_t * x0) / s_t
    noise = torch.randn(5, dtype=torch.float64)
    mean, std = posterior_mean_std(x_t, x0, a_t, s_t, a_s, s_s)
    c = ddim_noise_scale(1.0, a_t, s_t, a_s, s_s)
    assert c == pytest.approx(std, rel=1e-12)
    torch.testing.assert_close(ddim_step(x0, eps, a_s, s_s, noise, c), mean + std * noise, atol=1e-12, rtol=1e-12)


def test_final_step_lands_on_x0_hat_and_nfe_counts():
    schedule = Schedule("vp-cosine")
    x_T, generators = start(8)
    seen = []
    for solver, steps in [("euler", 6), ("heun", 6), ("dpm++2m", 6)]:
        denoise = gaussian_oracle(schedule)
        sample_ode(denoise, x_T, time_grid(schedule, steps), schedule=schedule, solver=solver,
                   callback=lambda step, t, x, x0: seen.append((step, t, x, x0)))
        assert len(denoise.calls) == ode_nfe(solver, steps)
        step, t, x, x0 = seen[-1]
        assert t == 0.0 and torch.equal(x, x0)
    assert ode_nfe("heun", 6) == 11


def test_image_depends_only_on_seed_and_index():
    schedule = Schedule("vp-linear")
    denoise = gaussian_oracle(schedule)
    grid = time_grid(schedule, 20)
    x16, g16 = start(16, seed=7)
    x1, g1 = start(1, seed=7)
    big = sample_ddpm(denoise, x16, grid, schedule=schedule, generators=g16)
    small = sample_ddpm(denoise, x1, grid, schedule=schedule, generators=g1)
    torch.testing.assert_close(big[:1], small, atol=0, rtol=0)
    third = draw_noise(image_generators(7, 1, first_index=2), (1,)).double()
    torch.testing.assert_close(third, x16[2:3], atol=0, rtol=0)
    assert not torch.equal(start(1, seed=8)[0], x1)


# --- the peer: diffusers' schedulers on the DDPM linear schedule ---------------------------------
diffusers = pytest.importorskip("diffusers", reason="diffusers is a test dependency: pip install -e '.[test]'")


def fake_eps_model(x, k):
    return torch.tanh(x) * 0.7 + 0.001 * k


def test_ddpm_matches_diffusers_ddpm_scheduler():
    schedule = Schedule("vp-linear")
    peer = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                   variance_type="fixed_small", prediction_type="epsilon")
    peer.set_timesteps(1000)
    grid = time_grid(schedule, 1000)
    assert peer.timesteps.tolist() == [round(t * 1000) - 1 for t in grid[:-1].tolist()]
    x = torch.randn(2, 1, 4, 4)
    for k in [999, 600, 17, 1, 0]:
        eps = fake_eps_model(x, k)
        theirs = peer.step(eps, k, x, generator=torch.Generator().manual_seed(k)).prev_sample
        t, s = (k + 1) / 1000, k / 1000
        a_t, s_t = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        a_s, s_s = (float(v) for v in schedule.alpha_sigma(torch.tensor(s, dtype=torch.float64)))
        mean, std = posterior_mean_std(x, (x - s_t * eps) / a_t, a_t, s_t, a_s, s_s)
        ours = mean + std * torch.randn(x.shape, generator=torch.Generator().manual_seed(k)) if std > 0 else mean
        # diffusers keeps alphas_cumprod as a float32 cumprod (relative error ~1e-5 at k = 999, where
        # x0 = (x - sigma eps) / alpha divides by alpha = 0.0064); we compute it in float64.
        torch.testing.assert_close(ours, theirs, atol=3e-4, rtol=1e-4)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_loop_matches_diffusers_ddim_scheduler(eta):
    schedule = Schedule("vp-linear")
    peer = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                                   set_alpha_to_one=True, timestep_spacing="trailing", prediction_type="epsilon")
    peer.set_timesteps(50)
    grid = time_grid(schedule, 50)
    assert peer.timesteps.tolist() == [round(t * 1000) - 1 for t in grid[:-1].tolist()]  # 999, 979, ..., 19

    x_T = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    noises = iter(torch.randn(50, 3, 1, 4, 4, generator=torch.Generator().manual_seed(1)))
    theirs = x_T.clone()
    for k in peer.timesteps.tolist():
        theirs = peer.step(fake_eps_model(theirs, k), k, theirs, eta=eta, variance_noise=next(noises)).prev_sample

    def denoise(x, t):
        k = round(t * 1000) - 1
        eps = fake_eps_model(x, k)
        a_t, s_t = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        return (x - s_t * eps) / a_t, eps

    class Replay:  # feeds the same noise tensors the peer used, through the generator interface
        noises = iter(torch.randn(50, 3, 1, 4, 4, generator=torch.Generator().manual_seed(1)))

    import diffusion.core.sampling as sampling

    original = sampling.draw_noise
    sampling.draw_noise = lambda generators, shape, device="cpu", dtype=torch.float32: next(Replay.noises)
    try:
        ours = sample_ddim(denoise, x_T.clone(), grid, schedule=schedule, generators=[None], eta=eta)
    finally:
        sampling.draw_noise = original
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


# --- stochastic samplers (issue 17) ------------------------------------------------------------------------------
from diffusion.core.sampling import SAMPLERS, sample_langevin, sample_pc, sample_sde  # noqa: E402


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("sampler", ["sde", "sde-half", "pc-ddpm", "pc-ddim", "langevin"])
def test_stochastic_samplers_reach_the_data_distribution(name, sampler):
    schedule = Schedule(name)
    x_T, generators = start(4, pixels=10_000)
    denoise = gaussian_oracle(schedule)
    if sampler.startswith("sde"):
        grid = time_grid(schedule, 500, "log-snr")
        x = sample_sde(denoise, x_T, grid, schedule=schedule, generators=generators,
                       stochasticity=0.5 if "half" in sampler else 1.0)
    elif sampler.startswith("pc"):
        x = sample_pc(denoise, x_T, time_grid(schedule, 500), schedule=schedule, generators=generators,
                      predictor=sampler[3:], correctors=1, snr=0.16)
    else:
        x = sample_langevin(denoise, x_T, time_grid(schedule, 200, "log-snr"), schedule=schedule,
                            generators=generators, langevin_steps=5, step_size=1.0)
    # 40,000 pixels: standard errors 0.0015 (mean), 0.35 % (std); Langevin's discretization inflates the
    # variance slightly (stationary variance v / (1 - a / 4v) per level), hence the looser std bound for it
    assert float(x.mean()) == pytest.approx(MU, abs=0.008)
    assert float(x.std()) == pytest.approx(S, rel=0.03 if sampler == "langevin" else 0.02)


@pytest.mark.parametrize("name", SCHEDULES)
def test_stochasticity_zero_is_the_ode_sampler_bit_for_bit(name):
    schedule = Schedule(name)
    x_T, generators = start(2, pixels=50)
    grid = time_grid(schedule, 30, "log-snr")
    ode = sample_ode(gaussian_oracle(schedule), x_T, grid, schedule=schedule, solver="euler")
    sde = sample_sde(gaussian_oracle(schedule), x_T, grid, schedule=schedule, generators=generators, stochasticity=0.0)
    assert torch.equal(ode, sde)


@pytest.mark.parametrize("sampler, options", [("sde", {"stochasticity": 1.0}), ("pc", {"correctors": 2}),
                                              ("langevin", {"langevin_steps": 3})])
def test_stochastic_samplers_seeds_are_independent_of_batch_size_and_nfe_is_counted(sampler, options):
    schedule = Schedule("vp-cosine")
    grid = time_grid(schedule, 12, "log-snr")
    spec = SAMPLERS[sampler]
    batch = draw_noise(image_generators(5, 3), (6,)).double()
    alone = draw_noise(image_generators(5, 1, first_index=2), (6,)).double()
    denoise = gaussian_oracle(schedule)
    out_batch = spec.sample(denoise, batch, grid, schedule=schedule, generators=image_generators(5, 3), **options)
    assert len(denoise.calls) == spec.nfe(12, **options)
    out_alone = spec.sample(gaussian_oracle(schedule), alone, grid, schedule=schedule,
                            generators=image_generators(5, 1, first_index=2), **options)
    torch.testing.assert_close(out_batch[2:], out_alone, rtol=0, atol=1e-12)
