"""Matplotlib figures for data of any dimension: image grids (samples beside data) and energy
histograms (data vs samples), and what every figure shares (:data:`DPI`, :func:`legend_below`).
The 2-D figures are in plots.py."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Figures are drawn at this dpi, and TensorBoard stores a figure at its own dpi: its images
# then match the saved PNGs (Reporter.figure saves at 110 dpi) and are read at full size.
DPI = 110


def legend_below(fig: Figure, axes: list[Axes] | np.ndarray) -> None:
    """One legend for every labelled artist of ``axes``, below the panels (never on the data);
    for a figure with the constrained layout."""
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, label in zip(*ax.get_legend_handles_labels()):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=len(handles),
                   markerscale=4, frameon=False)


def image_grid(images: np.ndarray, n_rows: int | None = None, pad: int = 1,
               lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """Tile images [N, C, H, W] into one picture [rows·(H+pad), cols·(W+pad)(, C)] clamped to
    [lo, hi] and scaled to [0, 1]; 1 channel -> grey, 3 -> RGB, other counts -> first channel."""
    n, c, h, w = images.shape
    if n_rows is None:
        n_rows = max(1, math.isqrt(n))
    n_cols = math.ceil(n / n_rows)
    x = (np.clip(np.nan_to_num(images, nan=lo), lo, hi) - lo) / max(hi - lo, 1e-12)
    x = x[:, :3] if c == 3 else x[:, :1]
    grid = np.ones((x.shape[1], n_rows * (h + pad) - pad, n_cols * (w + pad) - pad))
    for i in range(n):  # a loop over the (≤ a few hundred) tiles of a picture, not over chains
        r, col = divmod(i, n_cols)
        grid[:, r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = x[i]
    return grid[0] if grid.shape[0] == 1 else grid.transpose(1, 2, 0)


def samples_grid_figure(samples: np.ndarray, data: np.ndarray, title: str, n: int = 100,
                        value_range: tuple[float, float] | None = None) -> Figure:
    """Model samples [N, C, H, W] (left) beside data [M, C, H, W] (right), ``n`` of each.

    value_range: the pixel range shown (default: the data's min and max); samples outside it
    are clamped for display.
    """
    lo, hi = value_range or (float(np.nanmin(data)), float(np.nanmax(data)))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.8), dpi=DPI, layout="constrained")
    for ax, imgs, name in ((axes[0], samples, "model samples"), (axes[1], data, "data")):
        ax.imshow(image_grid(imgs[:n], lo=lo, hi=hi), cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    fig.suptitle(title)
    return fig


def energy_histogram_figure(energy_data: np.ndarray, energy_samples: np.ndarray,
                            title: str) -> Figure:
    """Histograms of E on held-out data [N] and on model samples [M] (shared bins); samples
    of a model that fits sit where the data do. Non-finite energies are counted in the legend."""
    finite_d = energy_data[np.isfinite(energy_data)]
    finite_s = energy_samples[np.isfinite(energy_samples)]
    both = np.concatenate([finite_d, finite_s])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=DPI, layout="constrained")
    if both.size:
        lo, hi = np.percentile(both, [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 60)
        ax.hist(np.clip(finite_d, bins[0], bins[-1]), bins=bins, alpha=0.5, density=True,
                label=f"held-out data ({finite_d.size})")
        bad = energy_samples.size - finite_s.size
        label = f"model samples ({finite_s.size}" + (f", {bad} non-finite)" if bad else ")")
        ax.hist(np.clip(finite_s, bins[0], bins[-1]), bins=bins, alpha=0.5, density=True,
                label=label)
    ax.set_xlabel("E(x)")
    ax.set_ylabel("density")
    ax.legend(loc="best", framealpha=0.8)
    ax.set_title(title)
    return fig
