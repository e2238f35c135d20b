"""Matplotlib figures of a 2-D model: samples over data, the energy landscape, chain traces."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch import nn  # noqa: E402

from ebm_cli.evaluation.quadrature import energy_on_grid, grid_2d  # noqa: E402

Bounds = tuple[tuple[float, float], ...]


def samples_figure(data: np.ndarray, samples: np.ndarray, bounds: Bounds, title: str) -> Figure:
    """Model samples [N, 2] scattered over data points [M, 2]."""
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(data[:, 0], data[:, 1], s=3, alpha=0.3, c="tab:blue", label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=3, alpha=0.5, c="tab:red", label="model samples")
    ax.set_xlim(*bounds[0])
    ax.set_ylim(*bounds[1])
    ax.set_aspect("equal")
    ax.legend(loc="upper right", markerscale=4)
    ax.set_title(title)
    fig.tight_layout()
    return fig


def energy_figure(energy_fn: nn.Module, bounds: Bounds, n: int = 200) -> Figure:
    """Heat maps of E(x) and of the normalised density exp(−E)/Z on the box (Z by quadrature)."""
    points, area = grid_2d(bounds, n)
    energy = energy_on_grid(energy_fn, points)  # [n*n] float64
    log_density = -energy - (torch.logsumexp(-energy, 0) + np.log(area))
    extent = (*bounds[0], *bounds[1])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    for ax, values, title in (
        (axes[0], energy, "energy E(x)"),
        (axes[1], log_density.exp(), "density exp(−E)/Z"),
    ):
        im = ax.imshow(
            values.reshape(n, n).numpy(), origin="lower", extent=extent, cmap="viridis",
            aspect="equal",
        )
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def trace_figure(trace: np.ndarray, n_chains: int = 4) -> Figure:
    """Trace plots of the first coordinates of a few chains; trace [T, B, D]."""
    d = min(trace.shape[2], 2)
    fig, axes = plt.subplots(d, 1, figsize=(8, 2.2 * d), squeeze=False)
    for i in range(d):
        axes[i, 0].plot(trace[:, :n_chains, i], lw=0.7)
        axes[i, 0].set_ylabel(f"x[{i}]")
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    return fig
