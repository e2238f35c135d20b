"""One figure for a whole sweep: every job's samples side by side, titled by its overrides.

2-D (or vector) samples are scattered over the job's held-out data on axes shared by every
panel; image samples are shown as one grid per job. The arrays are each job's ``samples.npy``
and ``data.npy`` (figures.py), read with ``allow_pickle=False``: a job directory is untrusted
input, and a file that is missing, unreadable or not a numeric array leaves its panel with a note
instead of stopping the summary.
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ebm_cli.reporting.image_plots import DPI, image_grid, legend_below  # noqa: E402

SAMPLES_FILE = "samples.npy"
DATA_FILE = "data.npy"  # figures.DATA_FILE (not imported: that module pulls in torch)
MAX_COLUMNS = 4
MAX_POINTS = 2000  # per panel and kind
GRID_IMAGES = 36
TITLE_WIDTH = 34  # characters per title line


@dataclass
class Panel:
    """One job: its title, samples [N, D] or [N, C, H, W] (None: none to show), held-out data
    of the same shape (None: not saved) and a note (failed job, unreadable file)."""

    title: str
    samples: np.ndarray | None
    data: np.ndarray | None = None
    note: str = ""


def load_array(path: Path) -> tuple[np.ndarray | None, str]:
    """A numeric array [N, ...] with N ≥ 1 from an untrusted .npy file, else (None, why)."""
    if not path.is_file():
        return None, f"no {path.name}"
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        return None, f"{path.name} unreadable ({type(e).__name__})"
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "fiub" or array.ndim < 2 \
            or array.shape[0] == 0:
        return None, f"{path.name} is not an array of points"
    return array.astype(np.float64), ""


def panel_of(job_dir: Path, title: str, error: str = "") -> Panel:
    """The panel of one job directory (a failed job: its first error line as the note)."""
    samples, why = load_array(job_dir / SAMPLES_FILE)
    data, _ = load_array(job_dir / DATA_FILE)
    if data is not None and samples is not None and data.shape[1:] != samples.shape[1:]:
        data = None
    note = f"failed: {error}" if error else why
    return Panel(title, samples, data, note)


def _box(panels: list[Panel]) -> tuple[tuple[float, float], tuple[float, float]]:
    """Shared, square axis limits: the 0.5–99.5 % range of every panel's data and samples,
    grown by 10 % (a few far-off chains do not shrink every panel to a dot)."""
    arrays = [a[:MAX_POINTS, :2] for p in panels for a in (p.data, p.samples) if a is not None]
    pts = np.concatenate(arrays) if arrays else np.zeros((0, 2))
    pts = pts[np.isfinite(pts).all(1)]
    if pts.size == 0:
        return (-1.0, 1.0), (-1.0, 1.0)
    lo, hi = np.percentile(pts, 0.5, axis=0), np.percentile(pts, 99.5, axis=0)
    mid, half = (lo + hi) / 2, 0.55 * max(float(np.max(hi - lo)), 1e-6)
    return ((mid[0] - half, mid[0] + half), (mid[1] - half, mid[1] + half))


def _grid(n: int) -> tuple[int, int]:
    cols = min(n, MAX_COLUMNS)
    return math.ceil(n / cols), cols


def comparison_figure(panels: list[Panel], title: str) -> Figure:
    """All panels in one figure, ≤ 4 per row: images as grids, anything else as a scatter of
    the first two coordinates over the data (one legend for all, below the panels)."""
    images = any(p.samples is not None and p.samples.ndim == 4 for p in panels)
    rows, cols = _grid(len(panels))
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 3.6 * rows + 0.6), squeeze=False,
                             dpi=DPI, layout="constrained")
    box = None if images else _box(panels)
    lo, hi = _pixel_range(panels) if images else (0.0, 1.0)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, panel in zip(axes.flat, panels):
        ax.set_title(textwrap.fill(panel.title, TITLE_WIDTH), fontsize=9)
        if panel.samples is None or (images and panel.samples.ndim != 4):
            ax.text(0.5, 0.5, textwrap.fill(panel.note or "no samples", TITLE_WIDTH),
                    ha="center", va="center", transform=ax.transAxes, fontsize=8, color="tab:red")
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        if images:
            ax.imshow(image_grid(panel.samples[:GRID_IMAGES], lo=lo, hi=hi), cmap="gray",
                      vmin=0, vmax=1, interpolation="nearest")
            ax.axis("off")
            continue
        if panel.data is not None:
            d = panel.data[:MAX_POINTS]
            ax.scatter(d[:, 0], d[:, 1], s=2, alpha=0.3, c="tab:blue", label="held-out data")
        s = panel.samples[:MAX_POINTS]
        ax.scatter(s[:, 0], s[:, 1], s=2, alpha=0.5, c="tab:red", label="model samples")
        assert box is not None
        ax.set_xlim(*box[0])
        ax.set_ylim(*box[1])
        ax.set_aspect("equal", adjustable="box")
        ax.set_xlabel("x[0]")
        ax.set_ylabel("x[1]")
        if panel.samples.shape[1] > 2:
            ax.text(0.02, 0.98, f"first 2 of {panel.samples.shape[1]} coordinates",
                    transform=ax.transAxes, va="top", fontsize=7)
    if not images:
        legend_below(fig, axes)
    fig.suptitle(title)
    return fig


def _pixel_range(panels: list[Panel]) -> tuple[float, float]:
    """The pixel range shown: the saved data's (min, max), else the samples' 1–99 %."""
    data = [p.data for p in panels if p.data is not None and p.data.ndim == 4]
    if data:
        both = np.concatenate([d.ravel() for d in data])
        both = both[np.isfinite(both)]
        return float(both.min()), float(both.max())
    pix = np.concatenate([p.samples.ravel() for p in panels
                          if p.samples is not None and p.samples.ndim == 4])
    pix = pix[np.isfinite(pix)]
    if pix.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(pix, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def render(fig: Figure) -> np.ndarray:
    """The figure as RGB pixels [H, W, 3] uint8 at its own dpi (then closed)."""
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return pixels
