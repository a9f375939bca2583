"""Hardening, round 3 (issue 26): the X/Y parser, hostile headers and configs, seeds as integers, bounded echoes."""

import json
import struct
import time

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_nice, write_diffusers_folder, write_tiny_checkpoints
from diffusion.formats.checkpoint import CheckpointError, check_file, load_checkpoint, model_config, save_checkpoint
from diffusion.serving.engine import MAX_SEED, FlowRequest, ModelCache, RequestError, SampleRequest
from diffusion.formats.jsonsafe import json_depth
from diffusion.serving.studies import parse_scales
from diffusion.serving.xy import MAX_AXIS_TEXT, parse_axis, plan_grid


# --- 1. the X/Y parser is linear and bounded --------------------------------------------------------------------
def test_an_axis_of_a_megabyte_is_refused_at_once():
    started = time.perf_counter()
    for text in ("1" * 1_000_000, "1" * 500_000 + "-" + "1" * 499_999, "1-" * 500_000):
        with pytest.raises(RequestError, match=f"at most {MAX_AXIS_TEXT:,}"):
            parse_axis("steps", text)
    assert time.perf_counter() - started < 1.0  # the old pattern took 44 s on 40,000 characters


def test_parsing_time_grows_linearly_with_the_text():
    """Items just under the limit that the old pattern backtracked on (digits, then something that fails late)."""
    def seconds(n):
        started = time.perf_counter()
        for _ in range(20):
            with pytest.raises(RequestError):
                parse_axis("scale", "1" * n + "-" + "1" * n + "x")
        return time.perf_counter() - started

    seconds(10)  # warm up
    assert seconds(490) < 50 * seconds(49) + 0.05  # quadratic would be ~100x


@pytest.mark.parametrize("field, text, message", [
    ("steps", "1-1e400", "steps must be a finite number"),
    ("steps", "1e400-1 (-1)", "steps must be a finite number"),
    ("steps", "1e400-1e400", "steps must be a finite number"),
    ("seed", "0-1" + "0" * 400 + " [3]", "holds a number too large to use"),
    ("steps", "1-8 (+0)", "step 0 never gets from 1 to 8"),
    ("steps", "(3)", "is not a range like 1-8"),
    ("scale", "abc", "'abc' is neither a number nor a range"),
])
def test_bad_ranges_are_sentences(field, text, message):
    with pytest.raises(RequestError, match=message):
        parse_axis(field, text)


def test_ranges_with_negative_bounds_and_exponents():
    assert parse_axis("scale", "-1--0.5 (+0.25)") == [-1.0, -0.75, -0.5]
    assert parse_axis("eta", "1e-3-1e-2 [2]") == [0.001, 0.01]
    assert parse_axis("steps", "1 - 3 ( + 1 ), 8") == [1, 2, 3, 8]


# --- 9. seeds are integers, never floats ---------------------------------------------------------------------------
def test_seed_axis_values_are_exact_integers(checkpoint_dir):
    assert parse_axis("seed", "9007199254740993, 9007199254740995") == [9007199254740993, 9007199254740995]
    plan = plan_grid(ModelCache(checkpoint_dir), SampleRequest(checkpoint="tiny", steps=2, batch_size=1), "seed",
                     f"{MAX_SEED}, {MAX_SEED - 1}")
    assert [r.seed for r in plan.requests[0]] == [MAX_SEED, MAX_SEED - 1]
    with pytest.raises(RequestError, match="seed must be a whole number from 0 to 2\\^63 - 1"):
        plan_grid(ModelCache(checkpoint_dir), SampleRequest(checkpoint="tiny", steps=2, batch_size=1), "seed",
                  str(MAX_SEED + 1))


def test_a_sampler_typo_on_an_axis_is_named(checkpoint_dir):
    with pytest.raises(RequestError, match="cell sampler=dddim: unknown sampler 'dddim'"):
        plan_grid(ModelCache(checkpoint_dir), SampleRequest(checkpoint="tiny", steps=2), "sampler", "ddim, dddim")
    with pytest.raises(RequestError, match=r"unknown sampler .x{50,}; choose") as refused:
        plan_grid(ModelCache(checkpoint_dir), SampleRequest(checkpoint="tiny", sampler="x" * 10**6, steps=2), "steps", "1")
    assert len(str(refused.value)) < 300


# --- 11. errors quote a short prefix ------------------------------------------------------------------------------
def test_a_megabyte_of_scales_is_refused_in_a_short_sentence():
    with pytest.raises(RequestError) as refused:
        parse_scales("1, " * 400_000)
    assert len(str(refused.value)) < 120
    with pytest.raises(RequestError) as refused:
        parse_scales("x" * 999)
    assert len(str(refused.value)) < 200


# --- 2. deep JSON -------------------------------------------------------------------------------------------------
def safetensors_bytes(header: dict | bytes, data: bytes = b"") -> bytes:
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def test_json_depth_ignores_brackets_in_strings():
    assert json_depth('{"a": "[[[[{{", "b": [1, {"c": "\\"]]"}]}') == 3
    assert json_depth(b"[" * 100_000 + b"]" * 100_000) == 100_000


def test_deeply_nested_headers_and_configs_are_listed_as_unavailable(tmp_path):
    folder = write_tiny_checkpoints(tmp_path / "ckpt")
    deep = "[" * 100_000 + "]" * 100_000
    (folder / "deep-header.safetensors").write_bytes(safetensors_bytes(deep.encode()))
    metadata = {"format": "diffusion-playground/1", "kind": "denoiser", "config": deep, "training": "{}", "card": ""}
    (folder / "deep-config.safetensors").write_bytes(safetensors_bytes({"__metadata__": metadata}))
    for name, file in (("index", "model_index.json"), ("scheduler", "scheduler/scheduler_config.json")):
        pipeline, _, _ = write_diffusers_folder(folder / f"deep-{name}", channels=1, size=8)
        (pipeline / file).write_text(deep)
    entries = {e.name: e for e in ModelCache(folder).entries()}
    for name in ("deep-header", "deep-config", "deep-index", "deep-scheduler"):
        assert not entries[name].available and "nested 100,000 levels deep (at most 32)" in entries[name].error
    assert entries["tiny"].available
    import app

    app.build_demo(ModelCache(folder))  # starts with the rest


# --- 3. headers that claim more than the file holds -----------------------------------------------------------------
def nice_header_claiming(hidden_width: int, offsets) -> dict:
    network = tiny_nice(image_size=8)
    config = model_config("normalizing-flow", network, class_names=("a", "b", "c"))
    config["network_config"]["hidden_width"] = hidden_width
    with torch.device("meta"):
        from diffusion.models import build_network

        big = build_network("NICE", config["network_config"])
    header = {name: {"dtype": "F32", "shape": list(t.shape), "data_offsets": offsets(t)} for name, t in big.state_dict().items()}
    header["__metadata__"] = {"format": "diffusion-playground/1", "kind": "normalizing-flow",
                              "config": json.dumps(config), "training": "{}", "card": ""}
    return header


def test_a_small_file_claiming_a_large_network_is_refused_before_anything_is_built(tmp_path):
    path = tmp_path / "claims.safetensors"
    path.write_bytes(safetensors_bytes(nice_header_claiming(8000, lambda t: [0, 0])))
    assert path.stat().st_size < 20_000
    with pytest.raises(CheckpointError, match="has 0 bytes for a F32 tensor of shape"):
        check_file(path)
    with pytest.raises(CheckpointError, match="has 0 bytes"):
        load_checkpoint(path)
    huge = tmp_path / "huge.safetensors"
    huge.write_bytes(safetensors_bytes(nice_header_claiming(10**7, lambda t: [0, 4 * t.numel()])))
    with pytest.raises(CheckpointError, match="parameters; at most 300,000,000"):
        check_file(huge)


def test_overlapping_gapped_and_trailing_tensor_data_is_refused(tmp_path):
    network = tiny_nice(image_size=8)
    good = tmp_path / "good.safetensors"
    save_checkpoint(good, "normalizing-flow", network, model_config("normalizing-flow", network, class_names=("a", "b", "c")),
                    {}, "")
    size = struct.unpack("<Q", good.read_bytes()[:8])[0]
    header, data = json.loads(good.read_bytes()[8:8 + size]), good.read_bytes()[8 + size:]
    first, second = sorted((v["data_offsets"], k) for k, v in header.items() if k != "__metadata__")[:2]
    cases = {"trailing bytes": (header, data + b"\0" * 8)}
    overlap = json.loads(json.dumps(header))
    length = first[0][1] - first[0][0]
    overlap[second[1]]["data_offsets"] = [first[0][0], first[0][0] + second[0][1] - second[0][0]]
    cases["overlapping"] = (overlap, data)
    for why, (table, payload) in cases.items():
        path = tmp_path / f"{why.replace(' ', '-')}.safetensors"
        path.write_bytes(safetensors_bytes(table, payload))
        with pytest.raises(CheckpointError, match=why):
            check_file(path)
    assert length > 0


def test_a_sparse_two_gigabyte_diffusers_weights_file_is_unavailable_unread(tmp_path):
    pytest.importorskip("diffusers")
    folder, _, _ = write_diffusers_folder(tmp_path / "sparse", channels=1, size=8)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(2 * 1024**3)  # a hole: 2 GB on paper, nothing on disk
    started = time.perf_counter()
    (entry,) = [e for e in ModelCache(tmp_path).entries() if e.name == "sparse"]
    assert not entry.available and "trailing bytes" in entry.error
    assert time.perf_counter() - started < 5


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(depth=st.integers(0, 200), offsets=st.lists(st.integers(-5, 2**40), min_size=2, max_size=2),
       shape=st.lists(st.integers(-2, 2**31), max_size=4), dtype=st.sampled_from(["F32", "F16", "I64", "X9", 3]),
       data=st.binary(max_size=64))
def test_fuzzed_headers_are_refused_cleanly(tmp_path, depth, offsets, shape, dtype, data):
    header = {"w": {"dtype": dtype, "shape": shape, "data_offsets": offsets},
              "__metadata__": {"format": "diffusion-playground/1", "kind": "denoiser",
                               "config": "[" * depth + "]" * depth, "training": "{}"}}
    path = tmp_path / "fuzz.safetensors"
    path.write_bytes(safetensors_bytes(header, data))
    with pytest.raises(CheckpointError):
        check_file(path)


# --- 4. one work budget for every endpoint -------------------------------------------------------------------------
def test_the_work_budget_counts_flops_rows_and_models(checkpoint_dir):
    """One unit for every endpoint: images x network evaluations x the FLOPs of what each step runs."""
    from diffusion.serving.budget import Work, WorkBudget
    from diffusion.serving.engine import request_work

    cache = ModelCache(checkpoint_dir, budget=WorkBudget(seconds=10, flops_per_second=1e9))
    unet = cache.flops_per_image(cache.get("tiny"))
    classifier = cache.flops_per_image(cache.get("tiny-noisy-classifier"))
    assert 1e6 < unet < 1e8 and 0 < classifier < unet
    overhead = cache.overhead_per_call(cache.get("tiny"))  # FLOP-equivalents of one call's fixed cost
    plain = SampleRequest(checkpoint="tiny", steps=10, batch_size=4, guidance="none", scale=1.0)
    assert request_work(cache, plain) == Work(40, 40 * unet, 10 * overhead)  # 10 calls of 4 images
    cfg = SampleRequest(checkpoint="tiny", steps=10, batch_size=4)  # both rows in one call: 10 calls of 8 rows
    assert request_work(cache, cfg) == Work(80, 80 * unet, 10 * overhead)
    guided = request_work(cache, SampleRequest(checkpoint="tiny", steps=10, batch_size=4, guidance="classifier"))
    assert guided.flops == pytest.approx(40 * (unet + 3 * classifier))
    classifier_overhead = cache.overhead_per_call(cache.get("tiny-noisy-classifier"))
    assert guided.overhead_flops == pytest.approx(10 * (overhead + 3 * classifier_overhead))
    flow = FlowRequest(checkpoint="tiny-nice", batch_size=16)
    assert request_work(cache, flow).evaluations == 16


def test_every_endpoint_refuses_work_over_the_budget_before_starting(checkpoint_dir):
    from diffusion.serving.budget import WorkBudget
    from diffusion.serving.engine import run_request
    from diffusion.serving.studies import family_requests, guidance_sweep

    cache = ModelCache(checkpoint_dir, budget=WorkBudget(seconds=1, flops_per_second=1e9))  # ~330 tiny evaluations
    unet = cache.flops_per_image(cache.get("tiny"))
    big = SampleRequest(checkpoint="tiny", steps=200, batch_size=2)
    assert big.batch_size * 200 * 2 * unet / 1e9 > 1
    with pytest.raises(RequestError, match=r"this request needs 800 image-evaluations, about \d s of work on this "
                                           r"machine; the limit is 1 s per request"):
        run_request(cache, big)
    with pytest.raises(RequestError, match="this grid needs"):
        plan_grid(cache, SampleRequest(checkpoint="tiny", steps=50, batch_size=2), "seed", "1, 2, 3, 4")
    with pytest.raises(RequestError, match="this sweep needs"):
        guidance_sweep(cache, SampleRequest(checkpoint="tiny", steps=50, batch_size=2), [0, 1, 2, 3], ["cfg"])
    with pytest.raises(RequestError, match="this comparison of families needs"):
        family_requests(cache, ["tiny", "tiny-flow"], class_index=0, seed=0, batch_size=16, steps=100,
                        solver="heun", scale=3.0)
    small = run_request(cache, SampleRequest(checkpoint="tiny", steps=5, batch_size=2))  # within the budget: runs
    assert small.nfe == 5


def test_a_measured_budget_estimates_the_default_generate_at_seconds_not_minutes(checkpoint_dir):
    from diffusion.serving.budget import MODEL_EFFICIENCY, WorkBudget, matmul_flops_per_second

    assert matmul_flops_per_second("cpu") > 1e9  # any machine that runs this does a GFLOP/s
    budget = WorkBudget()
    assert budget.rate == pytest.approx(MODEL_EFFICIENCY * budget.machine_rate.probes[0])


def test_the_command_line_answers_a_deeply_nested_file_in_one_line(tmp_path):
    from conftest import run_cli

    deep = tmp_path / "deep.safetensors"
    deep.write_bytes(safetensors_bytes(("[" * 100_000 + "]" * 100_000).encode()))
    for args in (("sample", "--checkpoint", str(deep), "--out", str(tmp_path / "s.png")),
                 ("cards", "--checkpoint-dir", str(tmp_path))):
        result = run_cli(*args)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert result.stderr.strip().endswith("nested 100,000 levels deep (at most 32)"), result.stderr


def test_the_library_and_command_line_are_not_bounded_by_the_apps_budget(checkpoint_dir):
    """An evaluation's DDPM-1000 rows run for minutes on purpose: only the app's cache carries a bound."""
    from diffusion.serving.engine import check_work

    cache = ModelCache(checkpoint_dir)
    huge = SampleRequest(checkpoint="tiny", sampler="ddpm", steps=1000, batch_size=64)
    assert check_work(cache, [huge] * 100) > 0  # an estimate, never a refusal
    import app

    assert app.parse_args([]).max_request_seconds == 180
