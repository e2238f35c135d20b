"""Figures a user reads (ebm_cli/reporting/plots.py, image_plots.py): labelled axes, legends
off the data, colour bars as tall as their image, and TensorBoard images at the saved dpi."""

from __future__ import annotations

from collections.abc import Iterator

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from torch.utils.tensorboard._utils import figure_to_image

from ebm_cli.reporting import image_plots, plots

BOUNDS = ((-4.0, 4.0), (-2.0, 2.0))


class Quadratic(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * (x**2).sum(-1)


@pytest.fixture(scope="module")
def figures() -> Iterator[dict[str, Figure]]:
    """Every figure once, drawn (closed after the module's tests)."""
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(200, 2))
    figs = {
        "samples": plots.samples_figure(pts, pts + 0.1, BOUNDS, "samples"),
        "energy": plots.energy_figure(Quadratic(), BOUNDS, n=24),
        "trace": plots.trace_figure(rng.normal(size=(30, 6, 2))),
        "chains": plots.chains_figure(Quadratic(), pts[:16], {"mh": rng.normal(size=(20, 8, 2))},
                                      ((-3.0, 3.0), (-3.0, 3.0))),
        "histogram": image_plots.energy_histogram_figure(rng.normal(size=100),
                                                         rng.normal(size=80), "energies"),
    }
    for fig in figs.values():
        fig.canvas.draw()
    yield figs
    for fig in figs.values():
        plt.close(fig)


def test_every_axis_is_labelled(figures: dict[str, Figure]) -> None:
    panels = {
        "samples": figures["samples"].axes,
        "energy": [ax for ax in figures["energy"].axes if ax.get_images()],  # not the bars
        "chains": figures["chains"].axes,
        "histogram": figures["histogram"].axes,
    }
    for name, axes in panels.items():
        assert axes, name
        for ax in axes:
            assert ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_title())
    trace = figures["trace"].axes  # one x axis shared by the coordinates, labelled below
    assert [ax.get_ylabel() for ax in trace] == ["x[0]", "x[1]"]
    assert trace[-1].get_xlabel() == "step"


def test_legends_do_not_cover_the_data(figures: dict[str, Figure]) -> None:
    for name in ("samples", "trace", "chains"):
        fig = figures[name]
        assert len(fig.legends) == 1, name
        box = fig.legends[0].get_window_extent()
        assert all(not box.overlaps(ax.get_window_extent()) for ax in fig.axes), name
        assert all(ax.get_legend() is None for ax in fig.axes), name
    (ax,) = figures["histogram"].axes  # inside, where the bars leave room, and see-through
    assert ax.get_legend()._loc == 0 and ax.get_legend().get_frame().get_alpha() == 0.8


def test_colour_bars_are_as_tall_as_their_image(figures: dict[str, Figure]) -> None:
    fig = figures["energy"]
    images = [ax for ax in fig.axes if ax.get_images()]
    bars = [ax for ax in fig.axes if not ax.get_images()]
    assert len(images) == len(bars) == 2
    for image, bar in zip(images, bars):
        a, b = image.get_window_extent(), bar.get_window_extent()
        assert abs(a.height - b.height) <= 0.01 * a.height
        assert b.x0 >= a.x1 and b.y0 == pytest.approx(a.y0, abs=1.0)
        assert bar.get_ylabel() in ("E(x)", "p(x)")


def test_tensorboard_images_have_the_saved_resolution(figures: dict[str, Figure]) -> None:
    """Torch's add_figure renders at the figure's dpi: the saved dpi (110), 500–1400 px wide."""
    for name, fig in figures.items():
        assert fig.dpi == image_plots.DPI, name
        assert 500 <= fig.get_size_inches()[0] * fig.dpi <= 1400, name
    fig = figures["samples"]
    width, height = fig.get_size_inches() * fig.dpi
    array = figure_to_image(fig, close=False)  # what SummaryWriter.add_figure logs, [C, H, W]
    assert array.shape[1:] == (int(height), int(width))
