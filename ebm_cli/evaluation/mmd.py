"""Maximum mean discrepancy between two samples (Gretton et al. 2012, "A Kernel Two-Sample Test").

MMD²(P, Q) = E k(x, x') + E k(y, y') − 2 E k(x, y) with a characteristic kernel is 0 iff P = Q.
The kernel is a sum of Gaussian kernels over several bandwidths around the median pairwise
distance: the median bandwidth alone is so wide on multi-modal data that it barely separates
a single Gaussian from a mixture.
"""

from __future__ import annotations

import torch
from torch import Tensor

BANDWIDTH_FACTORS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def _subsample(x: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """At most n rows of x [N, D], drawn without replacement."""
    if x.shape[0] <= n:
        return x
    idx = torch.randperm(x.shape[0], generator=generator)[:n]
    return x[idx.to(x.device)]


def median_distance(z: Tensor, generator: torch.Generator, max_points: int = 1000) -> Tensor:
    """Median pairwise Euclidean distance among (at most max_points) rows of z [N, D] (0-d)."""
    z = _subsample(z, max_points, generator)
    d = torch.cdist(z, z)  # [n, n]
    iu = torch.triu_indices(z.shape[0], z.shape[0], offset=1, device=z.device)
    return d[iu[0], iu[1]].median()


def _kernel_sums(a: Tensor, b: Tensor, bandwidths: Tensor, chunk: int = 1024) -> Tensor:
    """Σ_ij Σ_h exp(−‖a_i − b_j‖² / (2h²)) for a [N, D], b [M, D], bandwidths [H] (0-d).

    Rows of a go in chunks of ``chunk`` so memory stays O(chunk · M).
    """
    inv = 0.5 / bandwidths**2  # [H]
    total = torch.zeros((), dtype=a.dtype, device=a.device)
    for i in range(0, a.shape[0], chunk):
        d2 = torch.cdist(a[i : i + chunk], b) ** 2  # [c, M]
        total = total + torch.exp(-d2[..., None] * inv).sum()  # [c, M, H] summed
    return total


def mmd(
    x: Tensor,
    y: Tensor,
    bandwidths: Tensor | list[float] | None = None,
    max_points: int = 2000,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Unbiased estimate of MMD² between samples x [N, *event] and y [M, *event] (0-d float64).

    bandwidths: Gaussian-kernel widths h (data units); default: the pooled median pairwise
    distance × BANDWIDTH_FACTORS. Each sample is first subsampled to ≤ max_points rows with
    ``generator`` (a fixed seed when None, so the number is reproducible). The estimator
    (Gretton et al. 2012, eq. 3) drops the diagonal terms, so it can be slightly negative when
    P = Q; its scale is that of the kernel sum (at most len(bandwidths)).
    """
    if x.shape[1:] != y.shape[1:]:
        raise ValueError(f"mmd needs samples of one event shape, got {x.shape} and {y.shape}")
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError("mmd needs at least 2 points in each sample")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    x = _subsample(x.detach().flatten(1).double(), max_points, g)  # [n, D]
    y = _subsample(y.detach().flatten(1).to(x), max_points, g)  # [m, D]
    if bandwidths is None:
        h = median_distance(torch.cat([x, y]), g) * torch.tensor(BANDWIDTH_FACTORS).to(x)
    else:
        h = torch.as_tensor(bandwidths).to(x).reshape(-1)  # [H]
    n, m, n_h = x.shape[0], y.shape[0], h.shape[0]
    # k(z, z) = H on the diagonal for every z: remove it for the unbiased within-sample terms
    kxx = (_kernel_sums(x, x, h) - n * n_h) / (n * (n - 1))
    kyy = (_kernel_sums(y, y, h) - m * n_h) / (m * (m - 1))
    kxy = _kernel_sums(x, y, h) / (n * m)
    return kxx + kyy - 2 * kxy
