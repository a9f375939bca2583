"""Tiny models and checkpoint folders that tests build in seconds."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
import traceback
from dataclasses import replace
from pathlib import Path

# Python keeps what it compiles (.pyc) even where PYTHONDONTWRITEBYTECODE is set, as on the CI machines: the suite
# starts about twenty Python processes (torchrun ranks, app servers, DDP), and with `pip install --no-compile` each one
# compiled torch's and Gradio's modules again (test_sharding.py: 103 s of CPU without a cache, 53 s with one).
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

import pytest  # noqa: E402 (the imports below come after the setting, so that what they compile is kept)
import torch  # noqa: E402

from diffusion.formats.checkpoint import model_config, save_checkpoint  # noqa: E402
from diffusion.models import ClassifierConfig, NICEConfig, UNetConfig, build_network

# Under pytest-xdist the two workers share the 2 cores: one thread each (oversubscribed threads spin and slow both).
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))

TINY_CLASSES = ("circle", "square", "cross")
TINY_UNET = UNetConfig(image_size=8, base_channels=8, channel_mults=(1, 2), attention_levels=(1,), attention_heads=2,
                       num_classes=3, self_condition=True, embedding_dim=16)
TINY_NICE = NICEConfig(image_size=8, couplings=2, hidden_width=16, hidden_layers=1, num_classes=3, class_embedding_dim=4)
TINY_CLASSIFIER = ClassifierConfig(image_size=8, base_channels=8, channel_mults=(1, 2), num_classes=3, embedding_dim=16)


def randomize(network: torch.nn.Module, seed: int = 0, std: float = 0.2) -> torch.nn.Module:
    """Replace the zero-initialised output layers' weights so the network's output depends on its input."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)
    return network.eval()


def tiny_unet(seed=0, **changes):
    return randomize(build_network("UNet", replace(TINY_UNET, **changes)), seed)


def tiny_classifier(seed=1, **changes):
    return randomize(build_network("Classifier", replace(TINY_CLASSIFIER, **changes)), seed)


def tiny_nice(seed=4, **changes):
    """A tiny NICE with non-identity couplings and log-scales of about +-0.1."""
    network = randomize(build_network("NICE", replace(TINY_NICE, **changes)), seed)
    with torch.no_grad():
        network.log_scale.mul_(0.5)
    return network


def write_tiny_checkpoints(folder, schedule="vp-cosine", parameterization="v", image_size=8, class_names=TINY_CLASSES):
    """A denoiser, a flow denoiser, a NICE, a noisy classifier and an evaluator, randomly initialised, in `folder`."""
    size = {"image_size": image_size, "num_classes": len(class_names)}
    unet = tiny_unet(**size)
    save_checkpoint(folder / "tiny.safetensors", "denoiser", unet,
                    model_config("denoiser", unet, class_names=class_names, schedule=schedule,
                                 parameterization=parameterization), {"steps": 0}, "A tiny test model.")
    flow = tiny_unet(seed=3, self_condition=False, **size)
    save_checkpoint(folder / "tiny-flow.safetensors", "denoiser", flow,
                    model_config("denoiser", flow, class_names=class_names, schedule="flow", parameterization="flow"),
                    {"steps": 0}, "A tiny flow model without self-conditioning.")
    nice = tiny_nice(**size)
    save_checkpoint(folder / "tiny-nice.safetensors", "normalizing-flow", nice,
                    model_config("normalizing-flow", nice, class_names=class_names), {"steps": 0},
                    "A tiny class-conditional NICE.")
    noisy = tiny_classifier(**size)
    save_checkpoint(folder / "tiny-noisy-classifier.safetensors", "noisy-classifier", noisy,
                    model_config("noisy-classifier", noisy, class_names=class_names), {"steps": 0}, "Tiny classifier.")
    evaluator = tiny_classifier(seed=2, noise_conditioned=False, **size)
    save_checkpoint(folder / "tiny-evaluator.safetensors", "evaluator", evaluator,
                    model_config("evaluator", evaluator, class_names=class_names), {"steps": 0}, "Tiny evaluator.")
    return folder


def run_cli(*args, cwd=None):
    """`python -m diffusion ARGS` in this process (no interpreter start-up per call), in a fresh temporary folder
    unless `cwd`, so a default output path lands there, never in the repository. Returns what a subprocess would:
    returncode, stdout, stderr (an uncaught exception is printed as its traceback, as the interpreter would)."""
    from diffusion.__main__ import main

    out, err, code = io.StringIO(), io.StringIO(), 0
    before = os.getcwd()
    os.chdir(cwd or tempfile.mkdtemp(prefix="cli-"))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(map(str, args)))
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
                if isinstance(done.code, str):
                    print(done.code, file=sys.stderr)
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture
def checkpoint_dir(tmp_path):
    return write_tiny_checkpoints(tmp_path / "checkpoints")


def write_diffusers_folder(folder, channels=3, size=16, beta_schedule="linear", prediction_type="epsilon",
                           clip_sample=False, num_class_embeds=None, pipeline="DDPMPipeline", seed=0,
                           num_train_timesteps=1000):
    """A diffusers pipeline folder as `save_pretrained(safe_serialization=True)` writes it: a small randomly
    initialised UNet2DModel and a DDPMScheduler. Returns (folder, the UNet, the scheduler)."""
    from diffusers import DDIMPipeline, DDPMPipeline, DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=size, in_channels=channels, out_channels=channels, layers_per_block=1,
                       block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8, attention_head_dim=8,
                       num_class_embeds=num_class_embeds).eval()
    scheduler = DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type=prediction_type,
                              clip_sample=clip_sample)
    kind = DDPMPipeline if pipeline == "DDPMPipeline" else DDIMPipeline
    kind(unet=unet, scheduler=scheduler).save_pretrained(folder, safe_serialization=True)
    return folder, unet, scheduler


@contextlib.contextmanager
def quick_lab_models():
    """The 2-D lab's learned models train 40 steps at first use (about 0.2 s, not 3 s each), in a model cache of
    their own that is dropped afterwards: for tests that read what the page sends and shows, not how well the models
    learned (test_lab2d_samplers checks that)."""
    from diffusion.lab2d import train, view

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(view, "_MODELS", {})
        patch.setattr(view, "train_mlp", lambda mix, **kw: train.train_mlp(mix, **(kw | {"steps": 40})))
        patch.setattr(view, "train_student",
                      lambda *a, **kw: train.train_student(*a, **(kw | {"steps": 40, "pairs": 256})))
        yield


# --- the app over the tiny checkpoints, and a browser page of it (test_app.py, test_tour.py) ---
CHROMIUM = "/usr/bin/chromium"


@pytest.fixture(scope="module")
def app_cache(tmp_path_factory):
    """The model cache the test server runs on (the app's whole backend)."""
    from diffusion.serving.budget import WorkBudget
    from diffusion.serving.engine import ModelCache

    folder = write_tiny_checkpoints(tmp_path_factory.mktemp("app") / "checkpoints")
    (folder / "corrupt.safetensors").write_bytes(b"\x00" * 50)  # listed as unavailable, app still starts
    write_diffusers_folder(folder / "colour32", channels=3, size=32, clip_sample=True)  # a user's diffusers folder
    # A fixed rate, so the work budget refuses the same requests on every machine: 180 s at 1.5 GFLOP/s is 90,000
    # image-evaluations of the 3-MFLOP tiny UNet.
    return ModelCache(folder, capacity=4, budget=WorkBudget(seconds=180, flops_per_second=1.5e9))


@pytest.fixture(scope="module")
def server(app_cache):
    import app

    # 127.0.0.1 as a trusted proxy: loadtest.run_load's sixteen users are sixteen addresses in X-Forwarded-For (the
    # guard allows 8 waiting jobs per address)
    with app.serve(app_cache, trusted_proxies=("127.0.0.1",)) as url:
        yield url



# True once every input's value and checked state has been the same for four polls in a row.
STABLE = """() => {
  const now = JSON.stringify([...document.querySelectorAll('input, textarea')].map(i => [i.value, i.checked]));
  if (window.__controls === now) { window.__stable = (window.__stable || 0) + 1; } else { window.__stable = 0; }
  window.__controls = now;
  return window.__stable >= 4;
}"""


_BROWSER = []  # [playwright, browser]: one Chromium per test process


def shared_browser():
    """Chromium, started on first use and kept for the rest of this test process (closed at its end): starting
    Playwright's driver and a browser for each test took ~1.3 s a test on these cores. Each page still gets a browser
    context of its own (no cookies, storage or cache carried from one test to the next)."""
    if not _BROWSER:
        from playwright.sync_api import sync_playwright

        playwright = sync_playwright().start()
        _BROWSER.extend([playwright, playwright.chromium.launch(executable_path=CHROMIUM,
                                                                args=["--no-sandbox", "--disable-gpu"])])
    return _BROWSER[1]


def pytest_sessionfinish(session):
    if _BROWSER:
        playwright, browser = _BROWSER
        browser.close()
        playwright.stop()
        _BROWSER.clear()


@contextlib.contextmanager
def browser_page(url=None, width=1400, height=1000):
    """A page in a fresh browser context at width x height, at `url` if given; the context is closed afterwards."""
    context = shared_browser().new_context(viewport={"width": width, "height": height})
    try:
        page = context.new_page()
        if url:
            page.goto(url)
        yield page
    finally:
        context.close()


def app_page(server):
    """A page of the app in headless Chromium at 1400 x 1000."""
    return browser_page(server)


# The longest modules first (their seconds in a run of 2026-12-07 (5): 122, 82, 71, 45, 44, 44, ...): with --dist
# loadfile a worker takes a whole module at a time, and a long one handed out last kept one core busy alone at the end
# (a run took 529 s where its 986 s of tests on 2 workers make 493). xdist keeps this order only with
# --no-loadscope-reorder (pyproject's addopts); without it, it hands out the modules with the most tests first.
LONGEST_FIRST = ("test_app", "test_every_control", "test_evaluation", "test_cli", "test_tour", "test_edit_app",
                 "test_endpoint_defaults", "test_sharding", "test_tour_fixes", "test_diffusers_import",
                 "test_hardening_round4", "test_accessibility", "test_lab2d_samplers", "test_engine",
                 "test_phone_layout")


def module_rank(item) -> int:
    module = Path(item.nodeid.split("::")[0]).stem
    return LONGEST_FIRST.index(module) if module in LONGEST_FIRST else len(LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
    """The longest modules first (a stable sort: each module's tests stay together and in order). Tests marked
    `compile` run only when asked for (-m compile): each one compiles for a minute on 2 CPU cores."""
    items.sort(key=module_rank)
    if "compile" in (config.option.markexpr or ""):
        return
    for item in items:
        if "compile" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="compiles for a minute; run with -m compile"))
