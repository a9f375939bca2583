"""The 2-D lab (issue 29): the exact mixture models against closed forms, the ODE solvers' convergence orders on
them, and the report command. tests/test_lab2d_samplers.py checks the rest of the library against the exact models."""

from __future__ import annotations

import math

import pytest
import torch

from diffusion.__main__ import main
from diffusion.lab2d.exact import ExactNetwork, log_density, posterior_mean
from diffusion.lab2d.metrics import exact_samples, outside_support, sliced_wasserstein, support_thresholds
from diffusion.lab2d.mixture import DISTRIBUTIONS, balanced_labels, sample_mixture, widened
from diffusion.lab2d.report import SOLVERS, convergence_study
from diffusion.lab2d.run import LabModel, sample_points
from diffusion.core.schedules import SCHEDULES, Schedule


def exact_model(name: str) -> LabModel:
    return LabModel(ExactNetwork(DISTRIBUTIONS[name]()), "x0")


# --- the exact model against closed forms --------------------------------------------------------------------------
@pytest.mark.parametrize("name, label", [("tree", 0), ("spirals", 1), ("blobs", 4)])  # blobs 4: the null class
@pytest.mark.parametrize("alpha, sigma", [(0.8, 0.6), (0.3, 0.95)])
def test_the_exact_denoiser_is_the_brute_force_posterior_mean(name, label, alpha, sigma):
    """E[x0 | x_t] = sum_i x0_i N(x_t; alpha x0_i, sigma^2 I) / sum_i N(...) over 200,000 exact x0_i of the class."""
    mix = DISTRIBUTIONS[name]()
    generator = torch.Generator().manual_seed(0)
    pool = torch.full((200_000,), label) if label < mix.num_classes else balanced_labels(mix, 200_000)
    x0 = sample_mixture(mix, pool, generator)
    queries = alpha * x0[:4] + sigma * torch.randn(4, 2, generator=generator, dtype=torch.float64)
    weights = torch.softmax(-(queries[:, None] - alpha * x0[None]).pow(2).sum(-1) / (2 * sigma**2), dim=1)
    labels = torch.full((4,), label)
    torch.testing.assert_close(posterior_mean(mix, queries, alpha, sigma, labels), weights @ x0, atol=0.01, rtol=0)


def grid_integral(mix, alpha, sigma, labels_of, half_width=5.0, step=0.025) -> float:
    axis = torch.arange(-half_width, half_width, step, dtype=torch.float64) + step / 2
    total = 0.0
    for row in axis:  # one grid row at a time: (400, K) terms, not (160,000, K)
        points = torch.stack([torch.full_like(axis, float(row)), axis], dim=1)
        total += float(log_density(mix, points, alpha, sigma, labels_of(len(points))).exp().sum()) * step**2
    return total


@pytest.mark.parametrize("alpha, sigma", [(1.0, 0.0), (0.6, 0.8)])
def test_the_exact_log_density_integrates_to_one(alpha, sigma):
    mix = DISTRIBUTIONS["rings"]()
    assert grid_integral(mix, alpha, sigma, lambda n: torch.zeros(n, dtype=torch.long)) == pytest.approx(1, abs=1e-4)
    assert grid_integral(mix, alpha, sigma, lambda n: torch.full((n,), mix.num_classes)) == pytest.approx(1, abs=1e-4)


def test_one_component_is_its_gaussian_at_every_noise_level():
    mix = DISTRIBUTIONS["blobs"]()  # one full-covariance component per class
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.full((50,), 2)
    for alpha, sigma in [(1.0, 0.0), (0.7, 0.4), (0.0, 1.0)]:
        gaussian = torch.distributions.MultivariateNormal(alpha * mix.means[2],
                                                          alpha**2 * mix.covariances[2] + sigma**2 * torch.eye(2))
        torch.testing.assert_close(log_density(mix, x, alpha, sigma, labels), gaussian.log_prob(x))


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_the_exact_network_is_an_ordinary_x0_network_on_every_schedule(schedule):
    """Through the Denoiser (input scaled to unit variance, told only the log-SNR) it is E[x0 | x_t, y] of that
    schedule's x_t = alpha_t x0 + sigma_t eps, labels and the null class alike."""
    mix = DISTRIBUTIONS["spirals"]()
    sched = Schedule(schedule)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])  # 2: the null class
    x_t = torch.randn(6, 2, generator=torch.Generator().manual_seed(2))
    for t in (0.05, 0.5, 1.0):
        alpha, sigma = (float(v) for v in sched.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        x0, eps = LabModel(ExactNetwork(mix), "x0").denoiser(sched, labels)(x_t, t)
        torch.testing.assert_close(x0.double(), posterior_mean(mix, x_t, alpha, sigma, labels), atol=2e-5, rtol=1e-5)
        torch.testing.assert_close(alpha * x0 + sigma * eps, x_t, atol=2e-5, rtol=0)


def test_exact_samples_follow_the_mixture_and_widening_keeps_the_means():
    mix = DISTRIBUTIONS["tree"]()
    x = exact_samples(mix, torch.zeros(100_000, dtype=torch.long), seed=3)
    in_class = mix.classes == 0
    weights = mix.weights[in_class] / mix.weights[in_class].sum()
    torch.testing.assert_close(x.mean(0), weights @ mix.means[in_class], atol=0.01, rtol=0)
    wide = widened(mix, 2.0)
    torch.testing.assert_close(wide.covariances, 4 * mix.covariances)
    with pytest.raises(ValueError, match="factor must be >= 1"):
        widened(mix, 0.5)


def test_sliced_wasserstein_of_a_shift_and_the_support_rule():
    points = torch.randn(20_000, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    shift = torch.tensor([0.3, -0.4], dtype=torch.float64)
    # every projection moves by <shift, theta>: SW2^2 = mean_theta <shift, theta>^2 = |shift|^2 / 2
    assert sliced_wasserstein(points + shift, points) == pytest.approx(0.5 / math.sqrt(2), abs=0.01)
    mix = DISTRIBUTIONS["rings"]()
    thresholds = support_thresholds(mix)
    labels = balanced_labels(mix, 20_000)
    share = float(outside_support(mix, exact_samples(mix, labels, seed=99), labels, thresholds).double().mean())
    assert share == pytest.approx(0.01, abs=0.003)  # exact samples: the 1 % quantile by construction
    assert outside_support(mix, torch.tensor([[0.0, 0.0], [0.7, 0.0]]), torch.tensor([0, 0]), thresholds).tolist() \
        == [True, False]  # the inner ring's centre is outside it; a point on it is inside


# --- the library against the exact model ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def convergence():
    return {row.solver: row for row in convergence_study(DISTRIBUTIONS["rings"](), count=64)}


@pytest.mark.parametrize("solver", list(SOLVERS))
def test_each_ode_solver_converges_at_its_order(convergence, solver):
    """Error against DPM-Solver++(2M) at 1536 steps, at 24, 48, 96, 192 log-SNR-spaced steps: log-log slope -order."""
    row = convergence[solver]
    assert all(a > b for a, b in zip(row.errors, row.errors[1:]))
    assert row.slope == pytest.approx(-row.order, abs=0.3)


def test_ddim_is_ode_euler(convergence):
    assert convergence["DDIM (eta 0)"].errors == convergence["ODE Euler"].errors


def test_the_ode_reference_is_the_closed_form_flow_of_a_gaussian():
    """For one Gaussian class the probability-flow map is x_0 = mu + Sigma^1/2 C_1^-1/2 (x_1 - alpha_1 mu),
    C_1 = alpha_1^2 Sigma + sigma_1^2 I (every C_t shares Sigma's eigenvectors)."""
    mix = DISTRIBUTIONS["blobs"]()
    schedule = Schedule("vp-cosine")
    labels = torch.full((32,), 1)
    run = sample_points(exact_model("blobs"), schedule, labels, sampler="ode", steps=400,
                        options={"solver": "dpm++2m"}, spacing="log-snr")
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(1.0, dtype=torch.float64)))
    values, vectors = torch.linalg.eigh(mix.covariances[1])
    gain = vectors @ torch.diag(values.sqrt() / (alpha**2 * values + sigma**2).sqrt()) @ vectors.T
    exact = mix.means[1] + (run.x_T.double() - alpha * mix.means[1]) @ gain.T
    torch.testing.assert_close(run.samples.double(), exact, atol=2e-4, rtol=0)


# --- the report command -------------------------------------------------------------------------------------------
def test_the_report_command_writes_the_plot_and_the_tables(tmp_path, capsys):
    out = tmp_path / "lab2d"
    main(["lab2d-report", "--quick", "--out", str(out)])
    assert (out / "convergence.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    readme = (out / "README.md").read_text()
    assert "| ODE Heun | 2 |" in readme and "| DPM-Solver++(2M) | 2 |" in readme
    assert "| 8 | " in readme and "autoguidance: outside support" in readme
    with pytest.raises(SystemExit):
        main(["lab2d-report", "--quick", "--out", str(out)])
    assert "exists; pass --overwrite" in capsys.readouterr().err
