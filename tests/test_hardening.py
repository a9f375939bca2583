"""Faults, bad input and security: nothing unpickles, fuzzed requests fail cleanly, training survives a kill."""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import write_tiny_checkpoints
from diffusion.serving.engine import ModelCache, RequestError, SampleRequest, run_request
from diffusion.training import STATE_FILE, Trainer, weights_digest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(ROOT.glob("diffusion/**/*.py")) + [ROOT / "app.py", ROOT / "loadtest.py"]


def test_nothing_unpickles_or_evaluates_input():
    # torch.load / pickle / marshal / builtin eval and exec (nn.Module.eval() is fine)
    forbidden = re.compile(r"torch\.load\(|import (c?pickle|marshal|dill|joblib)|pickle\.loads?\(|"
                           r"(?<![.\w])(eval|exec)\((?!\))|weights_only\s*=\s*False")
    offenders = [f"{path.name}:{n}" for path in SOURCES
                 for n, line in enumerate(path.read_text().splitlines(), 1) if forbidden.search(line)]
    assert offenders == []


def test_app_binds_locally_without_share_or_extra_paths():
    source = (ROOT / "app.py").read_text()
    assert 'default="127.0.0.1"' in source and "allowed_paths" not in source and "gr.UploadButton" not in source
    import app

    args = app.parse_args([])
    assert args.host == "127.0.0.1" and args.share is False


# --- fuzzing the request validator and the sampler entry point ---------------------------------
@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return ModelCache(write_tiny_checkpoints(tmp_path_factory.mktemp("fuzz") / "ckpt"), device="cpu")


anything = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
                     st.text(max_size=20), st.just("../../etc/passwd"), st.just("/etc/passwd"))
numbers = st.one_of(st.integers(-10**9, 10**9), st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(checkpoint=st.one_of(st.sampled_from(["tiny", "tiny-flow", "tiny-evaluator"]), anything),
       sampler=st.one_of(st.sampled_from(["ddpm", "ddim", "ode"]), anything),
       solver=st.one_of(st.sampled_from(["euler", "heun", "dpm++2m"]), anything),
       steps=st.one_of(st.integers(-3, 4), numbers, anything), eta=numbers,
       guidance=st.one_of(st.sampled_from(["none", "cfg", "classifier"]), anything),
       class_index=st.one_of(st.integers(-2, 4), anything), scale=numbers, self_condition=st.booleans(),
       seed=st.one_of(st.integers(-5, 2**64), anything), batch_size=st.one_of(st.integers(-1, 3), numbers))
def test_fuzzed_requests_either_sample_or_raise_request_error(cache, checkpoint, sampler, solver, steps, eta, guidance,
                                                              class_index, scale, self_condition, seed, batch_size):
    request = SampleRequest(checkpoint=checkpoint, sampler=sampler, solver=solver, steps=steps, eta=eta,
                            guidance=guidance, class_index=class_index, scale=scale, self_condition=self_condition,
                            seed=seed, batch_size=batch_size)
    try:
        result = run_request(cache, request)
    except RequestError as error:
        assert str(error) and "Traceback" not in str(error)
        return
    assert result.images.shape[0] == batch_size and torch.isfinite(result.images).all()
    assert 1 <= steps <= 4 and 0 <= eta <= 1 and math.isfinite(scale)


@settings(max_examples=40, deadline=None)
@given(data=st.binary(max_size=600), header=st.integers(0, 2**64 - 1))
def test_fuzzed_checkpoint_files_are_refused_cleanly(tmp_path_factory, data, header):
    from diffusion.formats.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path_factory.mktemp("bad") / "x.safetensors"
    path.write_bytes(header.to_bytes(8, "little") + data)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


# --- faults -----------------------------------------------------------------------------------
def test_checkpoint_deleted_or_replaced_while_cached(tmp_path):
    folder = write_tiny_checkpoints(tmp_path / "ckpt")
    cache = ModelCache(folder, device="cpu")
    request = SampleRequest(checkpoint="tiny", steps=2, batch_size=2, class_index=0)
    first = run_request(cache, request).images
    (folder / "tiny.safetensors").unlink()
    with pytest.raises(RequestError, match="no checkpoint named 'tiny'"):
        run_request(cache, request)
    (folder / "tiny.safetensors").write_bytes(b"half a file")  # replaced by garbage: reported, not served
    with pytest.raises(RequestError, match="unavailable"):
        run_request(cache, request)
    write_tiny_checkpoints(folder)  # restored: served again, same pixels
    assert torch.equal(run_request(cache, request).images, first)


# --- bad files are caught when listed, not when first used --------------------------------------
def _entry(cache, name):
    return {e.name: e for e in cache.entries()}.get(name)


@pytest.mark.parametrize("cut", ["half", "all but the last 100 bytes"])
def test_truncated_files_are_listed_as_unavailable(tmp_path, cut):
    folder = write_tiny_checkpoints(tmp_path / "ckpt")
    data = (folder / "tiny.safetensors").read_bytes()
    (folder / "cut.safetensors").write_bytes(data[: len(data) // 2] if cut == "half" else data[:-100])
    cache = ModelCache(folder, device="cpu")
    entry = _entry(cache, "cut")
    assert not entry.available and "truncated" in entry.error
    assert "cut" not in cache.names("denoiser") and "tiny" in cache.names("denoiser")


def test_a_config_that_does_not_match_the_tensors_is_listed_as_unavailable(tmp_path):
    from safetensors.torch import load_file, save_file

    from diffusion.formats.checkpoint import read_metadata

    folder = write_tiny_checkpoints(tmp_path / "ckpt")
    meta = read_metadata(folder / "tiny.safetensors")
    config = meta["config"] | {"network_config": meta["config"]["network_config"] | {"base_channels": 16}}
    save_file(load_file(folder / "tiny.safetensors"), folder / "mismatch.safetensors",
              metadata={"format": meta["format"], "kind": "denoiser", "config": json.dumps(config),
                        "training": "{}", "card": ""})
    entry = _entry(ModelCache(folder, device="cpu"), "mismatch")
    assert not entry.available and "shape" in entry.error


def test_hidden_files_are_not_listed(tmp_path):
    folder = write_tiny_checkpoints(tmp_path / "ckpt")
    (folder / ".hidden.safetensors").write_bytes((folder / "tiny.safetensors").read_bytes())
    cache = ModelCache(folder, device="cpu")
    assert ".hidden" not in [e.name for e in cache.entries()]
    with pytest.raises(RequestError):
        cache.get(".hidden")


def test_a_fifo_does_not_hang_the_listing_and_links_are_not_followed(tmp_path):
    import threading

    folder = write_tiny_checkpoints(tmp_path / "ckpt")
    os.mkfifo(folder / "x.safetensors")
    secret = tmp_path / "secret"
    secret.write_bytes(b"\x39\x30\x00\x00\x00\x00\x00\x00 top secret")  # first 8 bytes read as 12345
    (folder / "link.safetensors").symlink_to(secret)
    cache = ModelCache(folder, device="cpu")
    entries = {}
    listing = threading.Thread(target=lambda: entries.update({e.name: e for e in cache.entries()}), daemon=True)
    listing.start()
    listing.join(timeout=10)
    assert not listing.is_alive(), "listing blocked on a FIFO"
    assert "not a regular file" in entries["x"].error
    assert "symbolic link" in entries["link"].error and "12345" not in entries["link"].error
    assert entries["tiny"].available


def test_a_file_replaced_with_the_same_size_and_mtime_is_reloaded(tmp_path):
    folder = write_tiny_checkpoints(tmp_path / "ckpt")
    cache = ModelCache(folder, device="cpu")
    path = folder / "tiny.safetensors"
    before = cache.get("tiny")
    stat = path.stat()
    other = folder / "other.tmp"
    other.write_bytes(path.read_bytes())  # same bytes, a new inode
    os.utime(other, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.replace(other, path)
    assert path.stat().st_mtime_ns == stat.st_mtime_ns and path.stat().st_size == stat.st_size
    assert cache.get("tiny") is not before and cache.loads == 2


def test_a_model_that_outputs_nan_is_reported_not_shown_as_black(tmp_path):
    from diffusion.serving.engine import FlowRequest, SamplingError

    folder = write_tiny_checkpoints(tmp_path / "ckpt")
    cache = ModelCache(folder, device="cpu")
    with torch.no_grad():
        cache.get("tiny").network.head[-1].bias.fill_(float("nan"))
        cache.get("tiny-nice").network.log_scale.fill_(float("nan"))
    with pytest.raises(SamplingError, match="non-finite values \\(NaN or inf\\) in 2 of 2 images"):
        run_request(cache, SampleRequest(checkpoint="tiny", steps=2, batch_size=2, class_index=0))
    with pytest.raises(SamplingError, match="non-finite"):
        run_request(cache, FlowRequest(checkpoint="tiny-nice", batch_size=2, class_index=0))


def _state_step(run_dir: Path) -> int:
    from safetensors import safe_open

    try:
        with safe_open(run_dir / STATE_FILE, "pt") as f:
            return int(f.metadata()["step"])
    except Exception:
        return -1


def test_training_killed_between_saves_resumes_with_nothing_lost(tmp_path):
    from test_training import tiny_config, write_image_folder

    folder = write_image_folder(tmp_path / "imgs")
    config = tiny_config(tmp_path / "killed", data=str(folder), steps=400, save_every=3, batch_size=4)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(config.to_dict()))
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "diffusion", "train", "--config", str(config_file)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = Path(config.run_dir)
    deadline = time.time() + 120
    while _state_step(run_dir) < 6 and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = _state_step(run_dir)
    assert 6 <= saved < 400 and saved % 3 == 0  # a complete state file from a save, never a partial one
    assert not list(run_dir.glob("*.tmp"))

    from diffusion.formats.data import load_image_folder

    data = load_image_folder(folder, 8)
    target = saved + 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the killed process: float sums depend on the thread count
    try:
        resumed = Trainer(replace(config, steps=target), dataset=data)
        resumed.load_state()
        resumed.train(progress=False)
        straight = Trainer(replace(config, steps=target, run_dir=str(tmp_path / "straight")), dataset=data)
        straight.train(progress=False)
    finally:
        torch.set_num_threads(threads)
    assert weights_digest(resumed.network) == weights_digest(straight.network)
    assert weights_digest(resumed.ema.ema_model) == weights_digest(straight.ema.ema_model)


# --- a study is one model, checked whole before it starts ----------------------------------------
def test_a_study_samples_one_model_even_if_the_file_is_replaced_mid_run(tmp_path):
    import hashlib
    from dataclasses import replace as change

    from conftest import tiny_unet
    from diffusion.formats.checkpoint import model_config, save_checkpoint
    from diffusion.serving.studies import compare_samplers

    folder = write_tiny_checkpoints(tmp_path / "ckpt")
    path = folder / "tiny.safetensors"
    original_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    base = SampleRequest(checkpoint="tiny", steps=3, batch_size=2, class_index=1, guidance="none", seed=4)
    requests = [change(base, sampler="ddpm"), change(base, sampler="ddim"), change(base, sampler="ode", solver="euler")]
    alone, _ = compare_samplers(ModelCache(folder, device="cpu"), requests)

    other = tiny_unet(seed=9, image_size=8, num_classes=3)
    def replace_the_file(column, done, total):
        if column == 0 and done == 1:  # during the first column: the next two must not see the new file
            save_checkpoint(path, "denoiser", other, model_config("denoiser", other, class_names=("a", "b", "c"),
                            schedule="vp-cosine", parameterization="v"), {}, "replaced")

    results, manifest = compare_samplers(ModelCache(folder, device="cpu"), requests, progress=replace_the_file)
    assert hashlib.sha256(path.read_bytes()).hexdigest() != original_sha  # it was replaced
    assert manifest["checkpoint"]["sha256"] == original_sha  # the hash of what was sampled
    for mine, reference in zip(results, alone):
        assert torch.equal(mine.images, reference.images)


def test_a_sweep_with_a_bad_last_scale_fails_before_any_sampling(tmp_path):
    from diffusion.serving.studies import guidance_sweep

    cache = ModelCache(write_tiny_checkpoints(tmp_path / "ckpt"), device="cpu")
    calls = []
    base = SampleRequest(checkpoint="tiny", steps=50, batch_size=2, class_index=0)
    with pytest.raises(RequestError, match="guidance scale must be between"):
        guidance_sweep(cache, base, [1.0, 2.0, 1000.0], ["cfg"], progress=lambda *a: calls.append(a))
    assert calls == []
