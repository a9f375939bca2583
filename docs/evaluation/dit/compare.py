"""UNet against DiT at equal training time (issue 17): the cost of one forward, measured here, and the picture.

    python docs/evaluation/dit/compare.py OUT_DIR UNET.safetensors DIT.safetensors

Writes OUT_DIR/costs.json (parameters, FLOPs per image, best-of-7 ms per forward at batch 16 and 64, both networks
timed alternately in one run) and OUT_DIR/grid.png: one row per class, the UNet's samples left and the DiT's right,
from the same noise (DPM-Solver++(2M)-20, classifier-free guidance 3, self-conditioning on). Accuracy and FID come
from `python -m diffusion evaluate --parts texture` on each file.
"""

import json
import sys
import time
from pathlib import Path

import torch

from diffusion.evaluation.benchmark import forward_flops
from diffusion.serving.engine import ModelCache, SampleRequest, run_request
from diffusion.formats.images import image_grid, to_pil
from diffusion.core.sampling import draw_noise, image_generators

COLUMNS = 6


def ms_per_forward(network, batch: int, repeats: int = 7) -> float:
    x = draw_noise(image_generators(0, batch), (1, 28, 28))
    labels, log_snr = torch.zeros(batch, dtype=torch.long), torch.zeros(batch)
    with torch.inference_mode():
        network(x, log_snr, labels, torch.zeros_like(x))  # warm-up
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            network(x, log_snr, labels, torch.zeros_like(x))
            times.append(time.perf_counter() - started)
    return 1e3 * min(times)


def main(out_dir: str, paths: list[str]):
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    caches = {Path(p).stem: ModelCache(Path(p).parent, device="cpu") for p in paths}
    models = {name: cache.get(name) for name, cache in caches.items()}
    costs = {name: {"network": m.config["network"], "parameters": sum(p.numel() for p in m.network.parameters()),
                    "mflop_per_image": forward_flops(m.network, torch.zeros(1, 1, 28, 28), torch.zeros(1, dtype=torch.long)) / 1e6,
                    "training": {k: m.training.get(k) for k in ("steps", "batch_size", "wall_minutes", "device")}}
             for name, m in models.items()}
    for batch in (16, 64):
        timings = {name: [] for name in models}
        for _ in range(3):  # alternate, so both see the same background load
            for name, m in models.items():
                timings[name].append(ms_per_forward(m.network, batch))
        for name in models:
            costs[name][f"ms_per_forward_batch_{batch}"] = round(min(timings[name]), 1)
    costs["threads"] = torch.get_num_threads()
    (out / "costs.json").write_text(json.dumps(costs, indent=2))
    panels = []
    for name, cache in caches.items():
        rows = [run_request(cache, SampleRequest(checkpoint=name, sampler="ode", solver="dpm++2m", steps=20, guidance="cfg",
                                                 scale=3.0, class_index=k, batch_size=COLUMNS, first_index=k * COLUMNS,
                                                 self_condition=True)).images for k in range(10)]
        panels.append(image_grid(torch.cat(rows), COLUMNS))
    gap = torch.full((panels[0].shape[0], panels[0].shape[1], 8), 255, dtype=panels[0].dtype)
    to_pil(torch.cat([panels[0], gap, panels[1]], dim=2), scale=2).save(out / "grid.png")
    print(json.dumps(costs, indent=2))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
