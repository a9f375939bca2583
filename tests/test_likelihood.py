"""Likelihood: the probability-flow ODE against closed forms, Hutchinson against the exact divergence, NICE by hand."""

import math

import pytest
import torch

from diffusion.formats.checkpoint import load_checkpoint
from diffusion.core.likelihood import (BIN_WIDTH, ODELikelihoodConfig, bits_per_dim, dequantize_each, divergence,
                                  gaussian_log_density, model_log_likelihood, ode_log_likelihood, probability_flow_drift,
                                  rademacher_probes)
from diffusion.core.sampling import image_generators
from diffusion.core.schedules import SCHEDULES, Schedule

from conftest import tiny_nice

MU = 0.3  # data ~ N(MU, covariance)


def correlated_covariance(dims: int, seed: int = 0) -> torch.Tensor:
    """A full (non-diagonal) covariance with eigenvalues in about [0.02, 0.5]: Hutchinson is not exact for it."""
    a = torch.randn(dims, dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    q, _ = torch.linalg.qr(a)
    return q @ torch.diag(torch.linspace(0.02, 0.5, dims, dtype=torch.float64)) @ q.T


def gaussian_denoiser(schedule: Schedule, covariance: torch.Tensor):
    """Exact E[x0 | x_t], E[eps | x_t] for x0 ~ N(MU, covariance) over the flattened image; differentiable.

    With C_t = alpha^2 covariance + sigma^2 I: x0_hat = MU + alpha covariance C_t^-1 (x_t - alpha MU),
    eps_hat = sigma C_t^-1 (x_t - alpha MU)."""
    covariance = covariance.float()
    eye = torch.eye(len(covariance))

    def denoise(x_t, t):
        alpha, sigma = (float(v) for v in schedule.alpha_sigma(torch.tensor(t, dtype=torch.float64)))
        centred = x_t.flatten(1) - alpha * MU
        solved = torch.linalg.solve(alpha**2 * covariance + sigma**2 * eye, centred.T).T  # C_t^-1 (x_t - alpha MU)
        x0 = MU + alpha * solved @ covariance
        return x0.view_as(x_t), (sigma * solved).view_as(x_t)

    return denoise


def data_log_density(x, covariance):
    mean = torch.full((len(covariance),), MU, dtype=torch.float64)
    return torch.distributions.MultivariateNormal(mean, covariance).log_prob(x.flatten(1).double())


def gaussian_data(count, covariance, shape, seed=0):
    chol = torch.linalg.cholesky(covariance)
    z = torch.randn(count, len(covariance), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (MU + z @ chol.T).float().view(count, *shape)


@pytest.mark.parametrize("name", SCHEDULES)
def test_schedule_derivative_matches_finite_differences(name):
    schedule = Schedule(name)
    t = torch.tensor([0.0123, 0.3004, 0.5557, 0.9105], dtype=torch.float64)  # off vp-linear's table knots
    h = 1e-7
    (a_plus, s_plus), (a_minus, s_minus) = schedule.alpha_sigma(t + h), schedule.alpha_sigma(t - h)
    d_alpha, d_sigma = schedule.alpha_sigma_derivative(t)
    torch.testing.assert_close(d_alpha, (a_plus - a_minus) / (2 * h), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(d_sigma, (s_plus - s_minus) / (2 * h), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["vp-cosine", "flow"])
def test_ode_likelihood_of_gaussian_data_is_the_closed_form(name):
    schedule = Schedule(name)
    covariance = correlated_covariance(4)
    x = gaussian_data(6, covariance, (1, 2, 2))
    config = ODELikelihoodConfig(divergence="exact", rtol=1e-6, atol=1e-6)
    result = ode_log_likelihood(gaussian_denoiser(schedule, covariance), schedule, x, config=config, record=5)
    exact = data_log_density(x, covariance)
    assert torch.allclose(result.log_density, exact, rtol=0.01)
    assert float((result.log_density - exact).abs().max()) < 0.01
    assert result.nfe > 10 and result.path.shape == (5, 6) and result.times[0] == config.t_start
    torch.testing.assert_close(result.log_density, result.prior + result.path[-1])


def test_hutchinson_agrees_with_the_exact_divergence_within_its_standard_error():
    schedule = Schedule("vp-cosine")
    covariance = correlated_covariance(16, seed=1)
    x = gaussian_data(64, covariance, (1, 4, 4), seed=1)
    denoise = gaussian_denoiser(schedule, covariance)
    x_t = x.clone().requires_grad_(True)
    f = probability_flow_drift(denoise, schedule, x_t, 0.3)
    exact = divergence(f, x_t, None)
    estimates = divergence(f, x_t, rademacher_probes(image_generators(0, len(x)), x.shape[1:]))
    difference = estimates - exact  # per image: Hutchinson's noise, mean zero
    assert float(difference.std()) > 1e-3 * float(exact.abs().mean())  # not exact for a non-diagonal Jacobian
    assert abs(float(difference.mean())) < 3 * float(difference.std()) / math.sqrt(len(x))
    # Through the whole ODE: the mean over images agrees within 3 standard errors, and a second run is identical.
    config = ODELikelihoodConfig(rtol=1e-5, atol=1e-5)
    probes = rademacher_probes(image_generators(7, len(x)), x.shape[1:])
    hutchinson = ode_log_likelihood(denoise, schedule, x, probes, config)
    again = ode_log_likelihood(denoise, schedule, x, probes, config)
    exact_ode = ode_log_likelihood(denoise, schedule, x, config=ODELikelihoodConfig(divergence="exact"))
    gap = hutchinson.log_density - exact_ode.log_density
    assert float(gap.std()) > 0
    assert abs(float(gap.mean())) < 3 * float(gap.std()) / math.sqrt(len(x))
    assert torch.equal(hutchinson.log_density, again.log_density)
    torch.testing.assert_close(exact_ode.log_density, data_log_density(x, covariance), atol=0.01, rtol=0)


def test_hutchinson_is_exact_for_a_diagonal_jacobian():
    # v^T diag(d) v = sum(d) for v in {-1, 1}^D: a test that the probe is Rademacher and the VJP is used.
    x = torch.randn(3, 1, 3, 3).requires_grad_(True)
    f = x * torch.arange(9.0).view(1, 1, 3, 3)
    estimate = divergence(f, x, rademacher_probes(image_generators(0, 3), (1, 3, 3)))
    torch.testing.assert_close(estimate, torch.full((3,), 36.0))


def test_ode_likelihood_runs_under_inference_mode_and_refuses_missing_probes():
    schedule = Schedule("flow")
    covariance = correlated_covariance(4)
    x = gaussian_data(2, covariance, (1, 2, 2))
    denoise = gaussian_denoiser(schedule, covariance)  # built outside, as the app loads its networks
    with torch.inference_mode():
        result = ode_log_likelihood(denoise, schedule, x,
                                    config=ODELikelihoodConfig(divergence="exact"))
    torch.testing.assert_close(result.log_density, data_log_density(x, covariance), atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="probe"):
        ode_log_likelihood(gaussian_denoiser(schedule, covariance), schedule, x)
    with pytest.raises(ValueError, match="divergence"):
        ODELikelihoodConfig(divergence="trace")


def test_units_by_hand():
    # A density uniform on [-1, 1]^D is 2^-D: every 8-bit level then has probability 1/256, i.e. 8 bits/dim.
    dims = 5
    assert float(bits_per_dim(torch.tensor(-dims * math.log(2.0)), dims)) == pytest.approx(8.0)
    assert BIN_WIDTH == 2 / 256
    # log N(0; 0, 1) in one dimension.
    assert float(gaussian_log_density(torch.zeros(1, 1), 1.0)) == pytest.approx(-0.5 * math.log(2 * math.pi))


def test_dequantization_is_per_image_and_inside_the_bins():
    pixels = torch.tensor([[0, 255], [128, 7]], dtype=torch.uint8).view(2, 1, 1, 2)
    x = dequantize_each(pixels, image_generators(0, 2))
    lower = pixels.double() * BIN_WIDTH - 1
    assert torch.all(x >= lower.float()) and torch.all(x < (lower + BIN_WIDTH).float())
    # Image 1 gets the same noise whether or not image 0 is in the batch.
    torch.testing.assert_close(dequantize_each(pixels[1:], image_generators(0, 1, first_index=1)), x[1:])


class FlowModel:
    """The parts of a LoadedModel that model_log_likelihood reads, for a NICE."""

    kind = "normalizing-flow"
    class_names = ("a", "b", "c")

    def __init__(self, network):
        self.network = network


def test_nice_likelihood_by_hand():
    network = tiny_nice(image_size=8)
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    labels = torch.tensor([0, 1, 2, 1])
    result = model_log_likelihood(FlowModel(network), x, labels)
    z = network.encode(x, labels).flatten(1).double()
    by_hand = -0.5 * z.pow(2).sum(1) - 32 * math.log(2 * math.pi) + network.log_scale.double().sum()
    torch.testing.assert_close(result.log_density, by_hand.detach())
    torch.testing.assert_close(result.bits_per_dim, -(by_hand.detach() + 64 * math.log(2 / 256)) / (64 * math.log(2)))
    # Without labels: the class mixture, log (1/3) sum_y p(x | y).
    per_class = torch.stack([model_log_likelihood(FlowModel(network), x, torch.full((4,), k)).log_density for k in range(3)])
    marginal = model_log_likelihood(FlowModel(network), x, None).log_density
    torch.testing.assert_close(marginal, torch.logsumexp(per_class, 0) - math.log(3))


def test_checkpoint_likelihood_for_every_generative_kind(checkpoint_dir):
    pixels = torch.randint(0, 256, (3, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    generators = image_generators(0, 3)
    x = dequantize_each(pixels, generators)
    probes = rademacher_probes(generators, x.shape[1:])
    labels = torch.tensor([0, 1, 2])
    for name in ("tiny", "tiny-flow", "tiny-nice"):
        model = load_checkpoint(checkpoint_dir / f"{name}.safetensors")
        with torch.inference_mode():
            conditional = model_log_likelihood(model, x, labels, probes, ODELikelihoodConfig(rtol=1e-3, atol=1e-3))
            unconditional = model_log_likelihood(model, x, None, probes, ODELikelihoodConfig(rtol=1e-3, atol=1e-3))
        for result in (conditional, unconditional):
            assert result.log_density.shape == (3,) and torch.isfinite(result.log_density).all()
        assert not torch.equal(conditional.log_density, unconditional.log_density)
        assert (conditional.nfe > 0) == (model.kind == "denoiser")
    with pytest.raises(ValueError, match="no likelihood"):
        model_log_likelihood(load_checkpoint(checkpoint_dir / "tiny-evaluator.safetensors"), x, labels)


def test_probe_images():
    from diffusion.serving.lens import PROBES, probe_images

    image = torch.arange(16, dtype=torch.uint8).view(1, 4, 4) * 10
    probes = probe_images(image, seed=3)
    assert probes.shape == (len(PROBES), 1, 4, 4) and probes.dtype == torch.uint8
    assert torch.equal(probes[0], image) and torch.equal(probes[1], image.flip(-1))
    assert torch.equal(probes[2], 255 - image) and torch.all(probes[3] == 128)
    assert torch.equal(probes[4], probe_images(image, seed=3)[4]) and not torch.equal(probes[4], probe_images(image, 4)[4])
    with pytest.raises(Exception, match="uint8"):
        probe_images(image.float(), 0)


def test_lens_scores_every_probe_as_the_library_does(checkpoint_dir):
    from diffusion.serving.engine import ModelCache, RequestError
    from diffusion.serving.lens import LENS_ODE, PATH_POINTS, likelihood_lens, probe_images

    cache = ModelCache(checkpoint_dir, device="cpu")
    image = torch.randint(0, 256, (1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    seen = []
    columns = likelihood_lens(cache, ["tiny-nice", "tiny-flow"], image, seed=5,
                              progress=lambda column, fraction: seen.append((column, fraction)))
    assert [c.checkpoint for c in columns] == ["tiny-nice", "tiny-flow"]
    nice, flow = columns
    assert nice.nfe == 0 and nice.times is None and flow.nfe > 0 and flow.path_bits.shape == (PATH_POINTS, 5)
    assert seen and {c for c, _ in seen} == {1} and all(0 <= f <= 1 for _, f in seen) and seen[-1][1] == 1.0
    # The same numbers as the library on the same dequantization and probes (generator (seed, probe index)).
    generators = image_generators(5, 5)
    x = dequantize_each(probe_images(image, 5), generators)
    probes = rademacher_probes(generators, x.shape[1:])
    with torch.inference_mode():
        expected = model_log_likelihood(cache.get("tiny-flow"), x, None, probes, LENS_ODE).bits_per_dim
    torch.testing.assert_close(torch.tensor(flow.bits_per_dim, dtype=torch.float64), expected)
    with pytest.raises(RequestError, match="does not generate"):
        likelihood_lens(cache, ["tiny-evaluator"], image)
    with pytest.raises(RequestError, match="between 1 and"):
        likelihood_lens(cache, [], image)


def test_recorded_likelihood_is_matched_by_hash_and_read_as_data(tmp_path):
    import json

    from diffusion.evaluation import likelihood_summary, recorded_likelihood

    class Model:
        path = tmp_path / "ckpt" / "m.safetensors"
        sha256 = "abc"

    good = {"likelihood": "conditional", "method": "pf-ode dopri5", "images": 1000, "bits_per_dim": 3.25, "stderr": 0.03}
    hostile = {**good, "likelihood": "unconditional", "bits_per_dim": "<script>"}
    (tmp_path / "m.json").write_text(json.dumps({"identity": {"checkpoint_sha256": "abc"}, "likelihood": [good, hostile]}))
    rows = recorded_likelihood(Model, tmp_path)
    assert rows == [good]
    assert likelihood_summary(rows) == "3.25 ± 0.03 bits/dim given the class (probability-flow ODE, first 1000 test images)"
    Model.sha256 = "other file"
    assert recorded_likelihood(Model, tmp_path) == []
    (tmp_path / "m.json").write_text("not json")
    assert recorded_likelihood(Model, tmp_path) == []
