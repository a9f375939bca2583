"""Issue 37, item 11: an upload of any size or colour reaches a model without being squashed, and the page says
exactly what was done to it (both sizes, the colour change, crop or pad)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from diffusion.app.edit import editor_picture
from diffusion.app.lens import picked_image
from diffusion.formats.images import fit_picture
from diffusion.serving.engine import RequestError


def circle_picture(width=300, height=200, diameter=120) -> Image.Image:
    """A red disc centred on a white picture of another shape than the model's square."""
    picture = Image.new("RGB", (width, height), "white")
    left, top = (width - diameter) // 2, (height - diameter) // 2
    ImageDraw.Draw(picture).ellipse((left, top, left + diameter, top + diameter), fill=(220, 20, 20))
    return picture


def disc_extent(array: np.ndarray) -> tuple[int, int]:
    """(width, height) in pixels of the dark disc in a (H, W) grey array in [-1, 1]."""
    rows, columns = np.nonzero(array < 0.3)  # below halfway from the disc (-0.37) to white (1)
    return int(columns.max() - columns.min() + 1), int(rows.max() - rows.min() + 1)


@pytest.mark.parametrize("fit, words", [("crop", "centre-cropped to keep its shape"),
                                        ("pad", "padded with its edge colour to keep its shape")])
def test_a_300x200_colour_circle_stays_a_circle_and_the_note_says_what_was_done(fit, words):
    """Before: box-resized to 28x28, the disc came out 12 px wide and 17 px tall, and the note said only
    "resized from 300x200 to 28x28"."""
    image, note = editor_picture(circle_picture(), (1, 28, 28), fit)
    assert image.shape == (1, 1, 28, 28)
    width, height = disc_extent(image[0, 0].numpy())
    assert width == height, (width, height)
    expected = 28 * 120 // (200 if fit == "crop" else 300)  # the disc's share of the kept square
    assert abs(width - expected) <= 1, (width, expected)
    assert note == f"300x200 colour -> 28x28 grey, {words}"


def test_the_default_fit_is_crop_and_a_padded_border_continues_the_background():
    cropped, _ = editor_picture(circle_picture(), (1, 28, 28))
    assert disc_extent(cropped[0, 0].numpy()) == disc_extent(editor_picture(circle_picture(), (1, 28, 28), "crop")[0][0, 0].numpy())
    padded, _ = editor_picture(circle_picture(), (1, 28, 28), "pad")
    assert padded[0, 0, 0].min() == 1.0 and padded[0, 0, -1].min() == 1.0  # white bands, not black bars


def test_a_colour_model_keeps_colour():
    picture, note = fit_picture(circle_picture(), (3, 32, 32), "pad")
    red, green, blue = np.asarray(picture, dtype=int)[16, 16]
    assert picture.size == (32, 32) and red > 200 and green < 40 and blue < 40
    assert note == "300x200 colour -> 32x32 colour, padded with its edge colour to keep its shape"


def test_the_models_size_enlarged_or_a_grey_square_says_only_what_changed():
    grey = Image.new("L", (280, 280), 0)
    assert editor_picture(grey, (1, 28, 28))[1] == ""  # what the input box shows for a test image: nothing done
    square = Image.new("L", (100, 100), 0)
    assert editor_picture(square, (1, 28, 28))[1] == "100x100 grey -> 28x28 grey"
    tinted = circle_picture(280, 280)
    assert editor_picture(tinted, (1, 28, 28))[1] == "280x280 colour -> 28x28 grey"


def test_likelihood_upload_is_fitted_and_a_bad_fit_gets_a_sentence(tmp_path):
    path = tmp_path / "circle.png"
    circle_picture().save(path)
    upload = {"path": str(path), "meta": {"_type": "gradio.FileData"}}
    for fit, share in (("crop", 200), ("pad", 300)):
        image, caption = picked_image(None, "uploaded image", 0, upload, None, None, 0, (1, 28, 28), fit)
        width, height = disc_extent(image[0].numpy() / 127.5 - 1)
        assert width == height and abs(width - 28 * 120 // share) <= 1, (fit, width, height)
        assert caption.startswith("uploaded image, 300x200 colour -> 28x28 grey, ")
    with pytest.raises(RequestError, match="fit must be one of crop, pad, got 'squash'"):
        picked_image(None, "uploaded image", 0, upload, None, None, 0, (1, 28, 28), "squash")


@pytest.mark.parametrize("fit, rows, columns", [("crop", range(0, 28), range(21, 28)),
                                                ("pad", range(5, 23), range(19, 28))])
def test_a_mask_painted_on_the_whole_picture_is_cropped_or_padded_as_the_picture_is(fit, rows, columns, tmp_path):
    """The mask canvas shows the whole 300x200 picture stretched to 280x280; its right third (x 200-300 of the
    picture) must land where the fitted picture has those pixels: crop keeps x 50-250, so columns 21-27 of 28; pad
    puts the picture in rows 4.7-23.3, so rows 5-22, columns 19-27. Before: the right third of every row."""
    import base64
    import io

    from diffusion.app.edit import MASK_CANVAS, MASK_PREFIX, edit_input

    painted = np.zeros((MASK_CANVAS, MASK_CANVAS, 4), np.uint8)
    painted[:, MASK_CANVAS * 2 // 3:, 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(painted, "RGBA").save(buffer, format="PNG")
    data_url = MASK_PREFIX + base64.b64encode(buffer.getvalue()).decode()
    circle_picture().save(tmp_path / "circle.png")
    _, mask, _ = edit_input({"path": str(tmp_path / "circle.png")}, data_url, (1, 28, 28), fit)
    expected = np.zeros((28, 28), np.float32)
    expected[np.ix_(list(rows), list(columns))] = 1
    assert np.array_equal(mask.numpy(), expected), np.argwhere(mask.numpy() != expected)[:5]
