"""The GPU path (issue 30, item 3): `pytest -m gpu`, skipped without CUDA. A few minutes on one GPU; the command that
runs these and the GPU benchmark rows is in docs/benchmarks.md."""

import shutil
from dataclasses import replace

import pytest
import torch

from conftest import write_tiny_checkpoints
from diffusion.serving.engine import ModelCache, SampleRequest, SamplingError, run_request
from diffusion.core.guidance import GUIDANCE_METHODS
from diffusion.core.sampling import SAMPLERS

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

# The same request on the CPU (fp32) and on the GPU (the network in bf16 autocast, 8 mantissa bits) from the same
# per-image seeds: deterministic samplers agree within these bounds on the tiny test UNet in [-1, 1] (not yet
# calibrated on a GPU: the first run on one checks them).
CPU_GPU_MAX_DIFFERENCE = 0.1
CPU_GPU_MEAN_DIFFERENCE = 0.02

BASE = SampleRequest(checkpoint="tiny", sampler="ddim", steps=4, guidance="cfg", scale=2.0, class_index=1, seed=3,
                     batch_size=4)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    folder = write_tiny_checkpoints(tmp_path_factory.mktemp("gpu") / "checkpoints")
    shutil.copy(folder / "tiny.safetensors", folder / "tiny-weak.safetensors")  # autoguidance's guide, same family
    return folder


@pytest.fixture(scope="module")
def gpu(folder):
    return ModelCache(folder, device="cuda")


def sampler_request(sampler: str) -> SampleRequest:
    if sampler == "sde":  # Euler-Maruyama needs steps of at most 2 in log-SNR
        return replace(BASE, sampler=sampler, steps=16, spacing="log-snr")
    return replace(BASE, sampler=sampler, steps=3 if sampler == "langevin" else 4, solver="dpm++2m")


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_on_cuda_in_bf16(gpu, sampler):
    result = run_request(gpu, sampler_request(sampler))
    assert result.images.shape == (4, 1, 8, 8) and result.images.device.type == "cpu"
    assert torch.isfinite(result.images).all() and result.images.abs().max() <= 1


@pytest.mark.parametrize("method", list(GUIDANCE_METHODS))
def test_every_guidance_method_on_cuda_in_bf16(gpu, method):
    result = run_request(gpu, replace(BASE, **GUIDANCE_METHODS[method].settings))
    assert torch.isfinite(result.images).all() and result.images.abs().max() <= 1


@pytest.mark.parametrize("sampler, solver", [("ddim", "heun"), ("ode", "heun"), ("ode", "dpm++2m")])
def test_per_image_seeds_give_the_same_images_on_cpu_and_gpu(folder, gpu, sampler, solver):
    request = replace(BASE, sampler=sampler, solver=solver, batch_size=6)
    cpu = run_request(ModelCache(folder, device="cpu"), request).images
    cuda = run_request(gpu, request).images
    difference = (cpu - cuda).abs()
    assert difference.max() <= CPU_GPU_MAX_DIFFERENCE and difference.mean() <= CPU_GPU_MEAN_DIFFERENCE
    alone = run_request(gpu, replace(request, batch_size=1, first_index=4)).images  # image 4 alone, same noise
    assert (alone[0] - cuda[4]).abs().max() <= CPU_GPU_MAX_DIFFERENCE


def test_out_of_memory_is_a_sentence_and_the_backend_keeps_serving(folder):
    cache = ModelCache(folder, device="cuda", max_batch=4096)
    run_request(cache, BASE)
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1e-6)  # about 0.1 MB: 4096 images' activations cannot be allocated
    try:
        with pytest.raises(SamplingError, match="ran out of memory"):
            run_request(cache, replace(BASE, batch_size=4096))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert torch.isfinite(run_request(cache, BASE).images).all()


def test_the_app_backend_on_cuda(gpu):
    import app
    from diffusion.serving.app_client import QueueClient

    with app.serve(gpu) as url, QueueClient(url, "generate") as client:
        gallery, _, status, grid = client.predict("tiny", "ode", "dpm++2m", 4, 0.0, "uniform", "cfg", 1, 2.0, "own",
                                                  7, 5)
    assert len(gallery) == 5 and "on cuda" in status and grid["path"].endswith(".png")


def test_the_app_path_compiles_on_cuda_under_autocast(folder):
    from diffusion.serving.compiled import BackgroundCompiler, CompiledNetwork

    cache = ModelCache(folder, device="cuda", compiler=BackgroundCompiler())
    eager = run_request(cache, BASE).images  # eager; asks for the compile of its autocast signature
    cache.compiler.idle()
    network = cache.get("tiny").network
    assert isinstance(network, CompiledNetwork) and network.ready and not network.failures
    assert (run_request(cache, BASE).images - eager).abs().max() <= CPU_GPU_MAX_DIFFERENCE


def test_training_on_cuda_without_host_syncs_reports_steps_per_second(tmp_path):
    import json

    from test_training import shapes_dataset, tiny_config

    from diffusion.training import Trainer

    for compiled in (False, True):
        run = tmp_path / f"compiled-{compiled}"
        trainer = Trainer(tiny_config(run, steps=20, log_every=10, bf16=True, compile=compiled),
                          dataset=shapes_dataset(), device="cuda")
        assert trainer.dataset.images.device.type == "cuda"  # the data set lives on the device
        trainer.train(progress=False)
        log = [json.loads(line) for line in (run / "run" / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [10, 20] and all(r["steps_per_s"] > 0 for r in log)
        assert log[-1]["loss"] < log[0]["loss"] * 1.5 and all(torch.isfinite(torch.tensor(r["loss"])) for r in log)


def test_the_gpu_benchmark_rows(folder, tmp_path):
    from diffusion.evaluation.gpu_benchmark import gpu_report, gpu_rows

    shutil.copy(folder / "tiny.safetensors", tmp_path / "fashion-diffusion.safetensors")
    results = gpu_rows(tmp_path, batches=(1, 16), repeats=1)
    assert [(r["checkpoint"], r["batch"]) for r in results["rows"]] == [("fashion-diffusion", 1), ("fashion-diffusion", 16)]
    assert all(r["images_per_s"] > 0 and 0 < r["share_of_bf16_peak"] < 1 for r in results["rows"])
    assert "| fashion-diffusion: ddim-50, cfg 3 | 16 |" in "\n".join(gpu_report(results))
