"""Sample-quality numbers from an evaluation classifier: class confidence, accuracy, diversity, feature FID.

Fashion-MNIST has no standard Inception-based FID that can be computed offline, so FID here is the
Frechet distance between Gaussians fitted to the evaluation classifier's penultimate features
(Heusel et al. 2017, eq. 6), comparable only between runs that use the same evaluator.

The penultimate features are pooled over the whole image and barely react to blur, so a second distance looks at
texture: the Frechet distance between per-image texture statistics (Gatys et al. 2015: the mean and standard
deviation of each channel of the evaluator's first residual block, at full resolution). It is read on a log scale
between two references, real images (0) and the same real images blurred by a 3x3 box (1): texture_position.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


@torch.no_grad()
def evaluator_outputs(evaluator: nn.Module, images: torch.Tensor, batch: int = 500):
    """(softmax probabilities (N, K), penultimate features (N, D)) for images in [-1, 1]."""
    device = next(evaluator.parameters()).device
    probs, features = [], []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch].to(device).float()
        feats = evaluator.features(chunk)
        probs.append(torch.softmax(evaluator.head(feats).float(), dim=-1).cpu())
        features.append(feats.float().cpu())
    return torch.cat(probs), torch.cat(features)


@torch.no_grad()
def texture_statistics(evaluator: nn.Module, images: torch.Tensor, batch: int = 500) -> torch.Tensor:
    """(N, 2C) per image: each early feature channel's spatial mean and standard deviation."""
    device = next(evaluator.parameters()).device
    rows = []
    for start in range(0, len(images), batch):
        maps = evaluator.early_features(images[start:start + batch].to(device).float()).float()  # (B, C, H, W)
        rows.append(torch.cat([maps.mean(dim=(2, 3)), maps.std(dim=(2, 3))], dim=1).cpu())
    return torch.cat(rows)


def box_blur(images: torch.Tensor, size: int = 3) -> torch.Tensor:
    """Each pixel replaced by the mean of its size x size neighbourhood (edges replicated): the blurred reference."""
    pad = size // 2
    return F.avg_pool2d(F.pad(images, (pad, pad, pad, pad), mode="replicate"), size, stride=1)


def sharpness(images: torch.Tensor) -> float:
    """Mean absolute 3x3 Laplacian, (4 x - the four neighbours), over every pixel of images in [-1, 1] (edges
    replicated): how much fine detail there is. A blur lowers it; noise raises it; compare it with real images'."""
    kernel = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]], dtype=images.dtype)
    channels = images.shape[1]
    kernel = kernel.to(images.device).expand(channels, 1, 3, 3)
    laplacian = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=channels)
    return float(laplacian.abs().mean())


def texture_position(distance: float, real: float, blurred: float) -> float:
    """Where a distance sits between the real-data floor (0) and blurred real images (1), in log distance:
    (log d - log d_real) / (log d_blurred - log d_real). Above 1 is blurrier (or noisier) than the blurred images."""
    return (math.log(distance) - math.log(real)) / (math.log(blurred) - math.log(real))


def class_accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(dim=1) == labels).float().mean())


def mean_pairwise_distance(features: torch.Tensor) -> float:
    """Mean Euclidean distance between distinct pairs: 0 when every sample is the same."""
    n = len(features)
    if n < 2:
        return 0.0
    distances = torch.cdist(features.double(), features.double())
    return float(distances.sum() / (n * (n - 1)))


def frechet_distance(features_a: torch.Tensor, features_b: torch.Tensor) -> float:
    """|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)), in float64.

    tr((S_a S_b)^(1/2)) = sum of sqrt(eigenvalues of S_a^(1/2) S_b S_a^(1/2)), a symmetric PSD matrix.
    """
    a, b = features_a.double(), features_b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov_a)
    sqrt_a = eigenvectors @ torch.diag(eigenvalues.clamp_min(0).sqrt()) @ eigenvectors.T
    middle = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * middle)


def knn_radii(features: torch.Tensor, k: int = 3) -> torch.Tensor:
    """(N,) distance from each point to its k-th nearest other point: the radius of its ball in the k-NN estimate of
    a distribution's support (Kynkaanniemi et al. 2019, sec. 3)."""
    distances = torch.cdist(features.double(), features.double())  # (N, N), zero on the diagonal
    return distances.kthvalue(k + 1, dim=1).values  # the (k + 1)-th smallest: the point itself is the first


def manifold_coverage(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor) -> float:
    """Share of queries inside at least one support ball: mean_q 1[exists s: |q - s| <= r_s] (Kynkaanniemi et al.
    2019, eq. 1: f(phi, Phi))."""
    inside = torch.cdist(queries.double(), support.double()) <= radii.double()[None, :]  # (Q, S)
    return float(inside.any(dim=1).double().mean())


def precision_recall(generated: torch.Tensor, real: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019, eq. 2): precision = share of generated features inside
    the real manifold (fidelity), recall = share of real features inside the generated manifold (diversity)."""
    return (manifold_coverage(generated, real, knn_radii(real, k)),
            manifold_coverage(real, generated, knn_radii(generated, k)))
