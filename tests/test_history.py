"""The History (issue 37, item 7): kept in the browser (gr.BrowserState), so it outlives a reload; an entry comes back
from the browser and is hostile, so restoring reads only files inside this process's output folder; an entry whose
files are gone still restores its settings. Gradio's own footer "Runs" page, a second history, is off."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
import torch

from conftest import CHROMIUM, STABLE, app_page
from diffusion.app.common import save_png
from diffusion.app.outputs import OUTPUT_DIR, inside_outputs
from diffusion.app.generate import MAX_HISTORY, add_to_history, restore_run, show_history
from diffusion.serving.engine import ModelCache, SampleRequest
from diffusion.serving.settings import png_info


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    from conftest import write_tiny_checkpoints

    return ModelCache(write_tiny_checkpoints(tmp_path_factory.mktemp("history") / "checkpoints"), capacity=2)


def a_run(request: SampleRequest, folder: Path | None = None) -> tuple[str, list[str]]:
    """A run's grid PNG (carrying `request`) and one image file, as Generate writes them; in `folder` if given."""
    images = torch.zeros(1, 1, 8, 8)
    grid = save_png(images, 1, "grid", png_info(request))
    single = save_png(images, 1, "single")
    if folder is not None:
        moved = [shutil.move(path, folder / Path(path).name) for path in (grid, single)]
        return str(moved[0]), [str(moved[1])]
    return grid, [single]


def restored(cache, history, index=0):
    return restore_run(cache, history, SimpleNamespace(index=index))


def test_inside_outputs_judges_the_resolved_path():
    assert inside_outputs(str(OUTPUT_DIR / "grid-1.png"))
    for path in ("/etc/passwd", str(OUTPUT_DIR / ".." / "x.png"), str(OUTPUT_DIR) + "-other/a.png", "", None, 3,
                 "a\0b", str(OUTPUT_DIR / ("x" * 5000))):
        assert not inside_outputs(path), path


def test_a_run_joins_the_history_and_restores_with_its_images(cache):
    grid, images = a_run(SampleRequest(checkpoint="tiny", sampler="ddim", steps=3, seed=5, batch_size=1))
    history, tiles = add_to_history([], {"path": grid}, [(images[0], "seed 5")])
    assert len(history) == 1 and history[0]["grid"] == grid and list(history[0]["images"]) == images
    assert tiles[0][0] == images[0] and tiles[0][1].startswith("tiny: DDIM 3, cfg 3, seed 5, 1 images, ")
    *controls, status, loaded, shown, download = restored(cache, history)
    assert controls[0] == "tiny" and controls[3] == 3 and status.startswith("Restored from the history: tiny: DDIM 3")
    assert shown == images and download == grid


def test_an_entry_whose_files_are_gone_restores_its_settings_and_says_so(cache):
    grid, images = a_run(SampleRequest(checkpoint="tiny", sampler="ode", solver="euler", steps=4, seed=9, batch_size=1))
    history, _ = add_to_history([], grid, [images[0]])
    for path in (grid, *images):
        Path(path).unlink()  # as after a server restart
    history, tiles = show_history(history)  # a reload
    assert len(history) == 1 and isinstance(tiles[0][0], np.ndarray) and "images gone" in tiles[0][1]
    *controls, status, loaded, shown, download = restored(cache, history)
    assert controls[:4] == ["tiny", "ode", "euler", 4] and loaded["seed"] == 9
    assert "image files are gone" in status and "press **Generate** to make them again" in status
    assert shown is None and download is None


@pytest.mark.parametrize("where", ["/etc/passwd", "OUTPUT_DIR/../../../etc/passwd", "a PNG of this app elsewhere"])
def test_an_entry_naming_a_file_outside_the_outputs_gets_a_sentence_and_reads_nothing(cache, tmp_path, monkeypatch,
                                                                                        where):
    grid, images = a_run(SampleRequest(checkpoint="tiny", seed=1, batch_size=1))
    history, _ = add_to_history([], grid, images)
    outside, _ = a_run(SampleRequest(checkpoint="tiny", seed=2, batch_size=1), tmp_path)
    path = {"/etc/passwd": "/etc/passwd", "a PNG of this app elsewhere": outside,
            "OUTPUT_DIR/../../../etc/passwd": f"{OUTPUT_DIR}/../../../etc/passwd"}[where]
    opened = []  # every file opened meanwhile (PIL and json read through builtins.open)
    real_open = open
    monkeypatch.setattr("builtins.open", lambda file, *a, **k: opened.append(str(file)) or real_open(file, *a, **k))
    for crafted in ({**history[0], "grid": path}, {**history[0], "images": [path]}):
        with pytest.raises(gr.Error, match="names a file outside this server's outputs; nothing was read"):
            restored(cache, [crafted])
        assert show_history([crafted]) == ([], [])  # a reload drops it from the list the page shows
    assert not [name for name in opened if name == path or "passwd" in name], opened


def test_a_crafted_entry_with_bad_settings_gets_a_sentence(cache):
    grid, images = a_run(SampleRequest(checkpoint="tiny", seed=1, batch_size=1))
    history, _ = add_to_history([], grid, images)
    zero_steps = history[0]["settings"].replace('"steps": 50', '"steps": 0')
    for settings, sentence in (("{", "not of format|JSON"), (zero_steps, "steps must be between 1 and 1000")):
        with pytest.raises(gr.Error, match=sentence):
            restored(cache, [{**history[0], "settings": settings}])
    with pytest.raises(gr.Error, match="malformed"):
        restored(cache, ["not an entry"])
    with pytest.raises(gr.Error, match="gone"):
        restored(cache, history, index=3)


def test_the_history_keeps_the_newest_runs(cache):
    grid, images = a_run(SampleRequest(checkpoint="tiny", seed=1, batch_size=1))
    history = []
    for _ in range(MAX_HISTORY + 3):
        history, tiles = add_to_history(history, grid, images)
    assert len(history) == len(tiles) == MAX_HISTORY
    assert add_to_history(history, "/etc/passwd", images) == (gr.skip(), gr.skip())  # a crafted file box's value


def test_the_history_outlives_a_reload_and_gradio_runs_page_is_off_in_chromium(server):
    """Before: a reload showed an empty History while the footer's "Runs" link listed the runs."""
    import httpx
    from playwright.sync_api import expect

    if not shutil.which("chromium") and not Path(CHROMIUM).exists():
        pytest.skip("needs Debian's chromium (CI installs it)")
    assert httpx.get(server.rstrip("/") + "/gradio_api/runs").status_code == 404
    with app_page(server) as page:
        page.wait_for_selector("text=Next run", timeout=120_000)
        page.wait_for_function(STABLE, polling=100, timeout=60_000)
        page.locator("input[aria-label='Seed']:visible").first.fill("7")
        page.locator("input[aria-label='Seed']:visible").first.press("Enter")
        page.wait_for_function(STABLE, polling=100, timeout=60_000)
        page.locator("button.primary:visible", has_text="Generate").first.click()
        history = page.locator("#history button.thumbnail-item")
        expect(history).to_have_count(1, timeout=120_000)
        caption = history.first.inner_text()
        assert "seed 7" in caption
        # The whole caption is on screen, wrapped (it was cut to 'tiny-flow: O...', issue 37 item 14).
        label = history.first.locator(".caption-label")
        assert label.evaluate("e => e.scrollWidth <= e.clientWidth && e.scrollHeight <= e.clientHeight"), caption
        box, picture = label.bounding_box(), history.first.locator("img").bounding_box()
        assert box["y"] >= picture["y"] + picture["height"] - 1  # under the picture, not over it
        page.reload()
        page.wait_for_selector("text=Next run", timeout=120_000)
        expect(history).to_have_count(1, timeout=60_000)
        assert history.first.inner_text() == caption
        expect(page.get_by_role("link", name="Runs")).to_have_count(0)
        page.screenshot(path=str(Path(__import__("tempfile").gettempdir()) / "history-after-reload.png"))
        history.first.click()
        page.wait_for_selector("text=Restored from the history", timeout=60_000)
        expect(page.locator("input[aria-label='Seed']:visible").first).to_have_value("7")
