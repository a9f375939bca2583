"""The Ray-mode front holds no network (issue 40, item 1): a ModelCache with weights=False describes every file from
its safetensors header (the network on the meta device) and answers what the page needs (names, kinds, classes,
config, guidance choices, validation, FLOPs) exactly as a cache that loads the networks does."""

from __future__ import annotations

from pathlib import Path

import pytest

from diffusion.app.controls import class_and_guidance
from diffusion.serving.budget import MeasuredFigures, WorkBudget
from diffusion.serving.engine import (FlowRequest, ModelCache, RequestError, SampleRequest, check_request, check_work,
                                      measure_figures, request_work)

SHIPPED = Path(__file__).parent.parent / "checkpoints"
BUDGET = WorkBudget(seconds=180, flops_per_second=2e10)
# Bad requests a user can send, each refused with a sentence (the same one, wherever the cache's models come from).
BAD = [
    SampleRequest(checkpoint="fashion-diffusion", steps=0),
    SampleRequest(checkpoint="fashion-diffusion", class_index=10),
    FlowRequest(checkpoint="fashion-nice", class_index=None),  # a conditional flow has no null class
    SampleRequest(checkpoint="fashion-diffusion", sampler="sde", steps=3, spacing="uniform"),
    SampleRequest(checkpoint="fashion-diffusion", spacing="leading"),
    SampleRequest(checkpoint="fashion-dit", guidance="autoguidance"),
    SampleRequest(checkpoint="fashion-nice"),
    SampleRequest(checkpoint="fashion-noisy-classifier"),
    SampleRequest(checkpoint="no-such-file"),
    FlowRequest(checkpoint="fashion-diffusion"),
    FlowRequest(checkpoint="fashion-nice", temperature=3.0),
    SampleRequest(checkpoint="fashion-diffusion", sampler="ddpm", steps=1000, batch_size=64),  # over the budget
]


@pytest.fixture(scope="module")
def loaded():
    """Today's cache with every shipped file loaded and counted (before `described` forbids loading)."""
    cache = ModelCache(SHIPPED, capacity=20, device="cpu", budget=BUDGET)
    for entry in cache.entries():
        cache.flops_per_image(cache.get(entry.name))
    return cache


@pytest.fixture
def described(monkeypatch, loaded):
    """A headers-only cache in which reading any tensor, or loading a model, fails the test."""
    def no_tensors(*_, **__):
        raise AssertionError("a headers-only cache read tensor data")

    monkeypatch.setattr("diffusion.formats.model_build.load_safetensors", no_tensors)
    monkeypatch.setattr("diffusion.serving.engine.load_checkpoint", no_tensors)
    monkeypatch.setattr("diffusion.serving.engine.load_folder", no_tensors)
    monkeypatch.setattr("diffusion.serving.engine._seconds_per_call", no_tensors)
    return ModelCache(SHIPPED, capacity=20, device="cpu", budget=BUDGET, weights=False)


def refusal(cache, request) -> str:
    with pytest.raises(RequestError) as error:
        check_work(cache, [request], model=check_request(cache, request))
    return str(error.value)


def test_every_shipped_file_is_described_from_its_header_alone(described, loaded):
    """Names, kinds, classes, config, card, SHA-256 and the page's class and guidance choices are those of the loaded
    models, while no tensor is read and every network parameter is on the meta device."""
    names = [e.name for e in loaded.entries() if e.available]
    assert len(names) == len(list(SHIPPED.glob("*.safetensors"))) and [e.name for e in described.entries() if e.available] == names
    for kind in ("denoiser", "normalizing-flow", "noisy-classifier", "evaluator"):
        assert described.names(kind) == loaded.names(kind)
    for name in names:
        header, model = described.get(name), loaded.get(name)
        assert not header.weights and {p.device.type for p in header.network.parameters()} == {"meta"}
        assert (header.kind, header.class_names, header.config, header.card, header.sha256) == \
               (model.kind, model.class_names, model.config, model.card, model.sha256)
        assert sum(p.numel() for p in header.network.parameters()) == sum(p.numel() for p in model.network.parameters())
        if header.kind in ("denoiser", "normalizing-flow"):
            assert class_and_guidance(described, header) == class_and_guidance(loaded, model)
    assert described.loads == len(names)  # each file described once, none loaded


def test_a_good_request_passes_and_a_bad_one_gets_the_local_sentence(described, loaded):
    good = [SampleRequest(checkpoint="fashion-diffusion", guidance="classifier"),
            FlowRequest(checkpoint="fashion-nice"),
            SampleRequest(checkpoint="fashion-diffusion", guidance="autoguidance"),
            SampleRequest(checkpoint="fashion-reflow", sampler="ode", solver="euler", steps=2, guidance="none")]
    for request in good:
        assert check_work(described, [request], model=check_request(described, request)) == \
               check_work(loaded, [request], model=check_request(loaded, request))
    for request in BAD:
        assert refusal(described, request) == refusal(loaded, request)


def test_the_header_flops_are_the_loaded_networks_counts(described, loaded):
    """Counted on the meta device, each shipped network's FLOPs per image equal the count on the loaded network (on
    a CPU fashion-dit's fused attention counts 0 FLOPs; the meta count asks torch for the same kernel)."""
    counts = {}
    for name in [e.name for e in loaded.entries() if e.available]:
        counts[name] = described.flops_per_image(described.get(name))
        assert counts[name] == loaded.flops_per_image(loaded.get(name)), name
    assert counts["fashion-dit"] == 464_334_848 and counts["fashion-diffusion"] == 380_710_912


def test_the_rate_and_call_overheads_come_from_where_the_networks_run(monkeypatch):
    """measured_by: the rate and every file's overhead are asked once, of what runs the networks (a replica; here a
    loading cache with a measured rate stands in), and a request's estimate is then the one made there."""
    runner = ModelCache(SHIPPED, capacity=20, device="cpu", budget=WorkBudget(seconds=180))
    asked = []

    class Replica:
        def figures(self, names):
            asked.append(list(names))
            return measure_figures(runner, names)

    front = ModelCache(SHIPPED, capacity=20, device="cpu", budget=WorkBudget(seconds=180), weights=False)
    front.measured_by(Replica())
    assert len(asked) == 1 and len(asked[0]) == len(list(SHIPPED.glob("*.safetensors"))) and front.budget.flops_per_second > 0
    monkeypatch.setattr("diffusion.serving.engine._seconds_per_call", lambda *_: pytest.fail("the front timed a call"))
    request = SampleRequest(checkpoint="fashion-diffusion", steps=20, batch_size=4)
    runner_work, front_work = request_work(runner, request), request_work(front, request)
    assert front_work == runner_work and front_work.overhead_flops > 0
    assert front.estimate_seconds(front_work) == pytest.approx(runner_work.total_flops / front.budget.flops_per_second)
    assert len(asked) == 1  # nothing asked again for files already measured
    assert front.counted_as == "cpu"


def test_flops_are_counted_as_the_replicas_device_counts_them():
    """A front told its replicas run on CUDA counts fashion-dit's attention's matmuls (torch's FLOP counter has a
    formula for CUDA's fused attention kernels: those two matmuls; not checked on a GPU here, none was at hand)."""
    class CudaReplica:
        def figures(self, names):
            return MeasuredFigures(1e12, {}, "cuda")

    front = ModelCache(SHIPPED, device="cpu", budget=BUDGET, weights=False)
    assert front.flops_per_image(front.get("fashion-dit")) == 464_334_848
    front.measured_by(CudaReplica())
    assert front.flops_per_image(front.get("fashion-dit")) == 582_348_800 and front.budget.flops_per_second == 2e10


def test_a_described_file_without_figures_is_refused_with_a_sentence():
    front = ModelCache(SHIPPED, device="cpu", budget=WorkBudget(seconds=180), weights=False)
    with pytest.raises(RequestError, match="has not been measured where the networks run"):
        request_work(front, SampleRequest(checkpoint="fashion-diffusion"))
    with pytest.raises(ValueError, match="measures them itself"):
        ModelCache(SHIPPED, device="cpu").measured_by(object())


def test_a_replaced_file_is_described_anew_and_measured_again(tmp_path):
    """A new file version (the Model card's rescan) is described again, and its overhead asked for when first
    estimated."""
    from tests.conftest import tiny_unet, write_tiny_checkpoints
    from diffusion.formats.checkpoint import model_config, save_checkpoint

    folder = write_tiny_checkpoints(tmp_path / "checkpoints")
    runner = ModelCache(folder, device="cpu", budget=WorkBudget(seconds=180))
    asked = []

    class Replica:
        def figures(self, names):
            asked.append(list(names))
            return measure_figures(runner, names)

    front = ModelCache(folder, device="cpu", budget=WorkBudget(seconds=180), weights=False)
    front.measured_by(Replica())
    first = front.get("tiny").sha256
    unet = tiny_unet(seed=9, image_size=8, num_classes=3)
    save_checkpoint(folder / "tiny.safetensors", "denoiser", unet,
                    model_config("denoiser", unet, class_names=("a", "b", "c"), schedule="vp-cosine",
                                 parameterization="v"), {"steps": 0}, "Replaced.")
    request = SampleRequest(checkpoint="tiny", steps=4, batch_size=2)
    assert front.get("tiny").sha256 != first and front.get("tiny").class_names == ("a", "b", "c")
    assert request_work(front, request) == request_work(runner, request) and asked[-1] == ["tiny"]


def test_a_diffusers_folder_is_described_like_it_loads(tmp_path):
    """A diffusers pipeline folder (--add-model, or inside the checkpoint folder): the same metadata, SHA-256 of its
    weights file, FLOPs and refusal sentence, its network on the meta device."""
    pytest.importorskip("diffusers", reason="diffusers is a test dependency: pip install -e '.[test]'")
    from tests.conftest import write_diffusers_folder

    write_diffusers_folder(tmp_path / "cond", num_class_embeds=4, channels=1)
    loaded = ModelCache(tmp_path, device="cpu", budget=BUDGET)
    described = ModelCache(tmp_path, device="cpu", budget=BUDGET, weights=False)
    header, model = described.get("cond"), loaded.get("cond")
    assert {p.device.type for p in header.network.parameters()} == {"meta"}
    assert (header.config, header.class_names, header.sha256) == (model.config, model.class_names, model.sha256)
    assert described.flops_per_image(header) == loaded.flops_per_image(model) > 0
    request = SampleRequest(checkpoint="cond", steps=4, class_index=2, guidance="cfg")
    assert "no null class" in refusal(described, request) and refusal(described, request) == refusal(loaded, request)
