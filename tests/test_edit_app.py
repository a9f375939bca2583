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
from diffusion.serving.app_client import local_client
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
    client = local_client(server)
    handle = gradio_client.handle_file
    return client.predict(handle(str(image)), handle(str(mask)), *{**SETTINGS, **changes}.values(),
                          api_name=f"/edit_{endpoint}")


@pytest.mark.parametrize("endpoint, words", [("sdedit", "strength 0.5"), ("repaint", "jump length 2, 2 resamplings"),
                                             ("swap", "from square; class cross")])
def test_each_method_is_an_endpoint(server, files, endpoint, words):
    pair, grid, caption = call(server, endpoint, files / "image.png", files / "mask.png")
    assert words in caption and "tiny" in caption and "Input 20x20 grey -> 8x8 grey." in caption
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
    """One stroke across the middle of the mask canvas (page.js's own: painting sends nothing)."""
    box = page.locator("#edit-mask-canvas").bounding_box()
    left, top = box["x"] + box["width"] / 2 - 60, box["y"] + box["height"] / 2 - 60
    page.mouse.move(left, top)
    page.mouse.down()
    for k in range(1, 13):
        page.mouse.move(left + 10 * k, top + 10 * k)
    page.mouse.up()


def count_uploads(page) -> list:
    """The page's POSTs to Gradio's upload route, as they happen."""
    uploads = []
    page.on("request", lambda r: uploads.append(r.url) if r.method == "POST" and "/gradio_api/upload" in r.url else None)
    return uploads


def choose_method(page, label, shows):
    """An Edit method, once the controls it reads are on screen (the method change has been answered)."""
    page.get_by_label(label).check()
    page.locator(shows).filter(visible=True).first.wait_for(timeout=60_000)


def status_text(page):
    return page.locator("#edit-status").inner_text()


def wait_for_status(page, words, timeout=60_000):
    page.wait_for_function("words => (document.querySelector('#edit-status')?.innerText || '').includes(words)", arg=words,
                           timeout=timeout)


def press_edit(page):
    page.locator("button.primary:visible", has_text="Edit").first.click()


JUMPS = "input[aria-label='number input for Jump length j']"
STRENGTH = "input[aria-label='number input for Strength (t0: 0 keeps the image, 1 is new)']"
SOURCE = "input[aria-label=\"The image's own class (inverted with it)\"]"


@pytest.mark.skipif(not shutil.which("chromium") and not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
                    reason="needs Debian's chromium (CI installs it)")
def test_paint_a_mask_and_inpaint_then_edit_again_in_chromium(server):
    """Issue 37, items 3 and 4: a mask painted just before pressing Edit is the one used, and load -> paint -> inpaint
    -> SDEdit -> class swap -> inpaint sends at most 20 uploads (Gradio's ImageEditor sent about 550 per run)."""
    with app_page(server) as page:
        uploads = count_uploads(page)
        page.locator("[role=tab]", has_text="Edit").first.click()
        page.locator("#edit-checkpoint input").click()
        page.get_by_role("option", name="tiny", exact=True).click()
        page.keyboard.press("Escape")
        page.get_by_role("button", name="Load test image").click()
        wait_for_status(page, "loaded.")
        page.locator("#edit-input img").first.wait_for(timeout=60_000)
        choose_method(page, "inpainting (RePaint)", JUMPS)
        press_edit(page)  # nothing painted yet: a sentence that stays, and no result
        wait_for_status(page, "Not run:")
        assert "inpainting needs a mask" in status_text(page)

        paint_stroke(page)
        press_edit(page)  # at once: the stroke just painted is the mask sent
        wait_for_status(page, "inpainting (RePaint) with tiny")
        first = page.locator("#edit-pair img").get_attribute("src")
        assert first and page.locator("#edit-grid img").count() == 1

        choose_method(page, "image-to-image (SDEdit)", STRENGTH)  # a second run with other settings replaces the first
        press_edit(page)
        wait_for_status(page, "image-to-image (SDEdit) with tiny")
        assert page.locator("#edit-pair img").get_attribute("src") != first
        choose_method(page, "class swap", SOURCE)
        press_edit(page)
        wait_for_status(page, "class swap by inversion with tiny")
        choose_method(page, "inpainting (RePaint)", JUMPS)
        press_edit(page)
        wait_for_status(page, "inpainting (RePaint) with tiny")
        assert len(uploads) <= 20, f"{len(uploads)} uploads"

        page.locator("#edit-checkpoint input").click()  # a normalizing flow: its SDEdit, and a sentence for RePaint
        page.get_by_role("option", name="tiny-nice", exact=True).click()
        page.keyboard.press("Escape")
        page.wait_for_selector("text=A normalizing flow has no inpainting", timeout=30_000)
        choose_method(page, "image-to-image (SDEdit)", STRENGTH)
        press_edit(page)
        wait_for_status(page, "image-to-image (SDEdit) with tiny-nice")
        choose_method(page, "inpainting (RePaint)", "text=A normalizing flow has no inpainting")
        press_edit(page)
        wait_for_status(page, "Not run:")
        assert "no exact counterpart" in status_text(page)
        assert page.locator("#edit-pair img").count() == 0  # the failed run cleared the earlier result
        assert len(uploads) <= 20, f"{len(uploads)} uploads"


@pytest.mark.skipif(not shutil.which("chromium") and not Path(CHROMIUM).exists() and os.environ.get("CI") != "true",
                    reason="needs Debian's chromium (CI installs it)")
def test_an_uploaded_picture_counts_without_painting_in_chromium(server, tmp_path):
    """Issue 37, item 2: a 300x200 colour PNG chosen in the input box is what Edit reads (it said "load an image
    first" while the picture was on screen), with one upload; nothing painted, so inpainting asks for a mask."""
    picture = tmp_path / "upload.png"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(picture)
    with app_page(server) as page:
        uploads = count_uploads(page)
        page.locator("[role=tab]", has_text="Edit").first.click()
        page.locator("#edit-checkpoint input").click()
        page.get_by_role("option", name="tiny", exact=True).click()
        page.keyboard.press("Escape")
        page.locator("#edit-input input[type=file]").set_input_files(str(picture))
        page.locator("#edit-input img").first.wait_for(timeout=60_000)
        press_edit(page)
        wait_for_status(page, "image-to-image (SDEdit) with tiny")
        assert "Input 300x200 colour -> 8x8 grey, centre-cropped to keep its shape." in status_text(page)
        page.locator("#edit-fit").get_by_label("pad").check()  # issue 37, item 11: the user's choice of fit
        press_edit(page)
        wait_for_status(page, "padded with its edge colour")
        choose_method(page, "inpainting (RePaint)", JUMPS)
        press_edit(page)
        wait_for_status(page, "Not run:")
        assert "inpainting needs a mask" in status_text(page)
        assert len(uploads) == 1, uploads


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
        page.locator("#history button.thumbnail-item").first.wait_for(timeout=60_000)  # the run's follow-ups are done
        page.locator("#images button.thumbnail-item").nth(2).click()
        page.wait_for_selector("text=Image 3: seed", timeout=30_000)
        page.get_by_role("button", name="Edit (the clicked image)").click()
        wait_for_status(page, "last run loaded")
        assert "Image 3 of Generate" in status_text(page)
        page.locator("#edit-input img").first.wait_for(timeout=30_000)
        # Long enough to stop: the most the tab takes (200 steps from pure noise, 16 images; 1000 steps is now refused
        # with a sentence, where the slider used to clamp it to 200 silently).
        for label, value in (("Steps", "200"), ("Images", "16"), ("Strength (t0: 0 keeps the image, 1 is new)", "1")):
            page.locator(f"input[aria-label='number input for {label}']:visible").last.fill(value)
            page.keyboard.press("Tab")
        press_edit(page)
        page.locator("#edit-grid img").first.wait_for(timeout=60_000)  # an x0 preview: the run samples
        page.locator("button.stop:visible", has_text="Stop").last.click()
        wait_for_status(page, "Stopped.")
        assert page.locator("#edit-pair img").count() == 0


def test_the_canvas_mask_is_read_at_the_models_size_and_a_bad_one_gets_one_sentence():
    import base64
    import io

    from diffusion.app.edit import MASK_CANVAS, canvas_mask
    from diffusion.serving.engine import RequestError

    def data_url(picture):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()

    paint = np.zeros((MASK_CANVAS, MASK_CANVAS, 4), np.uint8)
    paint[:140, :140] = (255, 59, 48, 255)  # the top-left quarter painted
    mask = canvas_mask(data_url(Image.fromarray(paint)), (1, 8, 8))
    assert mask.shape == (8, 8) and mask[:4, :4].all() and mask.sum() == 16
    assert canvas_mask("", (1, 8, 8)) is None  # nothing painted
    assert canvas_mask(data_url(Image.fromarray(np.zeros_like(paint))), (1, 8, 8)) is None
    with pytest.raises(RequestError, match="the mask is 10x10 pixels; the canvas is 280x280"):
        canvas_mask(data_url(Image.new("RGBA", (10, 10))), (1, 8, 8))
    with pytest.raises(RequestError, match="the mask could not be read"):
        canvas_mask("data:image/png;base64,!!!", (1, 8, 8))
