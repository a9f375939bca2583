"""Issue 41's strip: Generate's default on the teacher, the reflow student at one Euler step and the instant model at
one and two, on the same noise (seed 0, images 0 and 1 of each class: the same x_1 for every row).

    python docs/evaluation/instant/strip.py docs/evaluation/instant/strip.png [--checkpoints checkpoints]
"""

import argparse
from dataclasses import replace

import torch

from diffusion.evaluation.outsider import APP_DEFAULT
from diffusion.formats.images import image_grid, labelled_rows, to_pil
from diffusion.serving.engine import ModelCache, SampleRequest, run_request

PER_CLASS = 2
EULER = dict(sampler="ode", solver="euler", guidance="none", scale=1.0)
ROWS = [
    ("fashion-flow, Generate's default (DPM++2M 10, CFG 3)",
     SampleRequest(checkpoint="fashion-flow", **APP_DEFAULT)),
    ("fashion-reflow: 1 Euler step", SampleRequest(checkpoint="fashion-reflow", steps=1, **EULER)),
    ("fashion-instant: 1 Euler step", SampleRequest(checkpoint="fashion-instant", steps=1, **EULER)),
    ("fashion-instant: 2 Euler steps", SampleRequest(checkpoint="fashion-instant", steps=2, **EULER)),
]


def row_images(cache: ModelCache, request: SampleRequest) -> torch.Tensor:
    """PER_CLASS images of every class, class by class, each from the seed's first noises."""
    request = replace(request, self_condition=None, seed=0, batch_size=PER_CLASS)
    classes = len(cache.get(request.checkpoint).class_names)
    return torch.cat([run_request(cache, replace(request, class_index=c)).images for c in range(classes)])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--checkpoints", default="checkpoints")
    args = parser.parse_args()
    cache = ModelCache(args.checkpoints, capacity=8)
    pictures = [to_pil(image_grid(row_images(cache, request), columns=10 * PER_CLASS), scale=2) for _, request in ROWS]
    labelled_rows(pictures, [label for label, _ in ROWS]).save(args.out)


if __name__ == "__main__":
    main()
