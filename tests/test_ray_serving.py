"""The sampling tier on Ray Serve (issue 40): one local Ray for the module, 2 CPU replicas of the Sampler deployment,
checked against LocalBackend byte for byte."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
import torch

ray = pytest.importorskip("ray")

from diffusion.serving.backend import LocalBackend  # noqa: E402
from diffusion.serving.budget import WorkBudget  # noqa: E402
from diffusion.serving.edits import EditRequest  # noqa: E402
from diffusion.serving.engine import ModelCache, RequestError, SampleRequest, SamplingError  # noqa: E402
from diffusion.serving.xy import plan_grid  # noqa: E402
from tests.conftest import write_tiny_checkpoints  # noqa: E402

pytestmark = pytest.mark.ray

BASE = SampleRequest(checkpoint="tiny", sampler="ddim", steps=6, guidance="cfg", scale=2.0, batch_size=8, seed=3)
LONG = replace(BASE, sampler="ddpm", steps=1000, batch_size=32)  # seconds on a tiny UNet, stopped long before the end


def sha(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()


def wait_for(condition, timeout=20.0, what="a state"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_checkpoints(tmp_path_factory.mktemp("ckpt") / "checkpoints")


@pytest.fixture(scope="module")
def local(folder):
    """LocalBackend as the replicas run: one torch thread (merged.py: small batches differ in the last bit with two)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield LocalBackend(ModelCache(folder, capacity=4, budget=WorkBudget(seconds=180, flops_per_second=1.5e9)))
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def remote(folder, tmp_path_factory):
    from diffusion.serving import ray_serve

    config = ray_serve.SamplerConfig(str(folder), max_request_seconds=180, flops_per_second=1.5e9, threads=1)
    temp = tmp_path_factory.mktemp("ray")
    backend = ray_serve.start(config, "local", replicas=2, temp_dir=str(temp), num_cpus=2)
    try:
        yield backend
    finally:
        ray_serve.stop()


def untimed(manifest: dict) -> dict:
    return manifest | {"columns": [{k: v for k, v in c.items() if k != "seconds"} for c in manifest["columns"]]}


def events_of(backend, request):
    """Every event of one request, straight from the handle ("started" carries the replica's PID)."""
    return list(backend.handle.remote("run_request", (request,), {"progress": True, "preview": True}))


def test_both_replicas_serve_and_give_local_bytes(remote, local):
    requests = [replace(BASE, seed=seed, batch_size=2) for seed in range(8)]  # 4 rows: never merged
    with ThreadPoolExecutor(8) as pool:
        runs = list(pool.map(lambda r: events_of(remote, r), requests))
    assert len({run[0][1] for run in runs}) == 2  # both replicas' PIDs
    for request, run in zip(requests, runs):
        assert run[-1][0] == "result"
        assert sha(run[-1][1].images) == sha(local.run_request(request).images)
    assert len(remote.states()) == 2


def test_every_operation_gives_the_bytes_of_local_backend(remote, local):
    mine = remote.compare_samplers([BASE, replace(BASE, sampler="ode", solver="euler", steps=3)])
    theirs = local.compare_samplers([BASE, replace(BASE, sampler="ode", solver="euler", steps=3)])
    assert [sha(r.images) for r in mine[0]] == [sha(r.images) for r in theirs[0]]
    assert untimed(mine[1]) == untimed(theirs[1])
    plan = plan_grid(local.cache, BASE, "seed", "1, 2", "scale", "1, 3")
    cells = remote.run_grid(plan)
    assert [[sha(c.result.images) for c in row] for row in cells] == \
           [[sha(c.result.images) for c in row] for row in local.run_grid(plan)]
    edit = EditRequest(base=replace(BASE, batch_size=2), method="sdedit", strength=0.5)
    image = torch.zeros(1, 1, 8, 8)
    assert sha(remote.run_edit(edit, image).images) == sha(local.run_edit(edit, image).images)
    with pytest.raises(RequestError, match="class"):
        remote.run_request(replace(BASE, class_index=9))


def test_progress_and_previews_stream(remote):
    progress, previews = [], []
    request = replace(BASE, steps=200, batch_size=16)
    result = remote.run_request(request, progress=lambda done, total: progress.append((done, total)),
                                preview=lambda step, t, x_t, x0: previews.append((step, x0.shape)))
    assert progress == [(i, 200) for i in range(1, 201)] and result.nfe == 200
    assert previews and all(shape == (16, 1, 8, 8) for _, shape in previews)


@pytest.mark.parametrize("request_", [LONG, replace(LONG, guidance="none", class_index=None, batch_size=8)],
                         ids=["merged-path", "alone-path"])
def test_stop_stops_the_replicas_work(remote, request_):
    class Stop(Exception):
        pass

    seen = []

    def progress(done, total):
        seen.append(done)
        if done == 3:
            raise Stop()

    before = sum(v["evaluations"] for v in remote.states().values())
    with pytest.raises(Stop):
        remote.run_request(request_, progress=progress)
    # Some replica ran it; within a second both are idle, long before its 1000 evaluations would end.
    started = time.monotonic()
    states = wait_for(lambda: (s := remote.states()) and len(s) == 2 and all(v["running"] == 0 for v in s.values())
                      and s, what="idle replicas")
    assert time.monotonic() - started < 2.0
    assert sum(v["evaluations"] for v in states.values()) - before < 20  # of 1000: stopped within a few evaluations


def test_merged_batches_are_byte_identical(remote, local):
    requests = [replace(BASE, class_index=seed % 3, seed=seed, first_index=seed) for seed in range(8)]
    before = sum(v["merged_batches"] for v in remote.states().values())
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(remote.run_request, requests))
    after = sum(v["merged_batches"] for v in remote.states().values())
    assert after > before  # some of them shared network calls
    for request, result in zip(requests, results):
        assert result.request == request
        assert sha(result.images) == sha(local.run_request(request).images)


def test_a_killed_replica_gives_a_sentence_and_the_next_request_works(remote, local):
    stream = remote.handle.remote("run_request", (LONG,), {"progress": True, "preview": False})
    killed = threading.Event()
    with pytest.raises(ray.exceptions.RayError):
        for event in stream:
            if event[0] == "started":
                os.kill(event[1], signal.SIGKILL)
                killed.set()
    assert killed.is_set()
    with pytest.raises(SamplingError, match="press the button again"):  # RayBackend's sentence for the same fault
        _killing_run(remote)
    result = remote.run_request(BASE)
    assert sha(result.images) == sha(local.run_request(BASE).images)


def _killing_run(remote):
    def progress(done, total):
        if done == 1:
            pid = next(p for p, s in remote.states().items() if s["running"])
            os.kill(pid, signal.SIGKILL)

    remote.run_request(LONG, progress=progress)


def test_the_page_through_ray_gives_the_pixels_and_settings_of_the_page_alone(remote, local, folder):
    """/generate on a front whose work runs on the replicas: the same gallery pixels and PNG settings as on a front
    that samples itself; the sampling concurrency is the replica count."""
    import app
    from diffusion.serving.app_client import local_client
    from PIL import Image

    from diffusion.serving.backend import backend_for, use_backend

    # The Ray-mode front holds no network (app.py --ray): headers only, the budget's figures from a replica.
    front = ModelCache(folder, capacity=4, budget=WorkBudget(seconds=180, flops_per_second=1.5e9), weights=False)
    front.measured_by(remote)
    use_backend(front, remote)
    assert backend_for(front).workers == 2
    arguments = ("tiny", "ddim", "heun", 5, 0.0, "uniform", "cfg", 2, 3.0, True, 7, 8)
    outputs = []
    before = sum(v["evaluations"] for v in remote.states().values())
    for cache in (front, local.cache):
        with app.serve(cache) as url:
            gallery, _, status, download = local_client(url).predict(*arguments, api_name="/generate")
        outputs.append(([Image.open(g["image"]).tobytes() for g in gallery], Image.open(download).info,
                        Image.open(download).tobytes(), status))
    (pixels, info, grid, status), (pixels_alone, info_alone, grid_alone, _) = outputs
    assert len(pixels) == 8 and pixels == pixels_alone and grid == grid_alone
    assert info["parameters"] == info_alone["parameters"] and "NFE 5" in status
    assert sum(v["evaluations"] for v in remote.states().values()) >= before + 5  # the replicas sampled it
    assert front.loads >= 1 and all(not model.weights for _, model in front._models.values())  # described only


def test_the_application_builder_for_serve_run_and_kuberay(folder):
    from ray.serve import Application

    from diffusion.serving import ray_serve

    app = ray_serve.build({"checkpoint_dir": str(folder), "replicas": "3", "batching": "false"})
    assert isinstance(app, Application)
    with pytest.raises(KeyError):
        ray_serve.build({})
