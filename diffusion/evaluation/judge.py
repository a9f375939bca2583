"""The classifier two-sample test (Lopez-Paz & Oquab 2017): train a fresh classifier to tell set A from set B and
read its accuracy on held-out halves. 0.5 means the classifier cannot tell them apart; 1.0 means it always can.

Unlike feature FID, the judge here is trained on the very samples in question, so it finds whatever gives a
generator away (texture, blur, noise, artefacts), not only what an evaluation classifier's features happen to see.

Each set is cut three ways from the seed: a held-out part (the accuracy is read there and nowhere else), a
validation part of the rest (early stopping reads its loss), and the training part. The judge trains until the
validation loss has not improved for `patience` epochs and keeps the weights of its best epoch. Its architecture was
chosen by power on the calibration suite (diffusion.evaluation.calibration; docs/evaluation/judge/README.md)."""

from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TwoSampleConfig:
    held_out: float = 0.2  # the share of each set kept for the accuracy (200 of 1,000)
    validation: float = 0.2  # the share of each set's training part kept for early stopping (160 of 800)
    epochs: int = 60  # at most; early stopping ends sooner
    patience: int = 20  # epochs without a lower validation loss before training stops (a judge may first spend
    # 10-16 epochs on the images' content before its validation loss starts to fall: docs/evaluation/judge)
    batch_size: int = 64
    lr: float = 1e-3
    widths: tuple[int, ...] = (32, 64, 128)  # channels of the conv-ReLU-maxpool stages (28 px -> 3 x 3 x 128 features)
    hidden: int = 128  # units of the layer on the flattened features; 0: global average pool, then one logit
    dropout: float = 0.0  # before the last layer


QUICK_JUDGE = TwoSampleConfig(epochs=2, patience=1)  # the --quick runs' judge (CI): it shows the plumbing, not power
PANEL = 5  # judges per row (seeds seed ... seed + 4): one judge's own randomness moves its accuracy by 0.03-0.06


def run_judge(quick: bool) -> TwoSampleConfig:
    """The judge of an evaluation run's rows."""
    return QUICK_JUDGE if quick else TwoSampleConfig()


def run_seeds(seed: int, quick: bool) -> tuple[int, ...]:
    """The judges' seeds of an evaluation run's rows: seed ... seed + 4 (two for --quick)."""
    return tuple(seed + j for j in range(2 if quick else PANEL))


def config_of(fields: dict) -> TwoSampleConfig:
    """The judge a recorded row names: asdict(TwoSampleConfig) as JSON holds it (tuples come back as lists)."""
    return TwoSampleConfig(**{**fields, "widths": tuple(fields["widths"])})


@dataclass(frozen=True)
class TwoSampleResult:
    accuracy: float  # on the held-out images of both sets
    stderr: float  # binomial: sqrt(a (1 - a) / n)
    held_out: int  # held-out images of both sets together
    trained_on: int
    validated_on: int
    best_epoch: int  # 1-based: the epoch whose weights judged the held-out images
    epochs_run: int
    validation_losses: tuple[float, ...]  # one per epoch run


@dataclass(frozen=True)
class Split:
    """Images (N, C, H, W) and labels (N,) (0: set A, 1: set B) of each part."""
    train: tuple[torch.Tensor, torch.Tensor]
    validation: tuple[torch.Tensor, torch.Tensor]
    held_out: tuple[torch.Tensor, torch.Tensor]


def judge_network(channels: int, size: int, config: TwoSampleConfig) -> nn.Module:
    """Conv-ReLU-maxpool stages, then either flattened features -> hidden ReLU layer -> one logit (hidden > 0), or a
    global average pool -> one logit (hidden = 0: the project's first judge, which cannot see where things are)."""
    layers, previous = [], channels
    for width in config.widths:
        layers += [nn.Conv2d(previous, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        previous, size = width, size // 2
    if config.hidden == 0:
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(config.dropout),
                             nn.Linear(previous, 1))
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(previous * size * size, config.hidden), nn.ReLU(),
                         nn.Dropout(config.dropout), nn.Linear(config.hidden, 1))  # (B, 1)


def split_sets(a: torch.Tensor, b: torch.Tensor, config: TwoSampleConfig, generator: torch.Generator) -> Split:
    """Each set shuffled and cut into training, validation and held-out parts; the parts of A and B joined."""
    parts = {"train": [], "validation": [], "held_out": []}
    for label, images in enumerate((a, b)):
        order = torch.randperm(len(images), generator=generator)
        held_out = max(1, round(config.held_out * len(images)))
        validation = max(1, round(config.validation * (len(images) - held_out)))
        cut = len(images) - held_out
        for name, indices in (("train", order[:cut - validation]), ("validation", order[cut - validation:cut]),
                              ("held_out", order[cut:])):
            parts[name].append((images[indices].float(), torch.full((len(indices),), float(label))))
    return Split(**{name: (torch.cat([x for x, _ in pair]), torch.cat([y for _, y in pair]))
                    for name, pair in parts.items()})


def mean_loss(judge: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float(F.binary_cross_entropy_with_logits(judge(images)[:, 0], labels))


def train_one_epoch(judge, optimizer, images, labels, batch_size: int, generator: torch.Generator):
    order = torch.randperm(len(images), generator=generator)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        loss = F.binary_cross_entropy_with_logits(judge(images[batch])[:, 0], labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def train_with_early_stopping(judge: nn.Module, split: Split, config: TwoSampleConfig,
                              generator: torch.Generator) -> tuple[int, list[float]]:
    """Train until the validation loss has not improved for config.patience epochs (or config.epochs have run);
    leave the judge at its best epoch's weights. Returns (best epoch, 1-based; the validation loss of each epoch)."""
    optimizer = torch.optim.Adam(judge.parameters(), lr=config.lr)
    losses, best_epoch, best_state = [], 0, copy.deepcopy(judge.state_dict())
    with torch.inference_mode(False), torch.enable_grad():
        for epoch in range(1, config.epochs + 1):
            judge.train()
            train_one_epoch(judge, optimizer, *split.train, config.batch_size, generator)
            judge.eval()
            losses.append(mean_loss(judge, *split.validation))
            if losses[-1] < min(losses[:-1], default=float("inf")):
                best_epoch, best_state = epoch, copy.deepcopy(judge.state_dict())
            elif epoch - best_epoch >= config.patience:
                break
    judge.load_state_dict(best_state)
    return best_epoch, losses


def two_sample_accuracy(a: torch.Tensor, b: torch.Tensor, config: TwoSampleConfig = TwoSampleConfig(),
                        seed: int = 0) -> TwoSampleResult:
    """Held-out accuracy of a fresh judge_network trained to tell images b (label 1) from images a (label 0).

    The split, the initial weights and the batch order all come from `seed`, so a result is a function of
    (a, b, config, seed)."""
    generator = torch.Generator().manual_seed(seed)
    split = split_sets(a, b, config, generator)
    with torch.random.fork_rng(devices=[]):  # the weights' initialisation, from the seed, without touching the caller's
        torch.manual_seed(seed)
        judge = judge_network(a.shape[1], a.shape[-1], config)
    best_epoch, losses = train_with_early_stopping(judge, split, config, generator)
    images, labels = split.held_out
    with torch.no_grad():
        accuracy = float(((judge(images)[:, 0] > 0).float() == labels).float().mean())
    return TwoSampleResult(accuracy=accuracy, stderr=(accuracy * (1 - accuracy) / len(labels)) ** 0.5,
                           held_out=len(labels), trained_on=len(split.train[1]), validated_on=len(split.validation[1]),
                           best_epoch=best_epoch, epochs_run=len(losses), validation_losses=tuple(losses))


@dataclass(frozen=True)
class PanelResult:
    """Several judges (one per seed) of the same two sets."""
    accuracies: tuple[float, ...]
    best_epochs: tuple[int, ...]
    held_out: int

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def spread(self) -> float:
        """The judges' sample standard deviation (0 for one judge)."""
        return statistics.stdev(self.accuracies) if len(self.accuracies) > 1 else 0.0

    @property
    def standard_error(self) -> float:
        """Of the judges' mean: spread / sqrt(judges)."""
        return self.spread / len(self.accuracies) ** 0.5


def judge_panel(a: torch.Tensor, b: torch.Tensor, config: TwoSampleConfig, seeds) -> PanelResult:
    """One judge per seed (two_sample_accuracy) of images b against images a."""
    results = [two_sample_accuracy(a, b, config, seed) for seed in seeds]
    return PanelResult(tuple(r.accuracy for r in results), tuple(r.best_epoch for r in results), results[0].held_out)
