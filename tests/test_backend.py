"""The serving seam (issue 40): LocalBackend is today's behaviour, and merged batches are byte-identical."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import torch

from diffusion.serving.backend import OPERATIONS, Backend, LocalBackend, backend_for, use_backend
from diffusion.serving.engine import FlowRequest, ModelCache, RequestError, SampleRequest, run_request
from diffusion.serving.merged import merge_key, run_merged
from tests.conftest import write_tiny_checkpoints


def sha(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return ModelCache(write_tiny_checkpoints(tmp_path_factory.mktemp("backend") / "checkpoints"), capacity=4)


BASE = SampleRequest(checkpoint="tiny", sampler="ddpm", steps=4, guidance="cfg", scale=2.0, batch_size=8, seed=5)


@pytest.fixture
def one_thread():
    """As a replica runs (one thread): with two, small batches differ in the last bit even run alone."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_local_backend_gives_the_same_bytes_and_events_as_run_request(cache):
    events, previews = [], []
    mine = LocalBackend(cache).run_request(BASE, progress=lambda d, t: events.append((d, t)),
                                           preview=lambda step, t, x_t, x0: previews.append(step))
    direct = run_request(cache, BASE)
    assert sha(mine.images) == sha(direct.images)
    assert events == [(i, 4) for i in range(1, 5)] and previews == [0, 1, 2, 3]
    flow = FlowRequest(checkpoint="tiny-nice", batch_size=2, seed=3)
    assert sha(LocalBackend(cache).run_request(flow).images) == sha(run_request(cache, flow).images)


def test_local_backend_runs_every_operation_and_refuses_others(cache):
    assert set(OPERATIONS) == {"run_request", "run_edit", "compare_samplers", "guidance_sweep", "trajectory",
                               "same_noise", "encode_image", "likelihood_lens", "run_grid"}
    backend = LocalBackend(cache)
    results, manifest = backend.compare_samplers([BASE, replace(BASE, sampler="ddim")])
    assert sha(results[0].images) == sha(run_request(cache, BASE).images)
    with pytest.raises(KeyError):
        backend.call("__import__", "os")
    with pytest.raises(RequestError):
        backend.run_request(replace(BASE, steps=0))


def test_backend_for_is_local_unless_one_is_bound(cache):
    assert isinstance(backend_for(cache), LocalBackend) and backend_for(cache).cache is cache

    class Fake(Backend):
        def call(self, name, *args, **kwargs):
            return name, args

    use_backend(cache, Fake())
    try:
        assert backend_for(cache).run_request(BASE) == ("run_request", (BASE,))
    finally:
        use_backend(cache, None)
    assert isinstance(backend_for(cache), LocalBackend)


def test_merge_key_only_where_bytes_stay_identical():
    assert merge_key(BASE) == merge_key(replace(BASE, class_index=2, seed=9, first_index=4, batch_size=20))
    assert merge_key(BASE) != merge_key(replace(BASE, steps=5))
    assert merge_key(BASE) != merge_key(replace(BASE, guidance="none", class_index=None))
    assert merge_key(replace(BASE, rescale=0.7)) == merge_key(replace(BASE, rescale=0.7, seed=1)) != merge_key(BASE)
    for unmergeable in (replace(BASE, guidance="classifier"), replace(BASE, guidance="autoguidance"),
                        FlowRequest(checkpoint="tiny-nice"), replace(BASE, batch_size=7),
                        replace(BASE, guidance="none", class_index=None, batch_size=15)):
        assert merge_key(unmergeable) is None


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "ode"])
def test_merged_batch_is_byte_identical_to_each_request_alone(cache, sampler, one_thread):
    # CFG: 2 rows an image, so 8 images give the 16 rows MIN_MERGE_ROWS asks for.
    requests = [replace(BASE, sampler=sampler), replace(BASE, sampler=sampler, class_index=2, seed=11, batch_size=9),
                replace(BASE, sampler=sampler, class_index=1, seed=5, first_index=3, batch_size=12)]
    assert len({merge_key(r) for r in requests}) == 1
    merged = run_merged(cache, requests)
    for request, result in zip(requests, merged):
        assert result.request == request and len(result.images) == request.batch_size
        assert sha(result.images) == sha(run_request(cache, request).images)


@pytest.mark.parametrize("modifiers", [{"rescale": 0.7}, {"apg_eta": 0.0, "apg_norm": 2.0, "apg_momentum": -0.5},
                                       {"threshold": 0.9}], ids=["rescale", "apg", "threshold"])
def test_cfg_modifiers_are_per_image_so_they_merge_identically(cache, one_thread, modifiers):
    requests = [replace(BASE, sampler="ode", solver="dpm++2m", seed=seed, batch_size=size, **modifiers)
                for seed, size in ((1, 8), (2, 16), (3, 9))]
    for request, result in zip(requests, run_merged(cache, requests)):
        assert sha(result.images) == sha(run_request(cache, request).images)


def test_unguided_merges_from_sixteen_images(cache, one_thread):
    requests = [replace(BASE, guidance="none", class_index=None, seed=seed, batch_size=16) for seed in (1, 2)]
    for request, result in zip(requests, run_merged(cache, requests)):
        assert sha(result.images) == sha(run_request(cache, request).images)


def test_run_merged_refuses_requests_that_may_not_merge(cache):
    with pytest.raises(ValueError):
        run_merged(cache, [BASE, replace(BASE, steps=5)])
    with pytest.raises(RequestError):
        run_merged(cache, [BASE, replace(BASE, class_index=7)])
