import os
import threading
from dataclasses import replace

import pytest
import torch

from conftest import write_tiny_checkpoints
from diffusion.serving.engine import (ModelCache, RequestError, SampleRequest, SamplingError, expected_nfe, run_request)
from diffusion.core.sampling import draw_noise, image_generators

BASE = SampleRequest(checkpoint="tiny", sampler="ddim", steps=4, guidance="cfg", class_index=1, scale=2.0,
                     seed=3, batch_size=4)


@pytest.fixture
def cache(checkpoint_dir):
    return ModelCache(checkpoint_dir, capacity=2, device="cpu")


def test_cache_hits_misses_reloads_and_evicts(cache, checkpoint_dir):
    first = cache.get("tiny")
    assert cache.get("tiny") is first and cache.loads == 1
    # a changed file is reloaded
    path = checkpoint_dir / "tiny.safetensors"
    write_tiny_checkpoints(checkpoint_dir, schedule="flow", parameterization="flow")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    second = cache.get("tiny")
    assert second is not first and cache.loads == 2 and second.schedule.name == "flow"
    # LRU with capacity 2
    cache.get("tiny-flow")
    cache.get("tiny-evaluator")
    cache.get("tiny")
    assert cache.loads == 5


def test_entries_report_broken_files_and_the_rest_still_work(cache, checkpoint_dir):
    (checkpoint_dir / "broken.safetensors").write_bytes(b"garbage")
    entries = {e.name: e for e in cache.entries()}
    assert not entries["broken"].available and "not a safetensors file" in entries["broken"].error
    assert entries["tiny"].available and entries["tiny"].kind == "denoiser"
    with pytest.raises(RequestError, match="unavailable"):
        cache.get("broken")
    assert run_request(cache, BASE).images.shape == (4, 1, 8, 8)


@pytest.mark.parametrize("name", ["../tiny", "/etc/passwd", ".hidden", "sub/tiny", "", "missing"])
def test_only_plain_names_inside_the_folder_load(cache, name):
    with pytest.raises(RequestError):
        cache.get(name)


@pytest.mark.parametrize("changes, message", [
    ({"steps": 0}, "steps must be between 1 and 1000"),
    ({"steps": 1001}, "steps must be between 1 and 1000"),
    ({"steps": 2.5}, "steps must be a whole number"),
    ({"steps": True}, "steps must be a whole number"),
    ({"batch_size": 0}, "batch size"),
    ({"batch_size": 65}, "batch size"),
    ({"class_index": 3}, "class must be between 0 and 2"),
    ({"class_index": -1}, "class must be between"),
    ({"scale": float("nan")}, "scale must be finite"),
    ({"scale": float("inf")}, "scale must be finite"),
    ({"scale": -1.0}, "scale must be between"),
    ({"eta": 2.0}, "eta must be between"),
    ({"seed": -5}, "seed must be a whole number from 0 to 2\\^63 - 1, got -5"),
    ({"sampler": "plms"}, "unknown sampler"),
    ({"sampler": "ode", "solver": "rk4"}, "unknown ODE solver"),
    ({"spacing": "karras"}, "unknown time spacing"),
    ({"guidance": "magic"}, "unknown guidance mode"),
    ({"guidance": "cfg", "class_index": None}, "guidance needs a class"),
    ({"checkpoint": "tiny-flow", "self_condition": True}, "not trained with self-conditioning"),
    ({"checkpoint": "tiny-evaluator"}, "kind 'evaluator'.*does not generate images"),
    ({"checkpoint": "tiny-nice"}, "normalizing flow: .* takes a temperature, not a sampler"),
    ({"checkpoint": "../../etc/passwd"}, "not a plain file name"),
])
def test_validation_errors_are_clear(cache, changes, message):
    with pytest.raises(RequestError, match=message):
        run_request(cache, replace(BASE, **changes))


def test_classifier_guidance_needs_a_classifier(cache, checkpoint_dir):
    assert run_request(cache, replace(BASE, guidance="classifier")).nfe == 4  # runs under inference mode
    (checkpoint_dir / "tiny-noisy-classifier.safetensors").unlink()
    with pytest.raises(RequestError, match="needs a noisy classifier"):
        run_request(cache, replace(BASE, guidance="classifier"))


@pytest.mark.parametrize("sampler, solver", [("ddpm", "heun"), ("ddim", "heun"), ("ode", "heun"), ("ode", "dpm++2m")])
def test_same_request_same_pixels_and_batch_independence(cache, sampler, solver):
    request = replace(BASE, sampler=sampler, solver=solver, eta=0.5, self_condition=True, batch_size=16)
    a, b = run_request(cache, request), run_request(cache, request)
    assert torch.equal(a.images, b.images)
    for index in (0, 5):
        single = run_request(cache, replace(request, batch_size=1, first_index=index))
        # Same noise bit for bit; the network's batched kernels may round differently (last bits only).
        torch.testing.assert_close(single.images[0], a.images[index], atol=1e-5, rtol=0)
    assert not torch.equal(a.images[0], a.images[1])


def test_noise_is_drawn_on_cpu_generators_then_moved():
    generators = image_generators(0, 2)
    assert all(g.device.type == "cpu" for g in generators)
    moved = draw_noise(image_generators(0, 2), (1, 4, 4), device="meta")  # randn on meta with a CPU generator would fail
    assert moved.device.type == "meta" and moved.shape == (2, 1, 4, 4)


def test_progress_and_previews(cache):
    progress, previews = [], []
    request = replace(BASE, sampler="ode", solver="heun", steps=5)
    result = run_request(cache, request, progress=lambda done, total: progress.append((done, total)),
                         preview=lambda step, t, x_t, x0: previews.append(step), record_trajectory=True,
                         trace_guidance=True)
    assert result.nfe == expected_nfe(request) == 9
    assert progress == [(i, 9) for i in range(1, 10)]
    assert previews == list(range(5)) and [s for s, *_ in result.trajectory] == list(range(5))
    assert result.trajectory[-1][1] == 0.0 and len(result.guidance_trace) == 9
    assert run_request(cache, request).guidance_trace == []  # off unless asked: it syncs a GPU every step


def test_concurrent_requests_get_their_own_results(cache):
    requests = [replace(BASE, seed=seed, class_index=seed % 3, self_condition=seed % 2 == 0) for seed in range(6)]
    expected = [run_request(cache, r).images for r in requests]
    results = [None] * len(requests)

    def work(i):
        results[i] = run_request(cache, requests[i]).images

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, expected):
        assert torch.equal(got, want)
    assert cache.loads == 1


def test_a_failure_stays_with_its_request(cache):
    model = cache.get("tiny")
    original = model.network.forward

    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")

    model.network.forward = out_of_memory
    try:
        with pytest.raises(SamplingError, match="ran out of memory"):
            run_request(cache, BASE)
    finally:
        model.network.forward = original
    assert run_request(cache, BASE).images.shape == (4, 1, 8, 8)
    assert cache.get("tiny") is model


# --- guidance methods through the engine ---------------------------------------------------------------------
def write_weak(checkpoint_dir, name="tiny-weak", schedule="vp-cosine"):
    from conftest import TINY_CLASSES, tiny_unet
    from diffusion.formats.checkpoint import model_config, save_checkpoint

    weak = tiny_unet(seed=11)
    save_checkpoint(checkpoint_dir / f"{name}.safetensors", "denoiser", weak,
                    model_config("denoiser", weak, class_names=TINY_CLASSES, schedule=schedule, parameterization="v"),
                    {"steps": 0}, "A weaker tiny model.")


def test_neutral_guidance_fields_are_plain_cfg_and_each_method_changes_the_images(cache):
    plain = run_request(cache, BASE).images
    neutral = replace(BASE, rescale=0.0, interval_low=None, interval_high=None, apg_eta=1.0, apg_norm=0.0,
                      apg_momentum=0.0, threshold=0.0)
    assert torch.equal(run_request(cache, neutral).images, plain)
    for change in [dict(rescale=0.7), dict(interval_low=-2.0, interval_high=2.0), dict(apg_eta=0.0, apg_norm=1.0),
                   dict(threshold=0.9), dict(scale=8.0, apg_momentum=-0.5)]:
        assert not torch.equal(run_request(cache, replace(BASE, **change)).images, plain), change


def test_autoguidance_finds_the_weak_sibling_or_the_named_guide_and_checks_its_family(cache, checkpoint_dir):
    auto = replace(BASE, guidance="autoguidance")
    with pytest.raises(RequestError, match="tiny-weak"):
        run_request(cache, auto)  # no guide yet: the message names the one it looked for
    write_weak(checkpoint_dir)
    by_sibling = run_request(cache, auto)
    by_name = run_request(cache, replace(auto, guide="tiny-weak"))
    assert torch.equal(by_sibling.images, by_name.images) and by_sibling.nfe == BASE.steps
    assert not torch.equal(by_sibling.images, run_request(cache, BASE).images)
    write_weak(checkpoint_dir, "other-family", schedule="flow")
    with pytest.raises(RequestError, match="family"):
        run_request(cache, replace(auto, guide="other-family"))
    with pytest.raises(RequestError, match="not a denoiser"):
        run_request(cache, replace(auto, guide="tiny-evaluator"))


@pytest.mark.parametrize("change, message", [
    (dict(rescale=2.0), "rescale"), (dict(apg_eta=-0.1), "APG eta"), (dict(apg_momentum=1.0), "momentum"),
    (dict(apg_norm=float("inf")), "finite"), (dict(threshold=1.0), "percentile"),
    (dict(interval_low=3.0, interval_high=-3.0), "empty"), (dict(interval_low=-1e9), "interval low"),
    (dict(interval_high="x"), "number"), (dict(guidance="none", rescale=0.5), "rescale and APG"),
    (dict(guidance="classifier", apg_eta=0.5), "rescale and APG"), (dict(guide=3), "guide"),
])
def test_bad_guidance_settings_are_refused_with_a_sentence(cache, change, message):
    with pytest.raises(RequestError, match=message):
        run_request(cache, replace(BASE, **change))
