"""The picture in README.md: the same noise at DPM-Solver++(2M) with plain CFG 3 at 10 steps (Generate's first default),
CFG 3 rescaled by phi 0.7 at 10 steps (its second), without guidance at 15 steps, and with interval guidance 2 at
15 steps (the default since issue 41); one column per class, two images each.

    python docs/evaluation/guided-realism/strip.py docs/evaluation/guided-realism/fashion-diffusion-strip.png
"""

import sys

import torch

from diffusion.serving.engine import ModelCache, SampleRequest, run_request
from diffusion.formats.images import display_scale, image_grid, labelled_rows, to_pil

SETTINGS = [("CFG 3, 10 steps", dict(steps=10, guidance="cfg", scale=3.0)),
            ("CFG 3, rescale 0.7, 10 steps", dict(steps=10, guidance="cfg", scale=3.0, rescale=0.7)),
            ("no guidance, 15 steps", dict(steps=15, guidance="none", scale=1.0)),
            ("interval CFG 2, 15 steps (default)", dict(steps=15, guidance="cfg", scale=2.0, interval_low=-4.7,
                                                        interval_high=1.2))]


def strip(cache: ModelCache, checkpoint: str = "fashion-diffusion", per_class: int = 2):
    rows = []
    classes = len(cache.get(checkpoint).class_names)
    for _, guidance in SETTINGS:
        images = [run_request(cache, SampleRequest(checkpoint=checkpoint, sampler="ode", solver="dpm++2m", **guidance, class_index=k,
                                                   seed=0, first_index=k * per_class, batch_size=per_class)).images
                  for k in range(classes)]
        column_major = torch.stack(images, dim=1).flatten(0, 1)  # row i: image i of every class
        rows.append(to_pil(image_grid(column_major, classes), display_scale(28, 56)))
    return labelled_rows(rows, [label for label, _ in SETTINGS])


if __name__ == "__main__":
    strip(ModelCache("checkpoints")).save(sys.argv[1])
