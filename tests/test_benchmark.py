"""Issue 30's instrument: the network's share of the machine's matmul peak, and the channels_last call it compares."""

import math

import torch

from conftest import write_tiny_checkpoints
from diffusion.evaluation.benchmark import ChannelsLastCall, matmul_flops_per_second, share_of_peak
from diffusion.serving.engine import ModelCache


def test_channels_last_gives_the_eager_networks_outputs(tmp_path):
    model = ModelCache(write_tiny_checkpoints(tmp_path / "ckpt")).get("tiny")
    x, log_snr, labels = torch.randn(5, 1, 8, 8), torch.linspace(-5, 5, 5), torch.tensor([0, 1, 2, 3, 0])
    with torch.inference_mode():
        eager = model.network(x, log_snr, labels, None)
        nhwc = ChannelsLastCall(model.network)(x, log_snr, labels, None)
    torch.testing.assert_close(nhwc, eager, rtol=1e-5, atol=1e-5)  # float rounding: another summation order


def test_share_of_peak_is_a_fraction_per_variant_and_batch(tmp_path):
    model = ModelCache(write_tiny_checkpoints(tmp_path / "ckpt")).get("tiny")
    assert matmul_flops_per_second(256, 2) > 1e8
    share = share_of_peak(model, {"eager": model.network, "channels_last": ChannelsLastCall(model.network)},
                          batches=(1, 4), repeats=1, forwards=1)
    assert set(share["rows"]) == {"eager", "channels_last"} and set(share["rows"]["eager"]) == {1, 4}
    assert all(0 < value < 1.5 and math.isfinite(value) for row in share["rows"].values() for value in row.values())
