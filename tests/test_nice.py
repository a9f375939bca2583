"""NICE: exact inverse, exact log-determinant, closed-form likelihood, units, and its checkpoint kind."""

import math

import pytest
import torch

from diffusion.formats.checkpoint import CheckpointError, load_checkpoint, model_config, save_checkpoint
from diffusion.core.likelihood import BIN_WIDTH, bits_per_dim, uniform_dequantize
from diffusion.models import NICEConfig, build_network
from diffusion.models.nice import standard_normal_log_prob


def random_nice(config: NICEConfig, seed: int = 0, scale_std: float = 0.3):
    """A NICE whose couplings are not the identity: default Linear init for every layer, random log-scales."""
    torch.manual_seed(seed)
    network = build_network("NICE", config)
    with torch.no_grad():
        for coupling in network.couplings:
            coupling.shift[-1].reset_parameters()
        network.log_scale.normal_(0, scale_std)
    return network.eval()


SHIPPED_SIZE = NICEConfig(num_classes=10, couplings=4, hidden_width=512, hidden_layers=4)  # fashion-nice's config
TINY = NICEConfig(image_size=4, couplings=4, hidden_width=32, hidden_layers=2, num_classes=3, class_embedding_dim=4)


def test_encode_decode_are_exact_inverses_at_the_shipped_size():
    network = random_nice(SHIPPED_SIZE)
    x = torch.rand(8, 1, 28, 28) * 2 - 1
    labels = torch.arange(8) % 10
    with torch.no_grad():
        z = network.encode(x, labels)
        assert (z - x).abs().max() > 0.1  # the flow does something
        assert (network.decode(z, labels) - x).abs().max() < 1e-5
        z2 = torch.randn(8, 1, 28, 28)
        assert (network.encode(network.decode(z2, labels), labels) - z2).abs().max() < 1e-5


def test_log_determinant_equals_slogdet_of_the_autograd_jacobian():
    network = random_nice(TINY, seed=1)  # 16 dimensions
    x = torch.randn(1, 1, 4, 4)
    label = torch.tensor([2])
    jacobian = torch.autograd.functional.jacobian(lambda v: network.encode(v.view(1, 1, 4, 4), label).flatten(),
                                                  x.flatten())  # (16, 16)
    sign, logabsdet = torch.linalg.slogdet(jacobian.double())
    assert sign.item() == 1
    assert float(network.log_det().detach()) == pytest.approx(float(logabsdet), abs=1e-5)
    assert float(network.log_det().detach()) != pytest.approx(0.0, abs=1e-3)


def test_log_likelihood_with_identity_couplings_is_the_closed_form_gaussian():
    network = build_network("NICE", TINY).eval()  # couplings start as the identity (zero last layers)
    with torch.no_grad():
        network.log_scale.copy_(torch.linspace(-1.0, 1.5, 16))
    x = torch.randn(5, 1, 4, 4)
    labels = torch.tensor([0, 1, 2, 0, 1])
    # z = exp(s) x with z ~ N(0, I)  <=>  x_d ~ N(0, exp(-2 s_d))
    s = network.log_scale.detach()
    std = torch.exp(-s)
    expected = (-0.5 * (x.flatten(1) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)).sum(1)
    with torch.no_grad():
        assert torch.allclose(network(x, labels), expected, atol=1e-5)


def test_standard_normal_log_prob_at_zero():
    assert float(standard_normal_log_prob(torch.zeros(1, 10))) == pytest.approx(-5 * math.log(2 * math.pi))


def test_bits_per_dim_of_known_densities():
    dims = 784
    # The uniform density on [-1, 1]^D (log p = -D log 2) spends exactly 8 bits on every 8-bit pixel.
    assert float(bits_per_dim(torch.tensor(-dims * math.log(2.0)), dims)) == pytest.approx(8.0)
    # A density of 1 / BIN_WIDTH per dimension puts all mass in one bin per pixel: 0 bits.
    assert float(bits_per_dim(torch.tensor(-dims * math.log(BIN_WIDTH)), dims)) == pytest.approx(0.0, abs=1e-9)
    # Hand-computed: log p = -100 nats over D = 2: -(-100 + 2 ln(1/128)) / (2 ln 2) = 79.1348...
    assert float(bits_per_dim(torch.tensor(-100.0), 2)) == pytest.approx((100 + 2 * math.log(128)) / (2 * math.log(2)))


def test_uniform_dequantization_stays_inside_each_pixels_bin():
    pixels = torch.tensor([0, 1, 127, 255], dtype=torch.uint8).repeat(1000)
    x = uniform_dequantize(pixels, torch.Generator().manual_seed(0))
    low = pixels.double() * BIN_WIDTH - 1
    assert bool(((x >= low - 1e-6) & (x < low + BIN_WIDTH + 1e-6)).all())
    again = uniform_dequantize(pixels, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


def test_conditional_nice_needs_labels_and_unconditional_refuses_them():
    network = random_nice(TINY)
    with pytest.raises(ValueError, match="class-conditional"):
        network.encode(torch.zeros(2, 1, 4, 4))
    unconditional = build_network("NICE", NICEConfig(image_size=4, hidden_width=8, hidden_layers=1))
    with pytest.raises(ValueError, match="unconditional"):
        unconditional.encode(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))


def write_tiny_nice(path, config=TINY, class_names=("a", "b", "c")):
    network = random_nice(config)
    save_checkpoint(path, "normalizing-flow", network, model_config("normalizing-flow", network, class_names=class_names),
                    {"steps": 0}, "A tiny NICE.")
    return network


def test_nice_checkpoint_round_trip(tmp_path):
    network = write_tiny_nice(tmp_path / "nice.safetensors")
    loaded = load_checkpoint(tmp_path / "nice.safetensors")
    assert loaded.kind == "normalizing-flow" and loaded.config["network"] == "NICE"
    x, labels = torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 2])
    with torch.no_grad():
        assert torch.equal(loaded.network(x, labels), network(x, labels))


@pytest.mark.parametrize("change, message", [
    (lambda m: m | {"network_config": m["network_config"] | {"hidden_width": 64}}, "shape"),
    (lambda m: m | {"network_config": m["network_config"] | {"couplings": 0}}, "couplings"),
    (lambda m: m | {"network_config": m["network_config"] | {"mystery": 1}}, "unknown NICEConfig fields"),
    (lambda m: m | {"class_names": ["a"]}, "1 class names for 3 classes"),
])
def test_bad_nice_files_get_a_named_error(tmp_path, change, message):
    import json

    from safetensors.torch import load_file, save_file

    good = tmp_path / "good.safetensors"
    write_tiny_nice(good)
    meta = load_checkpoint(good)
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(good), bad, metadata={"format": "diffusion-playground/1", "kind": "normalizing-flow",
                                              "config": json.dumps(change(meta.config)), "training": "{}", "card": ""})
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(bad)
    assert "bad.safetensors" in str(error.value)


def test_a_nice_network_cannot_pose_as_a_denoiser(tmp_path):
    network = random_nice(TINY)
    config = model_config("normalizing-flow", network, class_names=["a", "b", "c"])
    with pytest.raises(CheckpointError, match="cannot serve as kind 'denoiser'"):
        save_checkpoint(tmp_path / "x.safetensors", "denoiser", network,
                        config | {"schedule": "flow", "parameterization": "flow"}, {}, "")
