"""Kernel Stein discrepancy of samples against a score (Liu, Lee & Jordan 2016; Chwialkowski,
Strathmann & Gretton 2016; Gorham & Mackey 2017).

For a density p with score s(x) = ∇ₓ log p(x) (an EBM: s = −∇ₓE_θ, no log Z needed) and a
kernel k, the Stein kernel

    u_p(x, y) = s(x)ᵀ s(y) k(x, y) + s(x)ᵀ ∇_y k(x, y) + ∇_x k(x, y)ᵀ s(y) + tr ∇_x ∇_y k(x, y)

has E_{x,y ~ q} u_p(x, y) = KSD²(q, p) ≥ 0, with equality iff q = p (for the IMQ kernel below,
Gorham & Mackey 2017, Thm 8, which also shows that it detects non-convergence where Gaussian
kernels do not). So the KSD of a sampler's output against the model's own score asks "do these
samples follow exp(−E)?" without any truth. The estimator here is the U-statistic

    KSD²_U = Σ_{i≠j} u_p(x_i, x_j) / (n(n−1)),

unbiased, hence slightly negative at times when q = p (like the unbiased MMD²).

IMQ kernel k(x, y) = (c² + ‖r‖²)^β, r = x − y, β ∈ (−1, 0) (default β = −½, c = 1). With
q = c² + ‖r‖² and D the dimension, in closed form:

    ∇_x k = 2β q^{β−1} r = −∇_y k,
    tr ∇_x ∇_y k = −2βD q^{β−1} − 4β(β−1) q^{β−2} ‖r‖²,
    u_p(x, y) = q^β s(x)ᵀs(y) + 2β q^{β−1} rᵀ(s(y) − s(x)) + tr ∇_x ∇_y k.

The kernel is not scale-free: c = 1 fits data of unit scale (the tool's 2-D sets; standardised
data). Samples go in row chunks so memory stays O(chunk · n).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ebm_cli.samplers.base import energy_and_grad


def imq_stein_kernel(x: Tensor, sx: Tensor, y: Tensor, sy: Tensor, c: float = 1.0,
                     beta: float = -0.5) -> Tensor:
    """The IMQ Stein kernel matrix u_p(x_i, y_j) [N, M] for points x [N, D], y [M, D] and their
    scores sx [N, D], sy [M, D] (the closed form in the module docstring)."""
    d = x.shape[1]
    xy = x @ y.T  # [N, M]
    r2 = ((x * x).sum(1, keepdim=True) + (y * y).sum(1) - 2 * xy).clamp_min(0)  # ‖x_i − y_j‖²
    q = c * c + r2
    qb1 = q ** (beta - 1)  # q^{β−1}
    # rᵀ(s(y) − s(x)) = x_i·sy_j − y_j·sy_j − x_i·sx_i + y_j·sx_i
    r_dot_ds = (x @ sy.T - (y * sy).sum(1) - (x * sx).sum(1, keepdim=True) + sx @ y.T)
    trace = -2 * beta * d * qb1 - 4 * beta * (beta - 1) * qb1 / q * r2
    return q**beta * (sx @ sy.T) + 2 * beta * qb1 * r_dot_ds + trace


def ksd_with_se(x: Tensor, score: Tensor, c: float = 1.0, beta: float = -0.5,
                chunk: int = 1024) -> tuple[float, float]:
    """U-statistic KSD² of samples x [n, *event] with scores s(x) [n, *event], and its
    standard error (floats; computed in float64).

    se² = 4/n · var_i(ū_i) + 2/(n(n−1)) · var_{i≠j}(u_ij), the first two terms of the
    Hoeffding decomposition with ū_i = mean_{j≠i} u_ij the row means: the first is the
    leading term when q ≠ p; when q = p the U-statistic is degenerate (E ū_i = 0) and its
    variance is 2 E u²/(n(n−1)), which the second term estimates, so the sum is conservative.
    """
    n = x.shape[0]
    if n < 3:
        raise ValueError(f"ksd needs at least 3 samples, got {n}")
    if score.shape != x.shape:
        raise ValueError(f"ksd needs one score per sample, got {tuple(score.shape)} for "
                         f"{tuple(x.shape)}")
    if not -1 < beta < 0:
        raise ValueError(f"ksd beta must be in (-1, 0), got {beta}")
    x, s = x.detach().flatten(1).double(), score.detach().flatten(1).double()
    rows = torch.empty(n, dtype=x.dtype, device=x.device)  # Σ_{j≠i} u_ij
    sq = torch.zeros((), dtype=x.dtype, device=x.device)  # Σ_{i≠j} u_ij²
    for i in range(0, n, chunk):
        u = imq_stein_kernel(x[i : i + chunk], s[i : i + chunk], x, s, c, beta)  # [b, n]
        idx = torch.arange(u.shape[0], device=x.device)
        u[idx, i + idx] = 0.0  # drop the diagonal u(x_i, x_i)
        rows[i : i + chunk] = u.sum(1)
        sq = sq + (u * u).sum()
    pairs = n * (n - 1)
    value = rows.sum() / pairs
    row_means = rows / (n - 1)
    var_pairs = (sq / pairs - value**2).clamp_min(0)
    se = torch.sqrt(4 / n * row_means.var() + 2 / pairs * var_pairs)
    return float(value), float(se)


def model_ksd(energy_fn: nn.Module, samples: Tensor, max_points: int = 2000,
              generator: torch.Generator | None = None, c: float = 1.0) -> tuple[float, float]:
    """(KSD², se) of samples [N, *event] against the model's score s = −∇ₓE_θ (at most
    max_points samples, drawn without replacement with ``generator``); NaNs with < 3 samples."""
    if samples.shape[0] > max_points:
        g = generator if generator is not None else torch.Generator().manual_seed(0)
        idx = torch.randperm(samples.shape[0], generator=g)[:max_points]
        samples = samples[idx.to(samples.device)]
    if samples.shape[0] < 3:
        return math.nan, math.nan
    _, grad = energy_and_grad(energy_fn, samples)  # ∇ₓE [n, *event]
    return ksd_with_se(samples, -grad, c=c)
