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


def _kernel_row_sums(a: Tensor, b: Tensor, bandwidths: Tensor, chunk: int = 1024
                     ) -> tuple[Tensor, Tensor]:
    """Row and column sums of K_ij = Σ_h exp(−‖a_i − b_j‖² / (2h²)) for a [N, D], b [M, D],
    bandwidths [H]: ([N], [M]).

    Rows of a go in chunks of ``chunk`` so memory stays O(chunk · M).
    """
    inv = 0.5 / bandwidths**2  # [H]
    rows = []
    cols = torch.zeros(b.shape[0], dtype=a.dtype, device=a.device)
    for i in range(0, a.shape[0], chunk):
        d2 = torch.cdist(a[i : i + chunk], b) ** 2  # [c, M]
        k = torch.exp(-d2[..., None] * inv).sum(-1)  # [c, M], summed over bandwidths
        rows.append(k.sum(1))
        cols = cols + k.sum(0)
    return torch.cat(rows), cols


def mmd_with_se(
    x: Tensor,
    y: Tensor,
    bandwidths: Tensor | list[float] | None = None,
    max_points: int = 2000,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Unbiased estimate of MMD² between samples x [N, *event] and y [M, *event], and its
    jackknife standard error (both 0-d float64).

    bandwidths: Gaussian-kernel widths h (data units); default: the pooled median pairwise
    distance × BANDWIDTH_FACTORS. Each sample is first subsampled to ≤ max_points rows with
    ``generator`` (a fixed seed when None, so the number is reproducible). The estimator
    (Gretton et al. 2012, eq. 3)

        MMD² = Σ_{i≠i'} k(x_i, x_i')/(n(n−1)) + Σ_{j≠j'} k(y_j, y_j')/(m(m−1))
               − 2 Σ_ij k(x_i, y_j)/(nm)

    drops the diagonal terms, so it can be slightly negative when P = Q; its scale is that of
    the kernel sum (at most len(bandwidths)). The standard error is the two-sample jackknife,
    se² = (n−1)/n Σ_i (U₋ᵢ − Ū₋ₓ)² + (m−1)/m Σ_j (U₋ⱼ − Ū₋ᵧ)², with U₋ᵢ the estimate without
    x_i (exact, from the kernel matrices' row sums); by the Efron–Stein inequality it does not
    underestimate the variance in expectation, also at P = Q where the estimator is degenerate.
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
    rx = _kernel_row_sums(x, x, h)[0] - n_h  # [n] Σ_{i'≠i} k(x_i, x_i')
    ry = _kernel_row_sums(y, y, h)[0] - n_h  # [m]
    cx, cy = _kernel_row_sums(x, y, h)  # [n] Σ_j k(x_i, y_j), [m] Σ_i k(x_i, y_j)
    sxx, syy, sxy = rx.sum(), ry.sum(), cx.sum()
    value = sxx / (n * (n - 1)) + syy / (m * (m - 1)) - 2 * sxy / (n * m)
    se = torch.full((), float("nan"), dtype=x.dtype)
    if n > 2 and m > 2:
        kyy, kxx = syy / (m * (m - 1)), sxx / (n * (n - 1))
        without_x = ((sxx - 2 * rx) / ((n - 1) * (n - 2)) + kyy
                     - 2 * (sxy - cx) / ((n - 1) * m))  # [n] U without x_i
        without_y = ((syy - 2 * ry) / ((m - 1) * (m - 2)) + kxx
                     - 2 * (sxy - cy) / (n * (m - 1)))  # [m] U without y_j
        var = ((n - 1) / n * ((without_x - without_x.mean()) ** 2).sum()
               + (m - 1) / m * ((without_y - without_y.mean()) ** 2).sum())
        se = var.sqrt()
    return value, se


def mmd(
    x: Tensor,
    y: Tensor,
    bandwidths: Tensor | list[float] | None = None,
    max_points: int = 2000,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Unbiased estimate of MMD² between samples x [N, *event] and y [M, *event] (0-d float64);
    see :func:`mmd_with_se` (this is its first value)."""
    return mmd_with_se(x, y, bandwidths, max_points, generator)[0]
