"""Improved precision and recall of samples against data (Kynkäänniemi, Karras, Laine,
Lehtinen & Aila 2019, "Improved Precision and Recall Metric for Assessing Generative Models").

Each set Φ is given a manifold estimate: the union of balls around its points, the ball of
φ ∈ Φ having as radius the distance from φ to its k-th nearest neighbour in Φ (itself excluded):

    f(z, Φ) = 1 if ‖z − φ‖ ≤ NN_k(φ, Φ) for some φ ∈ Φ, else 0;
    precision = mean_{g ∈ samples} f(g, real),   recall = mean_{r ∈ real} f(r, samples).

Precision is the share of samples that look like data (quality), recall the share of data the
samples cover (mode dropping shows as low recall). The paper embeds images with VGG-16 first;
here the points are used as they are (flattened pixels for images), so image numbers are not
comparable with the paper's. Both sets should have the same size: the balls shrink as a set
grows, so a larger set covers less. Distances by torch.cdist in row chunks: memory O(chunk · n).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def knn_radii(x: Tensor, k: int = 3, chunk: int = 1024) -> Tensor:
    """Distance from each row of x [N, D] to its k-th nearest other row, [N]."""
    if not 1 <= k < x.shape[0]:
        raise ValueError(f"precision/recall k must be in [1, {x.shape[0] - 1}], got {k}")
    out = []
    for i in range(0, x.shape[0], chunk):
        d = torch.cdist(x[i : i + chunk], x)  # [c, N]; the zero self-distance is smallest
        out.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(out)


def coverage(z: Tensor, centres: Tensor, radii: Tensor, chunk: int = 1024) -> Tensor:
    """f(z_i, Φ) as a float [M]: is z_i [M, D] inside some ball (centres [N, D], radii [N])?"""
    out = []
    for i in range(0, z.shape[0], chunk):
        d = torch.cdist(z[i : i + chunk], centres)  # [c, N]
        out.append((d <= radii).any(1))
    return torch.cat(out).to(z.dtype)


def _subsample(x: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """n rows of x [N, D] drawn without replacement (x itself when N <= n)."""
    if x.shape[0] <= n:
        return x
    return x[torch.randperm(x.shape[0], generator=generator)[:n].to(x.device)]


def precision_recall(samples: Tensor, real: Tensor, k: int = 3,
                     generator: torch.Generator | None = None) -> tuple[float, float]:
    """(precision, recall) of samples [M, *event] against real data [N, *event] (k-NN balls,
    default k = 3 as in the paper), computed in float64. The larger set is first subsampled
    without replacement (``generator``; a fixed seed when None) to the smaller one's size;
    NaNs when that size is <= k (no k-th neighbour)."""
    if k < 1:
        raise ValueError(f"precision/recall k must be >= 1, got {k}")
    if samples.shape[1:] != real.shape[1:]:
        raise ValueError(f"precision/recall needs one event shape, got {tuple(samples.shape)} "
                         f"and {tuple(real.shape)}")
    g, r = samples.detach().flatten(1).double(), real.detach().flatten(1).to(torch.float64)
    r = r.to(g.device)
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n = min(g.shape[0], r.shape[0])
    if n <= k:
        return math.nan, math.nan
    g, r = _subsample(g, n, gen), _subsample(r, n, gen)
    precision = coverage(g, r, knn_radii(r, k)).mean()
    recall = coverage(r, g, knn_radii(g, k)).mean()
    return float(precision), float(recall)
