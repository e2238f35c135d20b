"""2-D toy datasets. Each builder returns a ``Dataset`` with a train/test split.

Definitions follow the toy densities shared by the EBM and normalising-flow literature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ebm_cli.data.base import Dataset


def _box(points: Tensor, margin: float) -> tuple[tuple[float, float], ...]:
    lo = points.min(0).values - margin
    hi = points.max(0).values + margin
    return tuple((float(a), float(b)) for a, b in zip(lo, hi))


def gaussian_mixture_log_prob(
    x: Tensor, means: Tensor, std: float, weights: Tensor
) -> Tensor:
    """log Σ_k w_k N(x | μ_k, σ²I) for x [B, D], means [K, D], weights [K] -> [B]."""
    means = means.to(x)
    weights = weights.to(x)
    d = x.shape[-1]
    sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)  # [B, K]
    log_norm = -0.5 * d * math.log(2 * math.pi * std**2)
    return torch.logsumexp(torch.log(weights)[None] + log_norm - 0.5 * sq / std**2, dim=1)


def _sample_mixture(
    n: int, means: Tensor, std: float, weights: Tensor, generator: torch.Generator
) -> Tensor:
    k = torch.multinomial(weights, n, replacement=True, generator=generator)  # [n]
    return means[k] + std * torch.randn(n, means.shape[1], generator=generator)


def two_gaussians(
    n_train: int = 4000,
    n_test: int = 2000,
    means: Sequence[Sequence[float]] = ((-2.0, 0.0), (2.0, 0.0)),
    std: float = 0.5,
    weights: Sequence[float] = (0.5, 0.5),
    seed: int = 0,
) -> Dataset:
    """A mixture of two isotropic 2-D Gaussians, N(μ_k, σ²I) with weights w_k."""
    mu = torch.tensor(means, dtype=torch.float32)
    w = torch.tensor(weights, dtype=torch.float32)
    if mu.ndim != 2 or mu.shape[0] != w.shape[0]:
        raise ValueError(
            f"data.means must be a list of points, one per weight; got {mu.shape[0]} means "
            f"for {w.shape[0]} weights"
        )
    if std <= 0:
        raise ValueError(f"data.std must be > 0, got {std}")
    if (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError(f"data.weights must be non-negative with a positive sum, got {weights}")
    w = w / w.sum()
    g = torch.Generator().manual_seed(seed)
    train = _sample_mixture(n_train, mu, std, w, g)
    test = _sample_mixture(n_test, mu, std, w, g)
    box_pts = torch.cat([mu - 4.5 * std, mu + 4.5 * std])
    return Dataset(
        name="two_gaussians",
        train=train,
        test=test,
        bounds=_box(box_pts, 0.0),
        log_prob=lambda x: gaussian_mixture_log_prob(x, mu, std, w),
    )
