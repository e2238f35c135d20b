"""Figures of a run on its logging cadence and at the end: samples over the data, the energy
landscape (2-D), energy histograms and image grids (D > 2).

At the end, the held-out points drawn beside the samples are saved as ``data.npy`` (the data's
original units, like ``samples.npy``; at most :data:`SAVED_DATA` vectors (fewer in high
dimension) or :data:`SAVED_IMAGES` images), for the comparison figure of a sweep (comparison.py).
"""

from __future__ import annotations

import numpy as np
import torch

from ebm_cli.build import Parts
from ebm_cli.reporting.report import Reporter

PREVIEW_GRID = 100  # grid points per axis of the energy images logged during training
SAVED_DATA = 2000
SAVED_IMAGES = 64
SAVED_VALUES = 200_000  # vectors of high dimension: at most this many numbers (0.8 MB)
DATA_FILE = "data.npy"


def save_data(reporter: Reporter, parts: Parts) -> None:
    """data.npy: held-out points [M, D] or images [M, C, H, W] in the data's original units."""
    ds = parts.dataset
    per_point = max(1, ds.test[0].numel())
    n = SAVED_IMAGES if ds.is_image else max(1, min(SAVED_DATA, SAVED_VALUES // per_point))
    points = ds.to_original(ds.test[:n].double()).float().cpu().numpy()
    np.save(reporter.run_dir / DATA_FILE, points)


def plot(reporter: Reporter, parts: Parts, samples: torch.Tensor | None, step: int,
          final: bool) -> None:
    from ebm_cli.reporting import plots  # matplotlib loads where a figure is drawn

    ds = parts.dataset
    if final:
        save_data(reporter, parts)
    if ds.dim != 2:
        plot_high_dim(reporter, parts, samples, step, final)
        return
    if samples is not None:
        fig = plots.samples_figure(
            ds.test.numpy(), samples.detach().cpu().double().numpy(), ds.bounds,
            f"samples at step {step}",
        )
        reporter.figure("samples", fig, step, "samples.png" if final else None)
    # During training a coarser grid: the image costs ~0.2 s instead of ~0.3 s (benchmarks/
    # bench_logging.py); the final energy.png keeps the fine one.
    grid = {} if final else {"n": PREVIEW_GRID}
    fig = plots.energy_figure(parts.energy_fn, ds.bounds, **grid)
    reporter.figure("energy_landscape", fig, step, "energy.png" if final else None)


def plot_high_dim(reporter: Reporter, parts: Parts, samples: torch.Tensor | None, step: int,
                   final: bool) -> None:
    """D ≠ 2: energy histograms of held-out data vs samples; for images [C, H, W], a grid of
    samples beside a grid of held-out data (both in the data's original units)."""
    from ebm_cli.reporting import image_plots  # matplotlib loads where a figure is drawn

    if samples is None:
        return
    ds, x = parts.dataset, samples.detach()
    with torch.no_grad():
        e_data = parts.energy_fn(ds.test[:1000].to(x)).double().cpu().numpy()
        e_samples = parts.energy_fn(x).double().cpu().numpy()
    fig = image_plots.energy_histogram_figure(e_data, e_samples, f"energies at step {step}")
    reporter.figure("energy_histogram", fig, step, "energy_hist.png" if final else None)
    if ds.is_image:
        fig = image_plots.samples_grid_figure(
            ds.to_original(x.cpu().double()).numpy(), ds.to_original(ds.test.double()).numpy(),
            f"samples at step {step}",
        )
        reporter.figure("samples", fig, step, "samples.png" if final else None)


