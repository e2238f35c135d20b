"""log Z_θ of a 2-D energy by quadrature on a grid, and the held-out NLL that follows."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def grid_2d(bounds: tuple[tuple[float, float], ...], n: int) -> tuple[Tensor, float]:
    """Cell centres of an n×n grid over the box ``bounds`` -> ([n*n, 2], cell area)."""
    (x0, x1), (y0, y1) = bounds
    hx, hy = (x1 - x0) / n, (y1 - y0) / n
    xs = x0 + hx * (torch.arange(n, dtype=torch.float64) + 0.5)
    ys = y0 + hy * (torch.arange(n, dtype=torch.float64) + 0.5)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1), hx * hy


@torch.no_grad()
def energy_on_grid(
    energy_fn: nn.Module, points: Tensor, chunk: int = 65536
) -> Tensor:
    """E at grid points [M, 2] -> [M] (float64), evaluated in chunks in the energy's dtype."""
    p = next(iter(energy_fn.parameters()), None)
    dtype = p.dtype if p is not None else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    out = [
        energy_fn(points[i : i + chunk].to(device=device, dtype=dtype)).double().cpu()
        for i in range(0, points.shape[0], chunk)
    ]
    return torch.cat(out)


def log_partition_2d(
    energy_fn: nn.Module, bounds: tuple[tuple[float, float], ...], n: int = 400
) -> Tensor:
    """log Z = log ∫_box exp(−E(x)) dx by the midpoint rule on an n×n grid (0-d float64).

    The box must hold (almost) all of the model's mass; mass outside it is not counted.
    """
    points, area = grid_2d(bounds, n)
    energy = energy_on_grid(energy_fn, points)
    return torch.logsumexp(-energy, dim=0) + math.log(area)


@torch.no_grad()
def nll(energy_fn: nn.Module, x: Tensor, log_z: Tensor) -> Tensor:
    """Mean negative log-likelihood −(1/N) Σ log p_θ(x_i) = mean E(x) + log Z, in nats (0-d)."""
    p = next(iter(energy_fn.parameters()), None)
    if p is not None:
        x = x.to(device=p.device, dtype=p.dtype)
    return energy_fn(x).double().mean().cpu() + log_z


def log_partition_converged(
    energy_fn: nn.Module, bounds: tuple[tuple[float, float], ...], n: int = 200
) -> Tensor:
    """|log Z(n) − log Z(2n)| (0-d float64): how much halving the grid spacing moves log Z.

    The midpoint rule converges very fast for smooth integrands whose mass lies inside the box,
    so a change < 1e-3 means log Z(2n) is accurate to well below that. Measured on
    two_gaussians with the default n = 200: 2e-8 for the true energy and ≤ 1.5e-7 for 128×3 MLP
    energies trained by MLE, NCE and score matching (n = 50 still gives ≤ 3e-6); sharper
    learned energies need a larger n.
    """
    coarse = log_partition_2d(energy_fn, bounds, n)
    fine = log_partition_2d(energy_fn, bounds, 2 * n)
    return (coarse - fine).abs()


# Grid per axis of the held-out NLL logged during training (``eval_every``): 100² = 10⁴ energy
# evaluations. The midpoint rule on smooth energies converges so fast that this coarse grid
# agrees with the final 2n-grid value to far below the NLL's own standard error (measured on
# two_gaussians: n = 50 already moves log Z by ≤ 3e-6, see log_partition_converged).
CURVE_GRID = 100


@torch.no_grad()
def held_out_nll(energy_fn: nn.Module, test: Tensor,
                 bounds: tuple[tuple[float, float], ...], n: int = CURVE_GRID) -> float:
    """Mean E(test) + log Z (nats) with log Z on an n×n grid, for test [N, 2].

    Evaluated with the energy in eval mode (e.g. spectral norm does no power iteration), so
    the training state is not touched, and without random numbers: a resumed run logs the
    same values as one that never stopped.
    """
    was_training = energy_fn.training
    energy_fn.eval()
    try:
        return float(nll(energy_fn, test, log_partition_2d(energy_fn, bounds, n)))
    finally:
        energy_fn.train(was_training)
