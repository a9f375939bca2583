"""The classifier two-sample test (Lopez-Paz & Oquab 2017): train a fresh classifier to tell set A from set B and
read its accuracy on held-out halves. 0.5 means the classifier cannot tell them apart; 1.0 means it always can.

Unlike feature FID, the judge here is trained on the very samples in question, so it finds whatever gives a
generator away (texture, blur, noise, artefacts), not only what an evaluation classifier's features happen to see."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TwoSampleConfig:
    held_out: float = 0.2  # the share of each set kept for the accuracy (the 200 of 1,000)
    epochs: int = 15
    batch_size: int = 64
    lr: float = 1e-3
    width: int = 16  # channels of the first convolution; the second has twice as many


@dataclass(frozen=True)
class TwoSampleResult:
    accuracy: float  # on the held-out images of both sets
    stderr: float  # binomial: sqrt(a (1 - a) / n)
    held_out: int  # held-out images of both sets together
    trained_on: int


def judge_network(channels: int, width: int) -> nn.Module:
    """A small CNN: two conv-ReLU-maxpool stages, global average pool, one logit (set B vs set A)."""
    return nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, 1))


def two_sample_accuracy(a: torch.Tensor, b: torch.Tensor, config: TwoSampleConfig = TwoSampleConfig(),
                        seed: int = 0) -> TwoSampleResult:
    """Held-out accuracy of a fresh judge_network trained to tell images b (label 1) from images a (label 0).

    Each set (N, C, H, W) is split at random into training and held-out parts; the split, the initial weights and the
    batch order all come from `seed`, so a result is a function of (a, b, config, seed)."""
    generator = torch.Generator().manual_seed(seed)
    splits = []
    for images in (a, b):
        order = torch.randperm(len(images), generator=generator)
        cut = len(images) - max(1, round(config.held_out * len(images)))
        splits.append((images[order[:cut]], images[order[cut:]]))
    (a_train, a_test), (b_train, b_test) = splits
    x_train = torch.cat([a_train, b_train]).float()
    y_train = torch.cat([torch.zeros(len(a_train)), torch.ones(len(b_train))])
    x_test = torch.cat([a_test, b_test]).float()
    y_test = torch.cat([torch.zeros(len(a_test)), torch.ones(len(b_test))])
    with torch.random.fork_rng(devices=[]):  # the weights' initialisation, from the seed, without touching the caller's
        torch.manual_seed(seed)
        judge = judge_network(a.shape[1], config.width)
    optimizer = torch.optim.Adam(judge.parameters(), lr=config.lr)
    with torch.inference_mode(False), torch.enable_grad():
        for _ in range(config.epochs):
            order = torch.randperm(len(x_train), generator=generator)
            for start in range(0, len(order), config.batch_size):
                batch = order[start:start + config.batch_size]
                loss = F.binary_cross_entropy_with_logits(judge(x_train[batch])[:, 0], y_train[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    with torch.no_grad():
        accuracy = float(((judge(x_test)[:, 0] > 0).float() == y_test).float().mean())
    return TwoSampleResult(accuracy=accuracy, stderr=(accuracy * (1 - accuracy) / len(y_test)) ** 0.5,
                           held_out=len(y_test), trained_on=len(y_train))
