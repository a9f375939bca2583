"""The before/after texture picture: real test images, the same blurred, and samples of each checkpoint given.

    python docs/quality/texture_grid.py OUT.png CHECKPOINT.safetensors [...]

One column per class (the first test image of each class); one row of samples per checkpoint, DPM-Solver++(2M)-20
without guidance (the setting issue 12 judges sharpness at), seed 0, image i of the seed in column i.
"""

import sys
from pathlib import Path

import torch

from diffusion.formats.data import load_fashion_mnist, to_model_range
from diffusion.serving.engine import ModelCache, SampleRequest, run_request
from diffusion.formats.images import image_grid, to_pil
from diffusion.core.metrics import box_blur


def main(out: str, checkpoints: list[str]):
    test = load_fashion_mnist("test")
    first = [int((test.labels == k).nonzero()[0]) for k in range(10)]
    real = to_model_range(test.images[first])
    rows = [real, box_blur(real)]
    for path in map(Path, checkpoints):
        cache = ModelCache(path.parent, device="cpu")
        samples = [run_request(cache, SampleRequest(checkpoint=path.stem, sampler="ode", solver="dpm++2m", steps=20,
                                                    guidance="none", class_index=k, batch_size=1, first_index=k,
                                                    self_condition=True)).images for k in range(10)]
        rows.append(torch.cat(samples))
    to_pil(image_grid(torch.cat(rows), 10), scale=3).save(out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
