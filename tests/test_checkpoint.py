import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from conftest import TINY_CLASSES, tiny_unet
from diffusion.formats.checkpoint import FORMAT, CheckpointError, load_checkpoint, model_config, read_metadata, save_checkpoint


def write_tiny(path, **config_changes):
    unet = tiny_unet()
    config = model_config("denoiser", unet, class_names=TINY_CLASSES, schedule="vp-cosine", parameterization="v")
    save_checkpoint(path, "denoiser", unet, config | config_changes, {"steps": 3}, "card text")
    return unet


def test_round_trip_rebuilds_the_same_network(tmp_path):
    unet = write_tiny(tmp_path / "m.safetensors")
    loaded = load_checkpoint(tmp_path / "m.safetensors")
    assert loaded.kind == "denoiser" and loaded.class_names == TINY_CLASSES and loaded.card == "card text"
    assert loaded.network.config == unet.config and loaded.training == {"steps": 3}
    assert loaded.schedule.name == "vp-cosine" and loaded.parameterization == "v" and loaded.self_condition
    assert not loaded.network.training and not any(p.requires_grad for p in loaded.network.parameters())
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network(x, torch.zeros(2)), unet(x, torch.zeros(2)), atol=0, rtol=0)


def test_fp16_weights_load_as_float32(tmp_path):
    unet = tiny_unet()
    config = model_config("denoiser", unet, class_names=TINY_CLASSES, schedule="flow", parameterization="flow")
    save_checkpoint(tmp_path / "h.safetensors", "denoiser", unet, config, {}, "", dtype=torch.float16)
    loaded = load_checkpoint(tmp_path / "h.safetensors")
    assert loaded.network.stem.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.network.stem.weight, unet.stem.weight, atol=1e-3, rtol=1e-3)


def _rewrite(src, dst, tensors=None, metadata_changes=None):
    from safetensors.torch import load_file
    from safetensors import safe_open

    with safe_open(src, "pt") as f:
        metadata = dict(f.metadata())
    metadata.update(metadata_changes or {})
    metadata = {k: v for k, v in metadata.items() if v is not None}
    save_file(tensors if tensors is not None else load_file(src), dst, metadata=metadata)


@pytest.mark.parametrize("case, message", [
    ("random-bytes", "not a safetensors file"),
    ("empty", "not a safetensors file"),
    ("truncated", "truncated|corrupt"),
    ("huge-header", "header length field does not fit"),
    ("no-metadata", "no diffusion-playground metadata"),
    ("unknown-format", "unknown metadata format"),
    ("newer-format", "not supported by this version"),
    ("bad-json", "'config': not valid JSON"),
    ("bad-kind", "unknown kind"),
    ("bad-schedule", "unknown schedule"),
    ("missing-tensor", "missing tensors"),
    ("unexpected-tensor", "unexpected tensors"),
    ("wrong-shape", "has shape"),
    ("wrong-dtype", "dtype"),
])
def test_bad_files_fail_with_a_message_naming_the_problem(tmp_path, case, message):
    good = tmp_path / "good.safetensors"
    write_tiny(good)
    bad = tmp_path / "bad.safetensors"
    from safetensors.torch import load_file

    tensors = load_file(good)
    if case == "random-bytes":
        bad.write_bytes(bytes(range(256)) * 10)
    elif case == "empty":
        bad.write_bytes(b"")
    elif case == "truncated":
        bad.write_bytes(good.read_bytes()[:-100])
    elif case == "huge-header":
        bad.write_bytes(struct.pack("<Q", 2**62) + b"{}")
    elif case == "no-metadata":
        save_file(tensors, bad)
    elif case == "unknown-format":
        _rewrite(good, bad, metadata_changes={"format": None})
    elif case == "newer-format":
        _rewrite(good, bad, metadata_changes={"format": "diffusion-playground/99"})
    elif case == "bad-json":
        _rewrite(good, bad, metadata_changes={"config": "{not json"})
    elif case == "bad-kind":
        _rewrite(good, bad, metadata_changes={"kind": "vae"})
    elif case == "bad-schedule":
        config = json.loads(read_metadata(good)["config"] and json.dumps(read_metadata(good)["config"]))
        _rewrite(good, bad, metadata_changes={"config": json.dumps(config | {"schedule": "sqrt"})})
    elif case == "missing-tensor":
        _rewrite(good, bad, tensors={k: v for k, v in tensors.items() if k != "stem.weight"})
    elif case == "unexpected-tensor":
        _rewrite(good, bad, tensors=tensors | {"extra.weight": torch.zeros(3)})
    elif case == "wrong-shape":
        _rewrite(good, bad, tensors=tensors | {"stem.weight": torch.zeros(1, 2, 3)})
    elif case == "wrong-dtype":
        _rewrite(good, bad, tensors=tensors | {"stem.weight": tensors["stem.weight"].to(torch.int32)})
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(bad)
    assert "bad.safetensors" in str(error.value)


def test_missing_file_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_metadata_is_read_without_tensors(tmp_path):
    write_tiny(tmp_path / "m.safetensors")
    meta = read_metadata(tmp_path / "m.safetensors")
    assert meta["format"] == FORMAT and meta["config"]["class_names"] == list(TINY_CLASSES)
