"""How far samples are from the exact distribution, and how many fall outside a class's support.

Distance: sliced Wasserstein-2 (Rabin et al. 2011; Bonneel et al. 2015),
    SW2(a, p) = sqrt(mean_theta W2^2(<a, theta>, <p, theta>)),
over evenly spaced directions theta on the half circle. The 1-D W2^2 between N points and the distribution p is
the mean squared difference between the sorted projections and p's quantiles at levels (i + 1/2) / N, read off a
REFERENCE_FACTOR times larger exact sample with the same labels (so the reference adds little noise of its own).
Its noise floor is the same distance for exact samples of the same size and labels: a sampler is as good as the
sample size can tell when it is at the floor.

Support: point x of class y is outside the support of p(. | y) when log p(x | y) lies below the `quantile`
(1 %) of log p(x0 | y) over exact samples of class y. By construction exact samples are outside at that rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .exact import log_density
from .mixture import Mixture, sample_mixture

DIRECTIONS = 180
SUPPORT_QUANTILE = 0.01
REFERENCE_FACTOR = 10  # the distance's reference sample is this many times larger than the sample
SUPPORT_COUNT = 20_000  # exact samples per class that set the support threshold


def directions(count: int = DIRECTIONS) -> torch.Tensor:
    """(2, count) unit vectors evenly spaced over the half circle."""
    angles = torch.arange(count, dtype=torch.float64) * math.pi / count
    return torch.stack([angles.cos(), angles.sin()])


def projected_quantiles(reference: torch.Tensor, size: int) -> torch.Tensor:
    """(size, D) Q_theta((i + 1/2) / size): the quantiles of the reference's projections on every direction."""
    levels = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    return torch.quantile(reference.double() @ directions(), levels, dim=0)


def sliced_wasserstein_to(a: torch.Tensor, quantiles: torch.Tensor) -> float:
    """SW2 = sqrt(mean_theta mean_i (sort<a, theta>_i - Q_theta((i + 1/2) / N))^2)."""
    return float(((a.double() @ directions(quantiles.shape[1])).sort(0).values - quantiles).pow(2).mean().sqrt())


def sliced_wasserstein(a: torch.Tensor, reference: torch.Tensor) -> float:
    """SW2 of points a (N, 2) to a reference sample (M >= N, 2)."""
    return sliced_wasserstein_to(a, projected_quantiles(reference, len(a)))


def exact_samples(mix: Mixture, labels: torch.Tensor, seed: int) -> torch.Tensor:
    return sample_mixture(mix, labels, torch.Generator().manual_seed(seed))


def reference_samples(mix: Mixture, labels: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(REFERENCE_FACTOR N, 2) exact samples with each label repeated REFERENCE_FACTOR times."""
    return exact_samples(mix, labels.repeat(REFERENCE_FACTOR), 777 + seed)


def noise_floor(mix: Mixture, labels: torch.Tensor, quantiles: torch.Tensor, repeats: int = 10) -> float:
    """Mean SW2 of `repeats` independent exact sample sets with these labels to the reference's quantiles."""
    return sum(sliced_wasserstein_to(exact_samples(mix, labels, 1 + r), quantiles) for r in range(repeats)) / repeats


def support_thresholds(mix: Mixture, quantile: float = SUPPORT_QUANTILE, count: int = SUPPORT_COUNT) -> torch.Tensor:
    """(C,) per class: the `quantile` of log p(x0 | y) over `count` exact samples of class y (fixed seed)."""
    thresholds = []
    for label in range(mix.num_classes):
        labels = torch.full((count,), label)
        log_p = log_density(mix, exact_samples(mix, labels, 12345 + label), 1.0, 0.0, labels)
        thresholds.append(torch.quantile(log_p, quantile))
    return torch.stack(thresholds)


def outside_support(mix: Mixture, x: torch.Tensor, labels: torch.Tensor, thresholds: torch.Tensor) -> torch.Tensor:
    """(N,) bool: log p(x_i | y_i) < threshold of y_i (non-finite points count as outside)."""
    log_p = log_density(mix, x, 1.0, 0.0, labels)
    return ~(log_p >= thresholds[labels])


@dataclass(frozen=True)
class SampleQuality:
    distance: float  # SW2 to the exact distribution with the same labels
    noise_floor: float  # the same for exact samples of that size
    outside_share: float  # share of samples outside their class's support


@dataclass(frozen=True, eq=False)
class ExactReference:
    """What samples with these labels are measured against, computed once: the quantiles of a large exact sample's
    projections, the distance's noise floor and each class's support threshold."""

    mixture: Mixture
    labels: torch.Tensor  # (N,)
    quantiles: torch.Tensor  # (N, DIRECTIONS) of REFERENCE_FACTOR N exact samples with these labels
    noise_floor: float
    thresholds: torch.Tensor  # (C,)

    def quality(self, samples: torch.Tensor) -> SampleQuality:
        """Distance of `samples` (row i of class labels[i]) to the exact distribution, and share outside the support."""
        return SampleQuality(sliced_wasserstein_to(samples, self.quantiles), self.noise_floor,
                             float(outside_support(self.mixture, samples, self.labels, self.thresholds).double().mean()))


def exact_reference(mix: Mixture, labels: torch.Tensor, thresholds: torch.Tensor | None = None,
                    seed: int = 0) -> ExactReference:
    quantiles = projected_quantiles(reference_samples(mix, labels, seed), len(labels))
    return ExactReference(mix, labels, quantiles, noise_floor(mix, labels, quantiles),
                          support_thresholds(mix) if thresholds is None else thresholds)
