"""The guidance methods (guidance.py) against their equations, their neutral settings against plain CFG, and each
through the Denoiser and every sampler."""

import math

import pytest
import torch
from torch import nn

from conftest import tiny_unet
from diffusion.core.denoiser import Denoiser
from diffusion.core.guidance import (AdaptiveProjectedGuidance, Guidance, cfg_combine, dynamic_threshold, project_onto,
                                rescale_to_conditional)
from diffusion.core.sampling import draw_noise, image_generators, sample_ddim, sample_ddpm, sample_ode
from diffusion.core.schedules import Schedule, time_grid

SCHEDULE = Schedule("vp-cosine")
LABELS = torch.tensor([0, 1, 2, 1])


def pair(seed=0, shape=(4, 1, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def x_t(seed=0):
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def denoise(network, guidance, t=0.6, **kw):
    return Denoiser(network, SCHEDULE, "v", labels=LABELS, guidance=guidance, **kw)(x_t(), t)


# --- the equations ---------------------------------------------------------------------------------------------
def test_rescale_matches_the_conditional_std_at_phi_one_and_blends_linearly():
    cond, uncond = pair()
    guided = cfg_combine(cond, uncond, 5.0)
    full = rescale_to_conditional(guided, cond, 1.0)
    torch.testing.assert_close(full.flatten(1).std(dim=1), cond.flatten(1).std(dim=1))
    half = rescale_to_conditional(guided, cond, 0.5)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * guided)
    assert rescale_to_conditional(guided, cond, 0.0) is guided


def test_apg_neutral_is_cfg_and_eta_zero_removes_the_parallel_part():
    cond, uncond = pair(1)
    torch.testing.assert_close(AdaptiveProjectedGuidance(1.0, 0.0, 0.0)(cond, uncond, 4.0), cfg_combine(cond, uncond, 4.0))
    update = AdaptiveProjectedGuidance(0.0, 0.0, 0.0)(cond, uncond, 4.0) - cond
    dot = (update.flatten(1).double() * cond.flatten(1).double()).sum(dim=1)
    assert dot.abs().max() < 1e-4 * update.flatten(1).norm(dim=1).max() * cond.flatten(1).norm(dim=1).max()
    # what is left is (w - 1) times the orthogonal part of (x_c - x_u)
    torch.testing.assert_close(update, 3.0 * project_onto(cond - uncond, cond)[1])


def test_apg_bounds_the_update_norm_and_keeps_a_reverse_momentum_average():
    cond, uncond = pair(2)
    bounded = AdaptiveProjectedGuidance(1.0, 0.5, 0.0)(cond, uncond, 3.0)
    norms = ((bounded - cond) / 2.0).flatten(1).norm(dim=1)
    assert torch.all(norms <= 0.5 + 1e-5) and torch.all(norms > 0.49)  # every image's update was longer than 0.5
    apg = AdaptiveProjectedGuidance(1.0, 0.0, -0.5)
    first = apg(cond, uncond, 3.0)
    cond2, uncond2 = pair(3)
    second = apg(cond2, uncond2, 3.0)
    torch.testing.assert_close(first, cfg_combine(cond, uncond, 3.0))  # nothing to average yet
    expected = cond2 + 2.0 * ((cond2 - uncond2) - 0.5 * (cond - uncond))  # D_2 = d_2 + beta D_1
    torch.testing.assert_close(second, expected)


def test_projection_splits_a_vector_into_parallel_and_orthogonal_parts():
    v, d = torch.tensor([[3.0, 4.0]]), torch.tensor([[2.0, 0.0]])
    parallel, orthogonal = project_onto(v, d)
    assert parallel.tolist() == [[3.0, 0.0]] and orthogonal.tolist() == [[0.0, 4.0]]
    parallel, orthogonal = project_onto(v, torch.zeros_like(d))  # no direction: all orthogonal
    assert parallel.tolist() == [[0.0, 0.0]] and orthogonal.tolist() == [[3.0, 4.0]]


def test_dynamic_threshold_by_hand():
    # |x| = 0, 0.5, ..., 4.5 (10 values); the 0.8 quantile by linear interpolation is 3.6
    x = (torch.arange(10.0) * 0.5 * torch.tensor([1, -1] * 5)).reshape(1, 1, 2, 5)
    s = 0.8 * 4.5  # numpy-style: position 0.8 * 9 = 7.2 -> 3.5 + 0.2 * 0.5 = 3.6
    out = dynamic_threshold(x, 0.8)
    torch.testing.assert_close(out, x.clamp(-s, s) / s)
    assert out.abs().max() <= 1
    inside = torch.full((1, 1, 2, 2), 0.3)  # percentile below 1: s = 1, nothing changes
    torch.testing.assert_close(dynamic_threshold(inside, 0.99), inside)
    assert dynamic_threshold(x, 0.0) is x


def test_guidance_settings_are_checked():
    for bad in [dict(rescale=1.5), dict(threshold=1.0), dict(apg_norm=-1.0), dict(apg_momentum=1.0),
                dict(interval=(2.0, -2.0)), dict(mode="magic"), dict(scale=math.nan)]:
        with pytest.raises(ValueError):
            Guidance(**{"mode": "cfg", **bad})
    with pytest.raises(ValueError, match="rescale and APG"):
        Denoiser(tiny_unet(), SCHEDULE, "v", labels=LABELS, guidance=Guidance("none", rescale=0.5))


# --- through the Denoiser --------------------------------------------------------------------------------------
class UnconditionalBranch(nn.Module):
    """The network with every label replaced by its null class: autoguidance by this 'weaker model' is CFG."""

    def __init__(self, network):
        super().__init__()
        self.network, self.config = network, network.config

    def forward(self, x, log_snr, labels, x0_previous=None):
        return self.network(x, log_snr, torch.full_like(labels, self.config.null_class), x0_previous)


@torch.inference_mode()
def test_every_method_at_its_neutral_setting_is_plain_cfg():
    net = tiny_unet()
    plain = denoise(net, Guidance("cfg", 3.0))
    neutral = [Guidance("cfg", 3.0, rescale=0.0), Guidance("cfg", 3.0, interval=(-math.inf, math.inf)),
               Guidance("cfg", 3.0, apg_eta=1.0, apg_norm=0.0, apg_momentum=0.0), Guidance("cfg", 3.0, threshold=0.0)]
    for guidance in neutral:
        for got, want in zip(denoise(net, guidance), plain):
            assert torch.equal(got, want)
    # interval covering every log-SNR the schedule has: plain CFG, bit for bit
    for got, want in zip(denoise(net, Guidance("cfg", 3.0, interval=(-40.0, 40.0))), plain):
        assert torch.equal(got, want)
    # autoguidance by the model's own unconditional branch is classifier-free guidance
    auto = denoise(net, Guidance("autoguidance", 3.0), guide=(UnconditionalBranch(net), "v"))
    for got, want in zip(auto, plain):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_outside_the_interval_the_conditional_model_runs_alone_in_one_half_size_forward():
    net = tiny_unet()
    rows = []
    net.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    log_snr = float(SCHEDULE.log_snr(torch.tensor(0.6)))
    outside = denoise(net, Guidance("cfg", 3.0, interval=(log_snr + 1, log_snr + 5)))
    conditional = denoise(net, Guidance("none"))
    inside = denoise(net, Guidance("cfg", 3.0, interval=(log_snr - 1, log_snr + 1)))
    assert rows == [4, 4, 8]
    for got, want in zip(outside, conditional):
        assert torch.equal(got, want)
    assert not torch.allclose(inside[0], conditional[0])


@torch.inference_mode()
def test_modified_predictions_keep_eps_consistent_with_x_t():
    net = tiny_unet()
    alpha, sigma = (float(v) for v in SCHEDULE.alpha_sigma(torch.tensor(0.6, dtype=torch.float64)))
    for guidance in [Guidance("cfg", 5.0, rescale=0.7), Guidance("cfg", 5.0, apg_eta=0.0, apg_norm=2.0),
                     Guidance("cfg", 5.0, threshold=0.9)]:
        x0, eps = denoise(net, guidance)
        torch.testing.assert_close(alpha * x0 + sigma * eps, x_t(), atol=1e-5, rtol=1e-5)


@torch.inference_mode()
def test_autoguidance_uses_the_guide_on_the_class_and_extrapolates_away_from_it():
    net, weak = tiny_unet(), tiny_unet(seed=7)
    conditional = denoise(net, Guidance("none"))
    weak_conditional = Denoiser(weak, SCHEDULE, "v", labels=LABELS)(x_t(), 0.6)
    auto = denoise(net, Guidance("autoguidance", 2.5), guide=(weak, "v"))
    torch.testing.assert_close(auto[0], weak_conditional[0] + 2.5 * (conditional[0] - weak_conditional[0]))
    with pytest.raises(ValueError, match="needs a guide"):
        Denoiser(net, SCHEDULE, "v", labels=LABELS, guidance=Guidance("autoguidance", 2.0))


@pytest.mark.parametrize("guidance", [Guidance("cfg", 4.0, rescale=0.7), Guidance("cfg", 4.0, interval=(-3.0, 3.0)),
                                      Guidance("cfg", 4.0, apg_eta=0.0, apg_norm=5.0, apg_momentum=-0.5),
                                      Guidance("cfg", 4.0, threshold=0.95), Guidance("autoguidance", 2.0)],
                         ids=["rescale", "interval", "apg", "threshold", "autoguidance"])
@torch.inference_mode()
def test_each_method_composes_with_every_sampler(guidance):
    net = tiny_unet()
    guide = (tiny_unet(seed=3), "v") if guidance.mode == "autoguidance" else None
    generators = image_generators(0, 4)
    x_T = draw_noise(generators, (1, 8, 8), torch.device("cpu"))
    grid = time_grid(SCHEDULE, 6)
    for run in [lambda d: sample_ddim(d, x_T, grid, schedule=SCHEDULE),
                lambda d: sample_ddpm(d, x_T, grid, schedule=SCHEDULE, generators=image_generators(0, 4)),
                lambda d: sample_ode(d, x_T, grid, schedule=SCHEDULE, solver="heun")]:
        d = Denoiser(net, SCHEDULE, "v", labels=LABELS, guidance=guidance, guide=guide, self_condition=True)
        images = run(d)
        assert images.shape == x_T.shape and torch.isfinite(images).all()
