"""A request inside a PNG and back (diffusion.serving.settings): exact round trips, readable text, hostile chunks refused."""

import json
from dataclasses import replace

import pytest
from PIL import Image, PngImagePlugin

from diffusion.serving.engine import FlowRequest, ModelCache, RequestError, SampleRequest, run_request
from diffusion.serving.settings import CHUNK, FORMAT, png_info, readable_parameters, request_from_png, result_png_info

CLASSES = ("circle", "square", "cross")


@pytest.mark.parametrize("request_", [
    SampleRequest(checkpoint="tiny", sampler="ode", solver="dpm++2m", steps=7, guidance="cfg", class_index=2,
                  scale=4.5, rescale=0.7, interval_low=-2.0, self_condition=None, seed=2**63 - 1, batch_size=3),
    SampleRequest(checkpoint="tiny-flow", guidance="none", class_index=None, self_condition=False, clip_x0=True),
    FlowRequest(checkpoint="tiny-nice", class_index=1, temperature=0.7, seed=5, batch_size=2, first_index=9),
])
def test_every_field_survives_the_round_trip(tmp_path, request_):
    path = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(path, pnginfo=png_info(request_, CLASSES, "ab" * 32, 8))
    assert request_from_png(path) == (request_, "ab" * 32)


def test_the_readable_chunk_follows_automatic1111():
    text = readable_parameters(SampleRequest(checkpoint="tiny", class_index=1, scale=3.0, seed=7), CLASSES,
                               "0123456789abcdef", 8)
    assert text == ("square\nSteps: 50, Sampler: ddim, Guidance: cfg, CFG scale: 3, Seed: 7, Batch size: 16, Size: 8x8, "
                    "Model hash: 0123456789, Model: tiny")
    flow = readable_parameters(FlowRequest(checkpoint="tiny-nice", class_index=None, temperature=0.8), CLASSES)
    assert flow.startswith("no class\nSteps: 1, Sampler: exact decode, Temperature: 0.8")


def chunk_png(tmp_path, text: str, name="bad.png"):
    info = PngImagePlugin.PngInfo()
    info.add_text(CHUNK, text)
    Image.new("L", (4, 4)).save(tmp_path / name, pnginfo=info)
    return tmp_path / name


@pytest.mark.parametrize("text, message", [
    ("[" * 50_000 + "]" * 50_000, "at most 20,000"),
    ("[" * 5_000 + "]" * 5_000, "nested 5,000 levels deep"),
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "other/1", "kind": "sample", "request": {}}), "not of format"),
    (json.dumps({"format": FORMAT, "kind": "sample", "request": {"steps": 5, "evil": 1}}), "unknown fields evil"),
    (json.dumps({"format": FORMAT, "kind": "sample", "request": [1, 2]}), "hold no request"),
])
def test_hostile_settings_are_refused_with_a_sentence(tmp_path, text, message):
    with pytest.raises(RequestError, match=message):
        request_from_png(chunk_png(tmp_path, text))


def test_files_without_settings_are_refused(tmp_path):
    Image.new("L", (4, 4)).save(tmp_path / "plain.png")
    with pytest.raises(RequestError, match="carries no diffusion-playground settings"):
        request_from_png(tmp_path / "plain.png")
    Image.new("L", (4, 4)).save(tmp_path / "x.jpg")
    with pytest.raises(RequestError, match="not a PNG"):
        request_from_png(tmp_path / "x.jpg")
    (tmp_path / "junk.png").write_bytes(b"junk")
    with pytest.raises(RequestError, match="not an image"):
        request_from_png(tmp_path / "junk.png")


def test_one_image_of_a_batch_regenerates_alone(checkpoint_dir):
    """A gallery image's settings are a one-image request with that image's noise: the same pixels."""
    cache = ModelCache(checkpoint_dir)
    result = run_request(cache, SampleRequest(checkpoint="tiny", steps=4, seed=3, batch_size=5, class_index=1))
    info = result_png_info(result, 3)
    path = checkpoint_dir / "one.png"
    Image.new("L", (8, 8)).save(path, pnginfo=info)
    alone, sha = request_from_png(path)
    assert alone == replace(result.request, batch_size=1, first_index=3) and sha == result.checkpoint_sha256
    again = run_request(cache, alone).images[0]  # a batch of 1: the same noise, float rounding of another batch size
    assert (again - result.images[3]).abs().max() < 1e-5
