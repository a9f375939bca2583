"""diffusers UNet2DModel pipeline folders: our samplers against diffusers' own pipelines, the scheduler mapping,
conversion to one file, and untrusted folders."""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import write_diffusers_folder

from diffusion.formats.checkpoint import CheckpointError, load_checkpoint
from diffusion.formats.conversion import convert_folder
from diffusion.formats.diffusers_folder import check_folder, load_folder, read_folder
from diffusion.serving.engine import ModelCache, RequestError, SampleRequest, run_request
from diffusion.core.sampling import image_generators
from diffusion.core.schedules import DiscreteBetas, Schedule, time_grid

diffusers = pytest.importorskip("diffusers", reason="diffusers is a test dependency: pip install -e '.[test]'")

BATCH, SEED = 2, 5


def unconditional(name, sampler, steps, **changes):
    return SampleRequest(checkpoint=name, sampler=sampler, steps=steps, spacing="leading", guidance="none",
                         class_index=None, batch_size=BATCH, seed=SEED, **changes)


def ours_as_numpy(images: torch.Tensor) -> np.ndarray:
    """Our [-1, 1] images as the pipelines' output_type='np': (B, H, W, C) in [0, 1]."""
    return (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def generators():
    return image_generators(SEED, BATCH)  # the same per-image streams feed both (x_T, then each step's noise)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("beta_schedule", ["linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_and_ddpm_equal_the_diffusers_pipelines(tmp_path, channels, beta_schedule, prediction_type):
    """With diffusers' default clip_sample=True. diffusers' DDIM with clipping keeps the unclipped eps unless
    use_clipped_model_output; ours recomputes eps from the clipped x0 (consistent with x_t), so it is checked
    against use_clipped_model_output=True (and unclipped DDIM against the default below)."""
    folder, unet, scheduler = write_diffusers_folder(tmp_path / "peer", channels=channels, beta_schedule=beta_schedule,
                                                     prediction_type=prediction_type, clip_sample=True)
    cache = ModelCache(tmp_path, device="cpu")
    ddim = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler.from_config(scheduler.config))
    ddpm = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    ddim.set_progress_bar_config(disable=True)
    ddpm.set_progress_bar_config(disable=True)
    with torch.no_grad():
        # 25 and 50 steps: every step's formula meets the peer's over a chain (the full 1000-step DDPM is below)
        theirs_ddim = ddim(batch_size=BATCH, generator=generators(), num_inference_steps=25, eta=0.0, output_type="np",
                           use_clipped_model_output=True).images
        theirs_ddpm = ddpm(batch_size=BATCH, generator=generators(), num_inference_steps=50, output_type="np").images
    ours_ddim = ours_as_numpy(run_request(cache, unconditional("peer", "ddim", 25)).images)
    ours_ddpm = ours_as_numpy(run_request(cache, unconditional("peer", "ddpm", 50)).images)
    assert ours_ddim.shape == theirs_ddim.shape == (BATCH, 16, 16, channels)
    # Measured at 50 / 100 steps: DDIM <= 3e-6, DDPM <= 3e-5 (diffusers keeps alphas_cumprod as a float32 cumprod).
    assert np.abs(ours_ddim - theirs_ddim).max() < 1e-4
    assert np.abs(ours_ddpm - theirs_ddpm).max() < 1e-4
    assert theirs_ddim.std() > 0.05  # a real picture, not a constant that would match anything


def test_full_ddpm_and_unclipped_ddim_equal_the_pipelines(tmp_path):
    """Full DDPM, a step at every training timestep (with clip_sample), and DDIM without clipping. The clipped
    folder's scheduler has 250 training timesteps: the same full chain as DDPMPipeline's default of 1000 on a
    1000-step scheduler, at a quarter of the cost (two 1000-step chains took 16-20 s of a CI run)."""
    folder, unet, scheduler = write_diffusers_folder(tmp_path / "clipped", channels=1, clip_sample=True,
                                                     num_train_timesteps=250)
    write_diffusers_folder(tmp_path / "plain", channels=3, prediction_type="v_prediction", clip_sample=False, seed=1)
    cache = ModelCache(tmp_path, device="cpu")
    assert cache.get("clipped").config["clip_x0"] is True  # the request's clip_x0=None takes the folder's setting
    ddpm = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    plain = diffusers.DDIMPipeline.from_pretrained(tmp_path / "plain", use_safetensors=True)
    for pipeline in (ddpm, plain):
        pipeline.set_progress_bar_config(disable=True)
    with torch.no_grad():
        theirs_ddpm = ddpm(batch_size=BATCH, generator=generators(), num_inference_steps=250, output_type="np").images
        theirs_ddim = plain(batch_size=BATCH, generator=generators(), num_inference_steps=50, output_type="np").images
    ours_ddpm = ours_as_numpy(run_request(cache, unconditional("clipped", "ddpm", 250)).images)
    ours_ddim = ours_as_numpy(run_request(cache, unconditional("plain", "ddim", 50)).images)
    assert np.abs(ours_ddpm - theirs_ddpm).max() < 1e-4
    assert np.abs(ours_ddim - theirs_ddim).max() < 1e-4
    clipped = ours_as_numpy(run_request(cache, unconditional("plain", "ddim", 50, clip_x0=True)).images)
    assert np.abs(clipped - ours_ddim).max() > 1e-3  # the setting is really applied


def test_converted_file_gives_the_same_images_as_the_folder(tmp_path):
    write_diffusers_folder(tmp_path / "folder", channels=3, prediction_type="v_prediction")
    out = convert_folder(tmp_path / "folder", tmp_path / "converted.safetensors")
    converted = load_checkpoint(out)
    assert converted.config["network"] == "DiffusersUNet2D" and converted.config["source"]["format"] == "diffusers"
    assert "UNet2DModel" in converted.card
    cache = ModelCache(tmp_path, device="cpu")
    assert set(cache.names("denoiser")) == {"converted", "folder"}
    for sampler, steps in (("ddim", 20), ("ode", 8), ("ddpm", 20)):
        request = unconditional("folder", sampler, steps)
        a = run_request(cache, request).images
        b = run_request(cache, SampleRequest(**{**request.__dict__, "checkpoint": "converted"})).images
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("kind, extra", [("linear", {}), ("scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
                                         ("squaredcos_cap_v2", {}), ("table", {})])
def test_schedule_matches_diffusers_alphas_cumprod_at_every_timestep(kind, extra):
    table = torch.linspace(1e-4, 0.03, 500).tolist()
    peer = diffusers.DDPMScheduler(num_train_timesteps=len(table) if kind == "table" else 1000,
                                   trained_betas=table if kind == "table" else None,
                                   beta_schedule="linear" if kind == "table" else kind, **extra)
    betas = DiscreteBetas(kind=kind, steps=len(peer.alphas_cumprod), table=tuple(table) if kind == "table" else (),
                          start=extra.get("beta_start", 1e-4), end=extra.get("beta_end", 0.02))
    schedule = Schedule("vp-discrete", betas)
    n = betas.steps
    alpha, _ = schedule.alpha_sigma(torch.arange(1, n + 1, dtype=torch.float64) / n)  # timestep k at t = (k + 1) / N
    torch.testing.assert_close(alpha**2, peer.alphas_cumprod.double(), atol=2e-6, rtol=1e-4)  # theirs: float32


def test_leading_grid_is_diffusers_timesteps_with_offset():
    peer = diffusers.DDIMScheduler(num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading")
    peer.set_timesteps(50)
    grid = time_grid(Schedule("vp-discrete", DiscreteBetas(steps_offset=1)), 50, "leading")
    assert [round(t * 1000) - 1 for t in grid[:-1].tolist()] == peer.timesteps.tolist()  # 981, 961, ..., 1
    assert grid[-1] == 0.0
    with pytest.raises(ValueError, match="discrete schedule"):
        time_grid(Schedule("vp-cosine"), 10, "leading")


def test_adapter_maps_log_snr_back_to_the_timestep(tmp_path):
    write_diffusers_folder(tmp_path / "f", beta_schedule="squaredcos_cap_v2")
    network = load_folder(tmp_path / "f").network
    k = torch.tensor([0.0, 1.0, 17.0, 500.0, 998.0, 999.0, 250.5], dtype=torch.float64)
    log_snr = network.schedule.log_snr((k + 1) / 1000).float()  # as the Denoiser hands it over
    torch.testing.assert_close(network.timestep(log_snr), k, atol=2e-3, rtol=0)


def test_class_conditional_folder_gets_classes_and_cfg_only_with_a_null_class(tmp_path):
    write_diffusers_folder(tmp_path / "cond", num_class_embeds=4, channels=1)
    cache = ModelCache(tmp_path, device="cpu")
    model = cache.get("cond")
    assert model.class_names == ("class 0", "class 1", "class 2", "class 3") and model.config["null_class"] is None
    request = SampleRequest(checkpoint="cond", steps=4, class_index=2, batch_size=2, guidance="none")
    assert run_request(cache, request).images.shape == (2, 1, 16, 16)
    with pytest.raises(RequestError, match="no null class.*--null-class"):
        run_request(cache, SampleRequest(**{**request.__dict__, "guidance": "cfg"}))
    with pytest.raises(RequestError, match="choose a class"):
        run_request(cache, SampleRequest(**{**request.__dict__, "class_index": None}))

    out = convert_folder(tmp_path / "cond", tmp_path / "cond-cfg.safetensors", class_names=("a", "b", "c"), null_class=3)
    assert load_checkpoint(out).class_names == ("a", "b", "c")
    guided = run_request(cache, SampleRequest(**{**request.__dict__, "checkpoint": "cond-cfg", "guidance": "cfg",
                                                 "scale": 3.0, "class_index": 1}))
    assert torch.isfinite(guided.images).all() and guided.nfe == 4
    with pytest.raises(CheckpointError, match="null class must be the last"):
        convert_folder(tmp_path / "cond", tmp_path / "x.safetensors", class_names=("a", "b", "c"), null_class=0)


def _edit_json(path, **changes):
    data = json.loads(path.read_text())
    path.write_text(json.dumps(data | changes))


@pytest.mark.parametrize("breakage, message", [
    (lambda f: (f / "scheduler/scheduler_config.json").write_text("{not json"), "scheduler_config.json: not valid JSON"),
    (lambda f: (f / "unet/config.json").unlink(), "missing unet/config.json"),
    (lambda f: _edit_json(f / "scheduler/scheduler_config.json", _class_name="ScoreSdeVeScheduler"), "not supported"),
    (lambda f: _edit_json(f / "scheduler/scheduler_config.json", prediction_type="flow"), "prediction_type 'flow'"),
    (lambda f: _edit_json(f / "scheduler/scheduler_config.json", beta_schedule="sigmoid"), "unknown beta schedule"),
    (lambda f: _edit_json(f / "model_index.json", _class_name="StableDiffusionPipeline"), "pipeline"),
    (lambda f: _edit_json(f / "unet/config.json", block_out_channels=[16, 64]), "shape"),
    (lambda f: _edit_json(f / "unet/config.json", out_channels=6), "learned-variance"),
    (lambda f: _edit_json(f / "unet/config.json", sample_size=4096), "sample_size"),
    (lambda f: (f / "unet/diffusion_pytorch_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}"),
     "truncated|not a safetensors"),
])
def test_broken_folders_get_a_named_error_and_the_rest_is_still_served(tmp_path, breakage, message):
    write_diffusers_folder(tmp_path / "good", channels=1)
    shutil.copytree(tmp_path / "good", tmp_path / "bad")
    breakage(tmp_path / "bad")
    cache = ModelCache(tmp_path, device="cpu")
    entries = {e.name: e for e in cache.entries()}
    assert entries["good"].available and not entries["bad"].available
    assert "bad" in entries["bad"].error and __import__("re").search(message, entries["bad"].error), entries["bad"].error
    with pytest.raises(RequestError, match="unavailable"):
        cache.get("bad")
    assert run_request(cache, unconditional("good", "ddim", 3)).images.shape == (BATCH, 1, 16, 16)


def test_pickled_weights_are_never_opened_and_the_error_says_how_to_convert(tmp_path, monkeypatch):
    folder, _, _ = write_diffusers_folder(tmp_path / "old", channels=1)
    (folder / "unet/diffusion_pytorch_model.safetensors").unlink()
    (folder / "unet/diffusion_pytorch_model.bin").write_bytes(b"\x80\x04 a pickle that must never be loaded")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    with pytest.raises(CheckpointError, match="never opened.*save_pretrained.*safe_serialization=True"):
        check_folder(folder)
    entry = ModelCache(tmp_path, device="cpu").entries()[0]
    assert entry.name == "old" and not entry.available and "pickled" in entry.error


def test_symlinked_files_are_not_followed(tmp_path):
    folder, _, _ = write_diffusers_folder(tmp_path / "linked", channels=1)
    config = folder / "unet/config.json"
    (tmp_path / "elsewhere.json").write_text(config.read_text())
    config.unlink()
    config.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(CheckpointError, match="symbolic link"):
        read_folder(folder)


def test_without_diffusers_the_error_says_how_to_install(tmp_path, monkeypatch):
    write_diffusers_folder(tmp_path / "f", channels=1)
    out = convert_folder(tmp_path / "f", tmp_path / "f.safetensors")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(CheckpointError, match=r"pip install 'diffusion-playground\[diffusers\]'"):
        load_checkpoint(out)
    with pytest.raises(CheckpointError, match="optional diffusers package"):
        check_folder(tmp_path / "f")


def test_hostile_config_values_give_a_checkpoint_error_and_nothing_else(tmp_path):
    """Any JSON value in any scheduler or UNet config field: the folder loads, or CheckpointError names the problem."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    folder, _, _ = write_diffusers_folder(tmp_path / "base", channels=1)
    scheduler_file, unet_file = folder / "scheduler/scheduler_config.json", folder / "unet/config.json"
    scheduler, unet = json.loads(scheduler_file.read_text()), json.loads(unet_file.read_text())
    values = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=True)
                          | st.text(max_size=8), lambda inner: st.lists(inner, max_size=4), max_leaves=6)
    fields = st.sampled_from([("scheduler", k) for k in (*scheduler, "trained_betas", "steps_offset")]
                             + [("unet", k) for k in unet])

    @settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", 60)), deadline=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(changes=st.lists(st.tuples(fields, values), min_size=1, max_size=3))
    def check(changes):
        edited = {"scheduler": dict(scheduler), "unet": dict(unet)}
        for (where, key), value in changes:
            edited[where][key] = value
        scheduler_file.write_text(json.dumps(edited["scheduler"]))
        unet_file.write_text(json.dumps(edited["unet"]))
        try:
            check_folder(folder)
        except CheckpointError:
            pass

    check()


def test_grids_keep_colour_and_scale_with_the_image_size():
    from diffusion.formats.images import display_scale, image_grid, to_pil

    assert [display_scale(side) for side in (8, 28, 32, 64, 128, 256)] == [12, 3, 3, 2, 1, 1]
    images = torch.zeros(3, 3, 32, 32)
    images[:, 0] = 1.0  # red in [-1, 1]: R = 255, G = B = 128 (0 maps to mid-grey)
    picture = to_pil(image_grid(images, columns=3), scale=display_scale(32))
    assert picture.mode == "RGB" and picture.size == (3 * (3 * 34 + 2), 3 * (34 + 2))
    assert picture.getpixel((3 * 10, 3 * 10)) == (255, 128, 128)
