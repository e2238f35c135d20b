"""How a model or a sampler shares its mass among the modes of a known mixture (2-D).

Mode collapse and wrong mode weights are the classic failures of EBM training: short-run MCMC
rarely crosses between well-separated modes, and score matching is blind to their relative
weights. Each mode owns the Voronoi cell of its mean (the points nearer to it than to any other).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ebm_cli.evaluation.quadrature import energy_on_grid, grid_2d


def nearest_mode(x: Tensor, means: Tensor) -> Tensor:
    """Index [B] of the mean (of means [K, D]) nearest to each point of x [B, D]."""
    return torch.cdist(x.double(), means.to(x.device).double()).argmin(dim=1)


def mode_masses(
    energy_fn: nn.Module,
    means: Tensor,
    bounds: tuple[tuple[float, float], ...],
    n_grid: int = 400,
) -> Tensor:
    """The model's probability mass in each mode's Voronoi cell, [K] float64 summing to 1.

    Midpoint quadrature of p_θ ∝ exp(−E_θ) on an n_grid × n_grid grid over ``bounds`` (2-D
    only); the mass is normalised within the box. Compare with the mixture weights.
    """
    points, _ = grid_2d(bounds, n_grid)  # [M, 2]
    energy = energy_on_grid(energy_fn, points)  # [M] float64
    weights = torch.softmax(-energy, dim=0)  # p_θ(cell) / p_θ(box), [M]
    idx = nearest_mode(points, means)  # [M]
    k = means.shape[0]
    return torch.zeros(k, dtype=torch.float64).index_add_(0, idx, weights)


def sample_mode_fractions(samples: Tensor, means: Tensor) -> Tensor:
    """Fraction of samples [N, D] nearest to each mean [K, D] -> [K] float64 summing to 1."""
    idx = nearest_mode(samples.detach().flatten(1), means)  # [N]
    counts = torch.bincount(idx, minlength=means.shape[0]).double()
    return counts / samples.shape[0]


def mode_weight_error(masses: Tensor, weights: Tensor) -> Tensor:
    """Total-variation distance ½ Σ_k |m_k − w_k| between mode masses and true weights (0-d)."""
    w = weights.to(masses) / weights.to(masses).sum()
    return 0.5 * (masses - w).abs().sum()
