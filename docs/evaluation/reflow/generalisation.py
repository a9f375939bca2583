"""What more pairs would buy: the reflow loss of a model on pairs it trained on and on pairs it never saw.

    python docs/evaluation/reflow/generalisation.py TRAIN_PAIRS HELD_OUT_PAIRS CHECKPOINT [CHECKPOINT ...]

The loss is the reflow objective (mean over pixels of (v(x_t, t) - (z - x))^2, x_t = (1 - t) x + t z) on the first
1,000 pairs of each folder, at t = 0.05, 0.15, ..., 0.95 (the same t for every pair, so the numbers are not noisy),
conditional (class given), self-conditioning off. A student that scores the same on both sets has not memorised its
pairs: more pairs would not help it, more training might. Prints a Markdown table.
"""

import sys
from pathlib import Path

import torch

from diffusion.formats.checkpoint import load_checkpoint
from diffusion.core.denoiser import network_prediction
from diffusion.training.pairs import load_pairs

T_VALUES = [0.05 + 0.1 * k for k in range(10)]


@torch.inference_mode()
def paired_loss(network, pairs, count: int = 1000, batch: int = 250) -> float:
    count = min(count, len(pairs))
    total = 0.0
    for start in range(0, count, batch):
        x, z, y = (t[start:start + batch] for t in (pairs.images, pairs.noise, pairs.labels))
        for t in T_VALUES:
            alpha, sigma = 1 - t, t
            x_t = alpha * x + sigma * z
            log_snr = torch.full((len(x),), 2 * (torch.log(torch.tensor(alpha)) - torch.log(torch.tensor(sigma))).item())
            v = network_prediction(network, x_t, alpha, sigma, log_snr, y, torch.zeros_like(x))
            total += float((v - (z - x)).pow(2).mean()) * len(x)
    return total / (count * len(T_VALUES))


def main(train_dir: str, held_out_dir: str, checkpoints: list[str]):
    train, held_out = load_pairs(train_dir), load_pairs(held_out_dir)
    print(f"| model | loss on {Path(train_dir).name} (first 1,000 of {len(train):,}) | loss on {Path(held_out_dir).name} "
          f"(first 1,000 of {len(held_out):,}) | gap |\n|---|---|---|---|")
    for path in checkpoints:
        network = load_checkpoint(path).network
        seen, unseen = paired_loss(network, train), paired_loss(network, held_out)
        print(f"| {Path(path).stem} | {seen:.4f} | {unseen:.4f} | {unseen - seen:+.4f} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
