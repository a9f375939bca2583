"""Issue 27's examples: shipped PNGs made by their tabs, which carry their settings and regenerate their pixels."""

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffusion.app.examples import EXAMPLES, EXAMPLES_DIR, example_files, make_example, write_examples
from diffusion.serving.engine import ModelCache
from diffusion.formats.outputs import OutputExists
from diffusion.serving.settings import request_from_png, study_from_png

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


@pytest.fixture(scope="module")
def shipped():
    return ModelCache(CHECKPOINTS)


def test_every_example_is_shipped_with_the_settings_of_its_tab(shipped):
    assert [title for _, title in example_files(shipped)] == [e.title for e in EXAMPLES]
    for example in EXAMPLES:
        path = EXAMPLES_DIR / f"{example.name}.png"
        request, sha256 = request_from_png(path)
        study = study_from_png(path) or {"tab": "generate"}
        assert study["tab"] == example.tab, example.name
        assert request.checkpoint == example.arguments[0] and sha256 == shipped.get(request.checkpoint).sha256
    sweep_study = study_from_png(EXAMPLES_DIR / "cfg-sweep.png")
    assert sweep_study["scales"] == "0, 1, 2, 4, 8" and sweep_study["methods"] == ["cfg"]
    xy_study = study_from_png(EXAMPLES_DIR / "class-by-scale.png")
    assert (xy_study["x_field"], xy_study["y_values"]) == ("scale", "1, 7, 8")


@pytest.mark.parametrize("name", ["reflow-live", "instant-live"])
def test_the_few_step_examples_regenerate_their_pixels(shipped, name):
    """The cheapest examples (2 Euler steps of the reflow student, 1 of the instant model): made again, the same
    picture as the shipped one."""
    example = next(e for e in EXAMPLES if e.name == name)
    picture, _ = make_example(shipped, example)
    shipped_picture = Image.open(EXAMPLES_DIR / f"{name}.png")
    difference = np.abs(np.asarray(picture, dtype=int) - np.asarray(shipped_picture, dtype=int))
    assert picture.size == shipped_picture.size and difference.max() <= 1  # float rounding across machines at most


def test_examples_are_only_offered_for_served_checkpoints(tmp_path):
    assert example_files(ModelCache(tmp_path)) == []


def test_writing_examples_never_replaces_a_file_by_surprise(shipped, tmp_path):
    (tmp_path / "reflow-live.png").write_bytes(b"kept")
    with pytest.raises(OutputExists, match="--overwrite"):
        write_examples(shipped, tmp_path, ["reflow-live"])
    assert (tmp_path / "reflow-live.png").read_bytes() == b"kept"
    with pytest.raises(SystemExit, match="unknown example"):
        write_examples(shipped, tmp_path, ["nope"])
    (written,) = write_examples(shipped, tmp_path, ["reflow-live"], overwrite=True)
    assert asdict(request_from_png(written)[0]) == asdict(request_from_png(EXAMPLES_DIR / "reflow-live.png")[0])
