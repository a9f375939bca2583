import pytest
import torch

from conftest import tiny_classifier, tiny_unet
from diffusion.core.denoiser import CLASSIFIER_GUIDANCE_MIN_LOG_SNR, Denoiser, Guidance, classifier_log_prob_gradient
from diffusion.core.objective import ObjectiveConfig, diffusion_loss
from diffusion.core.sampling import draw_noise, image_generators, sample_ddim
from diffusion.core.schedules import Schedule, time_grid

SCHEDULE = Schedule("vp-cosine")
LABELS = torch.tensor([0, 1, 2, 1])


def x_t(seed=0):
    return torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def call(network, guidance, labels=LABELS, t=0.6, **kw):
    return Denoiser(network, SCHEDULE, "v", labels=labels, guidance=guidance, **kw)(x_t(), t)


@torch.inference_mode()
def test_cfg_scale_one_is_conditional_and_zero_is_unconditional():
    net = tiny_unet()
    conditional = call(net, Guidance("none"))
    unconditional = call(net, Guidance("none"), labels=torch.full((4,), 3))  # 3 is the null class
    assert not torch.allclose(conditional[0], unconditional[0], atol=1e-3)
    for w, expected in [(1.0, conditional), (0.0, unconditional)]:
        guided = call(net, Guidance("cfg", w))
        for got, want in zip(guided, expected):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # w > 1 extrapolates linearly: eps_w = eps_u + w (eps_c - eps_u)
    guided = call(net, Guidance("cfg", 3.0))
    torch.testing.assert_close(guided[1], unconditional[1] + 3 * (conditional[1] - unconditional[1]), atol=1e-5, rtol=1e-4)


def test_cfg_batches_both_rows_into_one_forward():
    net = tiny_unet()
    batches = []
    net.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    with torch.inference_mode():
        call(net, Guidance("cfg", 2.0))
    assert batches == [8]


def test_classifier_guidance_under_inference_mode_shifts_eps_by_the_gradient():
    net, classifier = tiny_unet(), tiny_classifier()
    alpha, sigma = (float(v) for v in SCHEDULE.alpha_sigma(torch.tensor(0.6, dtype=torch.float64)))
    log_snr = float(SCHEDULE.log_snr(torch.tensor(0.6)))
    with torch.inference_mode():
        plain = call(net, Guidance("none"), labels=None)  # unconditional model
        guided = call(net, Guidance("classifier", 2.0), classifier=classifier)
    # reference gradient, computed in ordinary autograd outside inference mode
    x = x_t().requires_grad_(True)
    logits = classifier(x / (alpha**2 + sigma**2) ** 0.5, torch.full((4,), log_snr))
    torch.log_softmax(logits, -1).gather(1, LABELS[:, None]).sum().backward()
    torch.testing.assert_close(guided[1], plain[1] - 2.0 * sigma * x.grad, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(guided[0], (x_t() - sigma * guided[1]) / alpha, atol=1e-5, rtol=1e-4)


def test_classifier_guidance_is_off_where_the_classifier_is_at_chance():
    """At the start of a vp-cosine grid (log-SNR -15) alpha is 5.5e-4: a classifier gradient would reach x0
    multiplied by sigma^2 / alpha, so below CLASSIFIER_GUIDANCE_MIN_LOG_SNR the model runs unguided."""
    net, classifier = tiny_unet(), tiny_classifier()
    times = {"pure noise": 1.0, "just below": float(SCHEDULE.t_from_log_snr(torch.tensor(CLASSIFIER_GUIDANCE_MIN_LOG_SNR - 0.1))),
             "just above": float(SCHEDULE.t_from_log_snr(torch.tensor(CLASSIFIER_GUIDANCE_MIN_LOG_SNR + 0.1)))}
    shifted = {}
    for where, t in times.items():
        with torch.inference_mode():
            plain = Denoiser(net, SCHEDULE, "v")(x_t(), t)
            guided = Denoiser(net, SCHEDULE, "v", labels=LABELS, guidance=Guidance("classifier", 5.0),
                              classifier=classifier)(x_t(), t)
        shifted[where] = float((guided[1] - plain[1]).abs().max())
    assert shifted["pure noise"] == 0 and shifted["just below"] == 0 and shifted["just above"] > 1e-3, shifted


class LinearProbe(torch.nn.Module):
    """logits = W flatten(x): its log-prob gradient points each class along its own pixel pattern."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, 64, generator=torch.Generator().manual_seed(5)))

    def forward(self, x, log_snr=None):
        return x.flatten(1) @ self.weight.T


def test_classifier_guidance_moves_samples_toward_the_class():
    net, probe = tiny_unet(), LinearProbe().requires_grad_(False)
    grid = time_grid(SCHEDULE, 10)
    x_T = draw_noise(image_generators(0, 32), (1, 8, 8))
    labels = torch.full((32,), 2)
    hits = {}
    for scale in (0.0, 1.0):
        with torch.inference_mode():
            denoise = Denoiser(net, SCHEDULE, "v", labels=labels, guidance=Guidance("classifier", scale), classifier=probe)
            images = sample_ddim(denoise, x_T, grid, schedule=SCHEDULE)
            hits[scale] = float((probe(images).argmax(1) == 2).float().mean())
    assert hits[0.0] < 0.6 and hits[1.0] > 0.9, hits


def test_classifier_gradient_works_inside_inference_mode_where_enable_grad_alone_fails():
    classifier = tiny_classifier()
    with torch.inference_mode():
        x = x_t()
        with pytest.raises(RuntimeError), torch.enable_grad():  # the naive way
            y = x.requires_grad_(True)
            torch.autograd.grad(classifier(y, torch.zeros(4)).sum(), y)
        gradient = classifier_log_prob_gradient(classifier, x_t(), 0.8, 0.6, 0.5, LABELS)
    assert gradient.shape == (4, 1, 8, 8) and gradient.abs().sum() > 0


def test_self_conditioning_feeds_the_previous_estimate():
    net = tiny_unet()
    seen = []
    original = net.forward
    net.forward = lambda x, log_snr, labels=None, x0_previous=None: (seen.append(x0_previous), original(x, log_snr, labels, x0_previous))[1]
    with torch.inference_mode():
        denoise = Denoiser(net, SCHEDULE, "v", labels=LABELS, self_condition=True)
        first, _ = denoise(x_t(), 0.9)
        denoise(x_t(1), 0.8)
        off = Denoiser(net, SCHEDULE, "v", labels=LABELS, self_condition=False)
        off(x_t(), 0.9)
        off(x_t(1), 0.8)
    assert torch.equal(seen[0], torch.zeros_like(first)) and torch.equal(seen[1], first)
    assert seen[2] is None and seen[3] is None  # the network then uses zeros itself


def test_bad_guidance_requests_fail_clearly():
    net = tiny_unet(self_condition=False)
    with pytest.raises(ValueError, match="finite"):
        Guidance("cfg", float("nan"))
    with pytest.raises(ValueError, match="noisy classifier"):
        Denoiser(net, SCHEDULE, "v", labels=LABELS, guidance=Guidance("classifier", 1.0))
    with pytest.raises(ValueError, match="self-conditioning"):
        Denoiser(net, SCHEDULE, "v", labels=LABELS, self_condition=True)
    with pytest.raises(ValueError, match="class labels"):
        Denoiser(net, SCHEDULE, "v", guidance=Guidance("cfg", 2.0))


@pytest.mark.parametrize("parameterization, schedule", [("v", "vp-cosine"), ("flow", "flow"), ("eps", "vp-linear")])
def test_self_conditioned_loss_backpropagates(parameterization, schedule):
    net = tiny_unet().train()
    config = ObjectiveConfig(schedule=schedule, parameterization=parameterization, self_condition=True, min_snr_gamma=5.0)
    images = torch.rand(8, 1, 8, 8) * 2 - 1
    torch.manual_seed(0)
    for _ in range(4):  # self-conditioning is used on about half the calls
        net.zero_grad()
        loss = diffusion_loss(net, images, torch.tensor([0, 1, 2, 0, 1, 2, 0, 1]), config)
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters() if p.requires_grad)
        assert net.stem.weight.grad.abs().sum() > 0
