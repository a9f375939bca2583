"""The DiT backbone (Peebles & Xie 2023, with SD3's 2-D position embedding and QK-normalisation)."""

import pytest
import torch

from diffusion.formats.checkpoint import load_checkpoint, model_config, save_checkpoint
from diffusion.core.denoiser import Denoiser
from diffusion.core.guidance import Guidance
from diffusion.models import DiTConfig, build_network
from diffusion.models.dit import DiTBlock, SelfAttention, patchify, sincos_position_embedding_2d, unpatchify
from diffusion.core.sampling import SAMPLERS, draw_noise, image_generators
from diffusion.core.schedules import Schedule, time_grid

TINY = DiTConfig(image_size=8, patch_size=2, width=32, depth=2, heads=2, num_classes=3, self_condition=True,
                 embedding_dim=16)


def tiny_dit(seed=0, **changes):
    torch.manual_seed(seed)
    network = build_network("DiT", DiTConfig(**{**TINY.to_dict(), **changes}))
    with torch.no_grad():  # leave adaLN-Zero's zero start: a trained network's modulation is not zero
        for p in network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return network.eval()


def test_shapes_and_token_count():
    config = DiTConfig(num_classes=10, self_condition=True)
    assert config.tokens == 196  # 28x28 in patches of 2
    network = build_network("DiT", config)
    x = torch.randn(3, 1, 28, 28)
    out = network(x, torch.zeros(3), torch.tensor([0, 5, 10]), torch.randn(3, 1, 28, 28))
    assert out.shape == x.shape
    assert torch.count_nonzero(out) == 0  # the head starts at zero: a fresh DiT predicts 0


def test_patchify_round_trip_and_each_token_is_one_patch():
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    tokens = patchify(x, 2)
    assert tokens.shape == (2, 16, 12)
    assert torch.equal(unpatchify(tokens, 2, 3, 8), x)
    # token 5 is patch (row 1, column 1): pixels [2:4, 2:4] of every channel
    assert torch.equal(tokens[0, 5].reshape(2, 2, 3).permute(2, 0, 1), x[0, :, 2:4, 2:4])


def test_2d_position_embedding_encodes_rows_and_columns_separately():
    pos = sincos_position_embedding_2d(4, 16).reshape(4, 4, 16)
    # the first half depends on the row only, the second on the column only
    assert torch.allclose(pos[2, 0, :8], pos[2, 3, :8]) and torch.allclose(pos[0, 2, 8:], pos[3, 2, 8:])
    assert not torch.allclose(pos[1, 0, :8], pos[2, 0, :8]) and not torch.allclose(pos[0, 1, 8:], pos[0, 2, 8:])
    assert len({tuple(v.tolist()) for v in pos.reshape(16, 16)}) == 16  # every position distinct


def test_adaln_zero_makes_a_fresh_block_the_identity():
    block = DiTBlock(32, 2, 4.0, qk_norm=True)
    x, condition = torch.randn(2, 16, 32), torch.randn(2, 32)
    assert torch.equal(block(x, condition), x)


def test_qk_norm_keeps_attention_logits_bounded_when_q_and_k_grow():
    torch.manual_seed(0)
    x = torch.randn(2, 16, 32)
    for qk_norm, bounded in ((True, True), (False, False)):
        attention = SelfAttention(32, 2, qk_norm)
        before = attention.logits(x).abs().max()
        with torch.no_grad():
            attention.qkv.weight[:64] *= 100  # queries and keys 100x larger
            attention.qkv.bias[:64] *= 100
        after = attention.logits(x).abs().max()
        if bounded:  # RMS-normalised q, k of size d: |q.k| / sqrt(d) <= sqrt(d) (gains 1)
            assert after <= 16 ** 0.5 + 1e-4 and after / before < 2
        else:
            assert after / before > 1000


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_the_dit_denoises_under_every_sampler_with_guidance(sampler):
    schedule = Schedule("flow")
    network = tiny_dit()
    labels = torch.tensor([0, 2])
    options = {"ode": {"solver": "heun"}, "sde": {"stochasticity": 1.0}}.get(sampler, {})
    grid = time_grid(schedule, 12, "log-snr")
    with torch.inference_mode():
        denoise = Denoiser(network, schedule, "flow", labels=labels, guidance=Guidance("cfg", 2.0), self_condition=True)
        images = SAMPLERS[sampler].sample(denoise, draw_noise(image_generators(0, 2), (1, 8, 8)), grid,
                                          schedule=schedule, generators=image_generators(0, 2), **options)
    assert images.shape == (2, 1, 8, 8) and torch.isfinite(images).all()
    assert denoise.nfe == SAMPLERS[sampler].nfe(12, **options)


def test_a_dit_checkpoint_round_trips(tmp_path):
    network = tiny_dit()
    path = save_checkpoint(tmp_path / "dit.safetensors", "denoiser", network,
                           model_config("denoiser", network, class_names=("a", "b", "c"), schedule="flow",
                                        parameterization="flow"), {"steps": 0}, "A tiny DiT.")
    loaded = load_checkpoint(path)
    x = torch.randn(2, 1, 8, 8)
    args = (x, torch.zeros(2), torch.tensor([0, 1]), torch.zeros_like(x))
    assert torch.equal(loaded.network(*args), network(*args))


@pytest.mark.parametrize("change", [dict(depth=10**6), dict(width=10**7), dict(patch_size=3), dict(heads=3),
                                    dict(mlp_ratio=1e9), dict(depth=True)])
def test_hostile_dit_configs_are_refused_before_anything_is_built(change):
    with pytest.raises(ValueError):
        DiTConfig(**{**TINY.to_dict(), **change})
