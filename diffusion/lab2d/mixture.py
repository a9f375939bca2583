"""Class-conditional 2-D Gaussian mixtures and the lab's built-in distributions.

    p(x0 | y) = sum_{k in class y} pi_k N(x0; mu_k, Sigma_k) / sum_{k in class y} pi_k,   p(x0) = sum_k pi_k N(...)

All tensors are float64 on the CPU; the distributions are scaled to a spread of about 1 (like unit-variance data).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True, eq=False)
class Mixture:
    weights: torch.Tensor  # (K,) pi_k, summing to 1
    means: torch.Tensor  # (K, 2) mu_k
    covariances: torch.Tensor  # (K, 2, 2) Sigma_k, symmetric positive definite
    classes: torch.Tensor  # (K,) long: the class of each component
    class_names: tuple[str, ...]

    def __post_init__(self):
        k = len(self.weights)
        if self.means.shape != (k, 2) or self.covariances.shape != (k, 2, 2) or self.classes.shape != (k,):
            raise ValueError(f"a mixture of {k} components needs means (K, 2), covariances (K, 2, 2) and classes (K,)")
        if bool((self.weights <= 0).any()) or abs(float(self.weights.sum()) - 1) > 1e-9:
            raise ValueError("mixture weights must be positive and sum to 1")
        if bool(torch.linalg.eigvalsh(self.covariances).min() <= 0):
            raise ValueError("every covariance must be positive definite")
        present = set(self.classes.tolist())
        if present != set(range(len(self.class_names))):
            raise ValueError(f"classes {sorted(present)} must be exactly 0..{len(self.class_names) - 1}, one name each")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_prior(self) -> torch.Tensor:
        """(C,) p(y) = sum of the class's component weights."""
        return torch.zeros(self.num_classes, dtype=torch.float64).index_add_(0, self.classes, self.weights)


def mixture(weights, means, covariances, classes, class_names) -> Mixture:
    """A Mixture from lists (weights normalised to sum 1)."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    return Mixture(w / w.sum(), torch.as_tensor(means, dtype=torch.float64),
                   torch.as_tensor(covariances, dtype=torch.float64), torch.as_tensor(classes, dtype=torch.long),
                   tuple(class_names))


def widened(mix: Mixture, factor: float) -> Mixture:
    """The same mixture with every component's standard deviation times `factor`: Sigma_k -> factor^2 Sigma_k.
    Autoguidance's deliberately worse model (Karras et al. 2024 guide with a smaller, less trained, blurrier one)."""
    if not factor >= 1:
        raise ValueError(f"a worse model widens its components: factor must be >= 1, got {factor}")
    return Mixture(mix.weights, mix.means, mix.covariances * factor**2, mix.classes, mix.class_names)


def sample_mixture(mix: Mixture, labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Exact samples x0 ~ p(x0 | y_i), one per label: (N,) -> (N, 2) float64."""
    within_class = mix.weights[None, :] * (mix.classes[None, :] == labels[:, None])  # (N, K)
    component = torch.multinomial(within_class, 1, generator=generator)[:, 0]
    noise = torch.randn(len(labels), 2, generator=generator, dtype=torch.float64)
    cholesky = torch.linalg.cholesky(mix.covariances)[component]  # (N, 2, 2)
    return mix.means[component] + (cholesky @ noise[:, :, None])[:, :, 0]  # x0 = mu_k + L_k z


def balanced_labels(mix: Mixture, count: int) -> torch.Tensor:
    """(count,) labels 0, 1, ..., C-1, 0, 1, ... (each class's share as equal as the count allows)."""
    return torch.arange(count) % mix.num_classes


# --- built-in distributions ------------------------------------------------------------------
def _rotated(std_along: float, std_across: float, angle: float) -> list[list[float]]:
    """R diag(std_along^2, std_across^2) R^T with R the rotation by `angle`."""
    c, s = math.cos(angle), math.sin(angle)
    a, b = std_along**2, std_across**2
    return [[a * c * c + b * s * s, (a - b) * c * s], [(a - b) * c * s, a * s * s + b * c * c]]


def blobs() -> Mixture:
    """Four well-separated elongated Gaussians (full covariances), one class each."""
    centres = [(-1.2, -1.2), (1.2, -1.2), (-1.2, 1.2), (1.2, 1.2)]
    covariances = [_rotated(0.35, 0.15, math.pi / 4 * (1 + 2 * k)) for k in range(4)]
    return mixture([1] * 4, centres, covariances, range(4), ("south-west", "south-east", "north-west", "north-east"))


def rings() -> Mixture:
    """Two concentric rings of isotropic Gaussians: class 'inner' at radius 0.7, 'outer' at radius 1.6."""
    means, classes, weights = [], [], []
    for label, (radius, count) in enumerate([(0.7, 16), (1.6, 36)]):
        for j in range(count):
            angle = 2 * math.pi * j / count
            means.append((radius * math.cos(angle), radius * math.sin(angle)))
            classes.append(label)
            weights.append(1 / count)  # each ring half the mass
    return mixture(weights, means, [[[0.09**2, 0], [0, 0.09**2]]] * len(means), classes, ("inner", "outer"))


def spirals() -> Mixture:
    """Two interleaved spirals (r = 0.25 + 0.27 theta, theta to 6), each a chain of isotropic Gaussians: an intertwined pair."""
    means, classes = [], []
    for label in range(2):
        for j in range(28):
            theta = 0.6 + j * 0.2
            radius = 0.25 + 0.27 * theta
            means.append((radius * math.cos(theta + math.pi * label), radius * math.sin(theta + math.pi * label)))
            classes.append(label)
    return mixture([1] * len(means), means, [[[0.1**2, 0], [0, 0.1**2]]] * len(means), classes, ("A", "B"))


def _branches(start, angle, length, width, depth, out):
    """A branch from `start` in direction `angle`: one Gaussian elongated along it, then two thinner, shorter
    branches from its tip, 0.45 rad to either side, until `depth` runs out. Appends (mean, covariance, weight)."""
    tip = (start[0] + length * math.cos(angle), start[1] + length * math.sin(angle))
    middle = ((start[0] + tip[0]) / 2, (start[1] + tip[1]) / 2)
    out.append((middle, _rotated(length / 3.5, width, angle), length))  # mass proportional to the branch's length
    if depth > 1:
        for turn in (-0.45, 0.45):
            _branches(tip, angle + turn, length * 0.62, width * 0.7, depth - 1, out)


def tree() -> Mixture:
    """Two branching trees from a shared root, in the spirit of Karras et al. 2024 (autoguidance), Fig. 1: thin
    anisotropic Gaussians along the branches, overlapping near the root and parting towards the tips."""
    means, covariances, weights, classes = [], [], [], []
    for label, angle in enumerate((math.pi / 2 + 0.3, math.pi / 2 - 0.3)):
        parts = []
        _branches((0.0, -1.6), angle, 1.3, 0.09, 4, parts)
        for mean, covariance, weight in parts:
            means.append(mean)
            covariances.append(covariance)
            weights.append(weight)
            classes.append(label)
    return mixture(weights, means, covariances, classes, ("left tree", "right tree"))


DISTRIBUTIONS = {"blobs": blobs, "rings": rings, "spirals": spirals, "tree": tree}
