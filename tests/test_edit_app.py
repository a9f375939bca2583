"""The Edit tab: one API endpoint per method through gradio_client, one sentence per bad upload or mask, and in
Chromium a painted mask inpainted, then a second edit replacing it, a flow's missing inpainting, Stop and Send to
Edit from Generate."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import CHROMIUM, app_page
from PIL import Image

gradio_client = pytest.importorskip("gradio_client")

SETTINGS = dict(checkpoint="tiny", strength=0.5, jump_length=2, resamplings=2, eta=1.0, source_class=1,
                class_index=2, guidance="cfg", scale=2.0, sampler="ddim", solver="heun", steps=6, seed=3, batch_size=2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("edit-files")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(folder / "image.png")
    mask = np.zeros((20, 20), np.uint8)
    mask[5:15, 5:15] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    Image.fromarray((mask // 2).astype(np.uint8)).save(folder / "grey-mask.png")
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(folder / "small-mask.png")
    (folder / "notes.txt").write_text("not a picture")
    return folder


def call(server, endpoint, image, mask, **changes):
    client = gradio_client.Client(server, verbose=False)
    handle = gradio_client.handle_file
    return client.predict(handle(str(image)), handle(str(mask)), *{**SETTINGS, **changes}.values(),
                          api_name=f"/edit_{endpoint}")


@pytest.mark.parametrize("endpoint, words", [("sdedit", "strength 0.5"), ("repaint", "jump length 2, 2 resamplings"),
                                             ("swap", "from square; class cross")])
def test_each_method_is_an_endpoint(server, files, endpoint, words):
    pair, grid, caption = call(server, endpoint, files / "image.png", files / "mask.png")
    assert words in caption and "tiny" in caption and "resized from 20x20 to 8x8" in caption
    columns = 4 if endpoint == "repaint" else 3  # input, (mask,) start, result
    assert Image.open(pair).width > columns * 8 and Image.open(grid).size[0] > 8


@pytest.mark.parametrize("endpoint, mask, changes, message", [
    ("repaint", "grey-mask.png", {}, "black \\(keep\\) and white \\(paint\\) only"),
    ("repaint", "small-mask.png", {}, "the mask is 10x10 pixels; the image is 20x20"),
    ("sdedit", "mask.png", {"strength": 2.0}, "strength must be between 0.0 and 1.0, got 2"),
    ("repaint", "mask.png", {"checkpoint": "tiny-nice"}, "no exact counterpart"),
    ("swap", "mask.png", {"source_class": 7}, "source class must be between 0 and 2"),
])
def test_bad_input_gets_one_sentence(server, files, endpoint, mask, changes, message):
    with pytest.raises(gradio_client.exceptions.AppError, match=message):
        call(server, endpoint, files / "image.png", files / mask, **changes)


def test_an_upload_that_is_not_an_image_gets_one_sentence(server, files):
    with pytest.raises(gradio_client.exceptions.AppError, match="not an image this app can read"):
        call(server, "sdedit", files / "notes.txt", files / "mask.png")


def paint_stroke(page):
    box = page.locator("#edit-editor canvas").first.bounding_box()
    left, top = box["x"] + box["width"] / 2 - 60, box["y"] + box["height"] / 2 - 60
    page.mouse.move(left, top)
    page.mouse.down()
    for k in range(1, 13):
        page.mouse.move(left + 10 * k, top + 10 * k)
    page.mouse.up()


def status_text(page):
    return page.locator("#edit-status").inner_text()


def wait_for_status(page, words, timeout=60_000):
    page.wait_for_function("words => (document.querySelector('#edit-status')?.innerText || '').includes(words)", arg=words,
                           timeout=timeout)


def press_edit(page):
    page.locator("button.primary:visible", has_text="Edit").first.click()


@pytest.mark.skipif(not shutil.which("chromium") and not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
                    reason="needs Debian's chromium (CI installs it)")
def test_paint_a_mask_and_inpaint_then_edit_again_in_chromium(server):
    with app_page(server) as page:
        page.locator("[role=tab]", has_text="Edit").first.click()
        page.locator("#edit-checkpoint input").click()
        page.get_by_role("option", name="tiny", exact=True).click()
        page.keyboard.press("Escape")
        page.get_by_role("button", name="Load test image").click()
        wait_for_status(page, "loaded.")
        page.get_by_label("inpainting (RePaint)").check()
        page.wait_for_timeout(500)
        press_edit(page)  # nothing painted yet: a sentence that stays, and no result
        wait_for_status(page, "Not run:")
        assert "inpainting needs a mask" in status_text(page)

        paint_stroke(page)
        page.wait_for_timeout(1500)  # the editor uploads its paint layer, then reports it
        press_edit(page)
        wait_for_status(page, "inpainting (RePaint) with tiny")
        first = page.locator("#edit-pair img").get_attribute("src")
        assert first and page.locator("#edit-grid img").count() == 1

        page.get_by_label("image-to-image (SDEdit)").check()  # a second run with other settings replaces the first
        page.wait_for_timeout(300)
        press_edit(page)
        wait_for_status(page, "image-to-image (SDEdit) with tiny")
        assert page.locator("#edit-pair img").get_attribute("src") != first

        page.locator("#edit-checkpoint input").click()  # a normalizing flow: its SDEdit, and a sentence for RePaint
        page.get_by_role("option", name="tiny-nice", exact=True).click()
        page.keyboard.press("Escape")
        page.wait_for_selector("text=A normalizing flow has no inpainting", timeout=30_000)
        press_edit(page)
        wait_for_status(page, "image-to-image (SDEdit) with tiny-nice")
        page.get_by_label("inpainting (RePaint)").check()
        press_edit(page)
        wait_for_status(page, "Not run:")
        assert "no exact counterpart" in status_text(page)
        assert page.locator("#edit-pair img").count() == 0  # the failed run cleared the earlier result


@pytest.mark.skipif(not shutil.which("chromium") and not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
                    reason="needs Debian's chromium (CI installs it)")
def test_send_to_edit_takes_the_clicked_image_and_stop_clears_the_run(server):
    with app_page(server) as page:
        page.get_by_label("Checkpoint").first.click()
        page.get_by_role("option", name="tiny", exact=True).click()
        page.keyboard.press("Escape")
        page.wait_for_selector("text=Now tiny:", timeout=30_000)
        page.locator("button.primary:visible", has_text="Generate").first.click()
        page.wait_for_selector("text=images/s", timeout=60_000)
        page.wait_for_timeout(1000)  # the run's follow-ups (history, the clicked image reset to the first) are done
        page.locator("#images button.thumbnail-item").nth(2).click()
        page.wait_for_selector("text=Image 3: seed", timeout=30_000)
        page.get_by_role("button", name="Edit (the clicked image)").click()
        wait_for_status(page, "last run loaded")
        assert "Image 3 of Generate" in status_text(page)
        page.wait_for_selector("#edit-editor canvas", timeout=30_000)
        page.locator("input[aria-label='number input for Steps']:visible").last.fill("1000")  # long enough to stop
        page.locator("input[aria-label='number input for Images']:visible").last.fill("16")
        page.keyboard.press("Tab")
        press_edit(page)
        page.wait_for_timeout(1500)
        page.locator("button.stop:visible", has_text="Stop").last.click()
        wait_for_status(page, "Stopped.")
        assert page.locator("#edit-pair img").count() == 0
