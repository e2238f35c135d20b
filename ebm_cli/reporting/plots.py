"""Matplotlib figures of a 2-D model: samples over data, the energy landscape, chain traces.

Every figure has labelled axes, legends outside the data (below the panels), colour bars as
tall as their image, and is drawn at :data:`DPI`: TensorBoard stores a figure at the figure's
own dpi, so its images match the saved PNGs (Reporter.figure saves at 110 dpi).
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from mpl_toolkits.axes_grid1 import make_axes_locatable  # noqa: E402
from torch import nn  # noqa: E402

from ebm_cli.evaluation.quadrature import energy_on_grid, grid_2d  # noqa: E402
from ebm_cli.reporting.image_plots import DPI, legend_below  # noqa: E402

Bounds = tuple[tuple[float, float], ...]
PANEL = 4.4  # inches: the width of one square-ish panel


def _panel_height(bounds: Bounds, width: float = PANEL) -> float:
    """The height of a panel of ``width`` that shows ``bounds`` at equal aspect (clamped)."""
    (x0, x1), (y0, y1) = bounds[0], bounds[1]
    return width * float(np.clip((y1 - y0) / max(x1 - x0, 1e-12), 0.4, 1.6))


def label_axes(ax: plt.Axes) -> None:
    ax.set_xlabel("x[0]")
    ax.set_ylabel("x[1]")


def samples_figure(data: np.ndarray, samples: np.ndarray, bounds: Bounds, title: str) -> Figure:
    """Model samples [N, 2] scattered over data points [M, 2]."""
    fig, ax = plt.subplots(figsize=(PANEL + 0.6, _panel_height(bounds) + 1.2), dpi=DPI,
                           layout="constrained")
    ax.scatter(data[:, 0], data[:, 1], s=3, alpha=0.3, c="tab:blue", label="data")
    ax.scatter(samples[:, 0], samples[:, 1], s=3, alpha=0.5, c="tab:red", label="model samples")
    ax.set_xlim(*bounds[0])
    ax.set_ylim(*bounds[1])
    ax.set_aspect("equal")
    label_axes(ax)
    legend_below(fig, [ax])
    ax.set_title(title)
    return fig


def energy_figure(energy_fn: nn.Module, bounds: Bounds, n: int = 200) -> Figure:
    """Heat maps of E(x) and of the normalised density exp(−E)/Z on the box (Z by quadrature)."""
    points, area = grid_2d(bounds, n)
    energy = energy_on_grid(energy_fn, points)  # [n*n] float64
    log_density = -energy - (torch.logsumexp(-energy, 0) + np.log(area))
    extent = (*bounds[0], *bounds[1])
    fig, axes = plt.subplots(1, 2, figsize=(2 * PANEL + 1.4, _panel_height(bounds) + 0.9),
                             dpi=DPI)
    for ax, values, title, unit in (
        (axes[0], energy, "energy E(x)", "E(x)"),
        (axes[1], log_density.exp(), "density exp(−E)/Z", "p(x)"),
    ):
        im = ax.imshow(
            values.reshape(n, n).numpy(), origin="lower", extent=extent, cmap="viridis",
            aspect="equal",
        )
        ax.set_title(title)
        label_axes(ax)
        # a colour bar as tall as the image itself, whatever the aspect of the box
        cax = make_axes_locatable(ax).append_axes("right", size="5%", pad=0.08)
        fig.colorbar(im, cax=cax, label=unit)
    fig.tight_layout()
    return fig


def trace_figure(trace: np.ndarray, n_chains: int = 4) -> Figure:
    """Trace plots of the first coordinates of a few chains; trace [T, B, D]."""
    d = min(trace.shape[2], 2)
    fig, axes = plt.subplots(d, 1, figsize=(7, 1.9 * d + 0.9), squeeze=False, dpi=DPI,
                             layout="constrained", sharex=True)
    for i in range(d):
        lines = axes[i, 0].plot(trace[:, :n_chains, i], lw=0.7)
        axes[i, 0].set_ylabel(f"x[{i}]")
        if i == 0:
            for c, line in enumerate(lines):
                line.set_label(f"chain {c}")
    axes[-1, 0].set_xlabel("step")
    axes[0, 0].set_title(f"trace of {min(n_chains, trace.shape[1])} chains")
    legend_below(fig, axes)
    return fig


def chains_figure(
    energy_fn: nn.Module, start: np.ndarray, runs: dict[str, np.ndarray], bounds: Bounds,
    n_paths: int = 6, path_steps: int = 60,
) -> Figure:
    """The target density with the chains' base distribution, then one panel per sampler with
    the first ``path_steps`` steps of a few chains and the final states.

    start [B, 2]; runs: name -> trace [T, C, 2].
    """
    n = 200
    points, _ = grid_2d(bounds, n)
    density = torch.exp(-energy_on_grid(energy_fn, points)).reshape(n, n).numpy()
    mesh = np.meshgrid(np.linspace(*bounds[0], n), np.linspace(*bounds[1], n))
    width = 3.8
    fig, axes = plt.subplots(1, 1 + len(runs), dpi=DPI, layout="constrained",
                             figsize=(width * (1 + len(runs)), _panel_height(bounds, width) + 1.3))
    for ax in axes:
        ax.contourf(*mesh, density, levels=20, cmap="Blues")
        ax.set_xlim(*bounds[0])
        ax.set_ylim(*bounds[1])
        ax.set_aspect("equal")
        label_axes(ax)
    axes[0].scatter(start[:, 0], start[:, 1], s=3, c="tab:orange", alpha=0.5, label="chain starts")
    axes[0].set_title("target density and base distribution", fontsize=10)
    for ax, (name, trace) in zip(axes[1:], runs.items()):
        final = trace[-1]
        ax.scatter(final[:, 0], final[:, 1], s=3, c="tab:red", alpha=0.4, label="final states")
        for c in range(min(n_paths, trace.shape[1])):
            path = np.concatenate([start[c : c + 1], trace[:path_steps, c]])
            ax.plot(path[:, 0], path[:, 1], "-", lw=0.8, color="k", alpha=0.7,
                    label=f"paths (first {path_steps} steps)" if c == 0 else None)
        ax.set_title(f"{name}: {trace.shape[0]} steps", fontsize=10)
    legend_below(fig, axes)
    return fig


def covering_box(bounds: Bounds, *point_sets: np.ndarray, margin: float = 0.5) -> Bounds:
    """The box ``bounds`` grown to hold every point of the given [N, 2] arrays."""
    lo = np.array([b[0] for b in bounds], dtype=float)
    hi = np.array([b[1] for b in bounds], dtype=float)
    for pts in point_sets:
        finite = pts[np.isfinite(pts).all(1)]
        if finite.size:
            lo = np.minimum(lo, finite.min(0) - margin)
            hi = np.maximum(hi, finite.max(0) + margin)
    return tuple((float(a), float(b)) for a, b in zip(lo, hi))
