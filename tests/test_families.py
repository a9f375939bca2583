"""Same noise through several kinds of model, latent walks, and encode/decode (studies + engine)."""

import math

import pytest
import torch

from diffusion.serving.engine import FlowRequest, ModelCache, RequestError, SampleRequest, run_request
from diffusion.core.sampling import draw_noise, image_generators, invert_ddim, sample_ddim, slerp
from diffusion.core.schedules import Schedule, time_grid
from diffusion.serving.studies import encode_image, family_requests, same_noise, walk_noise
from test_samplers import MU, S, gaussian_oracle


@pytest.fixture
def cache(checkpoint_dir):
    return ModelCache(checkpoint_dir, device="cpu")


def test_flow_request_decodes_the_seeds_noise_exactly(cache):
    result = run_request(cache, FlowRequest(checkpoint="tiny-nice", class_index=1, temperature=0.7, seed=5, batch_size=4))
    nice = cache.get("tiny-nice").network
    z = 0.7 * draw_noise(image_generators(5, 4), (1, 8, 8))
    with torch.no_grad():
        expected = nice.decode(z, torch.full((4,), 1)).clamp(-1, 1)
    assert result.nfe == 1 and torch.allclose(result.images, expected, atol=1e-6)


def test_flow_images_depend_only_on_seed_and_index(cache):
    batch = run_request(cache, FlowRequest(checkpoint="tiny-nice", class_index=2, seed=9, batch_size=6)).images
    for index in (0, 4):
        single = run_request(cache, FlowRequest(checkpoint="tiny-nice", class_index=2, seed=9, batch_size=1,
                                                first_index=index)).images
        assert torch.allclose(single[0], batch[index], atol=1e-6)


@pytest.mark.parametrize("request_, message", [
    (FlowRequest(checkpoint="tiny-nice", temperature=2.5), "temperature must be between 0.0 and 2.0"),
    (FlowRequest(checkpoint="tiny-nice", temperature=float("nan")), "temperature must be finite"),
    (FlowRequest(checkpoint="tiny-nice", class_index=3), "class must be between 0 and 2"),
    (FlowRequest(checkpoint="tiny-nice", class_index=None), "class-conditional: choose a class"),
    (FlowRequest(checkpoint="tiny"), "denoiser: it takes a sampler and steps, not a temperature"),
    (SampleRequest(checkpoint="tiny-nice"), "normalizing flow"),
    (FlowRequest(checkpoint="tiny-evaluator"), "does not generate images"),
])
def test_requests_that_do_not_fit_the_kind_are_refused(cache, request_, message):
    with pytest.raises(RequestError, match=message):
        run_request(cache, request_)


def test_same_noise_feeds_every_family(cache):
    requests = family_requests(cache, ["tiny-nice", "tiny", "tiny-flow"], class_index=0, seed=3, batch_size=3,
                               steps=4, solver="dpm++2m", scale=1.0)
    columns = same_noise(cache, requests)
    assert [c.kind for c in columns] == ["normalizing-flow", "denoiser", "denoiser"]
    assert columns[0].result.nfe == 1 and columns[1].result.nfe == 4
    alone = run_request(cache, SampleRequest(checkpoint="tiny-flow", sampler="ode", solver="dpm++2m", steps=4,
                                             guidance="none", class_index=0, seed=3, batch_size=3))
    assert torch.equal(columns[2].result.images, alone.images)
    assert "exact decode" in columns[0].how and "ODE dpm++2m, 4 steps" in columns[1].how


def test_family_requests_are_checked_before_any_sampling(cache):
    with pytest.raises(RequestError, match="steps must be between"):
        family_requests(cache, ["tiny-nice", "tiny"], class_index=0, seed=0, batch_size=2, steps=0,
                        solver="heun", scale=1.0)
    with pytest.raises(RequestError, match="between 1 and 4 checkpoints"):
        family_requests(cache, [], class_index=0, seed=0, batch_size=2, steps=3, solver="heun", scale=1.0)


def test_slerp_ends_at_its_endpoints_and_keeps_the_norm_of_orthogonal_noise():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    path = slerp(a, b, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(path[0], a) and torch.allclose(path[2], b)
    assert torch.allclose(path[1], torch.tensor([1.0, 1.0]) / math.sqrt(2))
    assert torch.allclose(path.norm(dim=1), torch.ones(3))


def test_latent_walk_starts_and_ends_at_the_two_seeds(cache):
    x_T = walk_noise((1, 8, 8), 11, 12, 5)
    requests = family_requests(cache, ["tiny-nice"], class_index=1, seed=0, batch_size=5, steps=3, solver="heun",
                               scale=1.0)
    (column,) = same_noise(cache, requests, x_T=x_T)
    for frame, seed in ((0, 11), (4, 12)):
        alone = run_request(cache, FlowRequest(checkpoint="tiny-nice", class_index=1, seed=seed, batch_size=1))
        assert torch.allclose(column.result.images[frame], alone.images[0], atol=1e-6)
    with pytest.raises(RequestError, match="frames must be between 2 and 16"):
        walk_noise((1, 8, 8), 0, 1, 1)


@pytest.mark.parametrize("name", ["vp-cosine", "flow"])
def test_ddim_inversion_of_the_exact_gaussian_denoiser_converges_at_first_order(name):
    # The exact PF-ODE maps x0 ~ N(MU, S^2) to (x0 - MU) / S at t = 1 (alpha_1 ~ 0, sigma_1 = 1), and back.
    schedule = Schedule(name)
    x_0 = (MU + S * torch.randn(64, 1, generator=torch.Generator().manual_seed(0))).double()
    latent_errors, round_trip_errors = {}, {}
    for steps in (10, 100):
        grid = time_grid(schedule, steps)
        x_1 = invert_ddim(gaussian_oracle(schedule), x_0, grid, schedule=schedule)
        latent_errors[steps] = float((x_1 - (x_0 - MU) / S).abs().max())
        back = sample_ddim(gaussian_oracle(schedule), x_1, grid, schedule=schedule)
        round_trip_errors[steps] = float((back - x_0).abs().max())
    # Euler is first order: 10x the steps, ~1/10 the error (measured 0.49 -> 0.052, 0.47 -> 0.050).
    for errors in (latent_errors, round_trip_errors):
        assert 7 < errors[10] / errors[100] < 13
        assert errors[100] < 0.06


def test_encode_image_is_exact_for_nice_and_reports_ode_errors(cache):
    image = torch.rand(1, 1, 8, 8) * 2 - 1
    nice, diffusion = encode_image(cache, ["tiny-nice", "tiny"], image, 2, step_counts=(2, 4))
    assert nice.kind == "normalizing-flow" and nice.reconstructions[0].max_error < 1e-5
    assert nice.bits_per_dim is not None and math.isfinite(nice.bits_per_dim)
    assert [r.steps for r in diffusion.reconstructions] == [2, 4]
    assert [r.nfe for r in diffusion.reconstructions] == [4, 8]
    assert diffusion.bits_per_dim is None and diffusion.latent.shape == (1, 8, 8)
    with pytest.raises(RequestError, match="makes \\(1, 8, 8\\) images"):
        encode_image(cache, ["tiny-nice"], torch.zeros(1, 1, 4, 4), 0)


def test_the_output_folder_keeps_a_bounded_number_of_files(tmp_path):
    import os

    from diffusion.app.outputs import output_path, pruned

    paths = []
    for i in range(12):
        path = output_path("grid", ".png", folder=tmp_path, keep=5)
        pruned()  # before the next file: the pruning thread must not see a file whose age is still being set
        os.utime(path, ns=(i * 10**9, i * 10**9))  # strictly increasing ages, whatever the clock's resolution
        paths.append(path)
    output_path("grid", ".png", folder=tmp_path, keep=5)
    pruned()
    left = sorted(os.listdir(tmp_path))
    assert len(left) == 5
    assert {os.path.basename(p) for p in paths[-4:]} <= set(left)  # the newest survive
