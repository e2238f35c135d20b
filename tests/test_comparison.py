"""The sweep's comparison figure (ebm_cli/reporting/comparison.py), from job directories alone."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest

from ebm_cli.reporting import comparison


def _job(root: Path, name: str, samples: np.ndarray | None = None,
         data: np.ndarray | None = None) -> Path:
    job = root / name
    job.mkdir()
    if samples is not None:
        np.save(job / comparison.SAMPLES_FILE, samples)
    if data is not None:
        np.save(job / comparison.DATA_FILE, data)
    return job


def test_untrusted_files_leave_a_note_not_an_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    good = comparison.panel_of(_job(tmp_path, "good", rng.normal(size=(50, 2)),
                                    rng.normal(size=(80, 2))), "#0 sampler=mh")
    assert good.samples.shape == (50, 2) and good.data.shape == (80, 2) and good.note == ""
    missing = comparison.panel_of(_job(tmp_path, "missing"), "#1")
    assert missing.samples is None and missing.note == "no samples.npy"
    pickled = _job(tmp_path, "pickled")
    np.save(pickled / comparison.SAMPLES_FILE, np.array([{"a": 1}], dtype=object),
            allow_pickle=True)
    assert "unreadable" in comparison.panel_of(pickled, "#2").note  # never unpickled
    text = _job(tmp_path, "text", np.array([["a", "b"]]))
    assert "not an array of points" in comparison.panel_of(text, "#3").note
    mismatched = comparison.panel_of(_job(tmp_path, "mismatch", rng.normal(size=(5, 2)),
                                          rng.normal(size=(5, 3))), "#4")
    assert mismatched.data is None  # data of another shape is not drawn under the samples
    failed = comparison.panel_of(_job(tmp_path, "failed"), "#5", "sampler.step_size must be > 0")
    assert failed.note == "failed: sampler.step_size must be > 0"


def test_two_d_panels_share_axes_and_keep_the_legend_off_the_data() -> None:
    rng = np.random.default_rng(1)
    data = rng.normal(size=(500, 2))
    panels = [comparison.Panel("#0 sampler=mh", rng.normal(size=(300, 2)) * 0.5, data),
              comparison.Panel("#1 sampler=hmc", rng.normal(size=(300, 2)) + 3.0, data),
              comparison.Panel("#2 sampler=mala", None, None, "failed: boom")]
    fig = comparison.comparison_figure(panels, "sweep")
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["#0 sampler=mh", "#1 sampler=hmc",
                                              "#2 sampler=mala"]
    assert axes[0].get_xlim() == axes[1].get_xlim() and axes[0].get_ylim() == axes[1].get_ylim()
    lo, hi = axes[0].get_xlim()
    assert lo < np.percentile(data[:, 0], 1) and hi > 3.0  # both jobs' points are in view
    assert axes[0].get_xlabel() == "x[0]" and axes[0].get_ylabel() == "x[1]"
    assert all(ax.get_legend() is None for ax in axes) and len(fig.legends) == 1
    fig.canvas.draw()
    legend_box = fig.legends[0].get_window_extent()
    assert all(not legend_box.overlaps(ax.get_window_extent()) for ax in axes[:2])
    assert "failed: boom" in [t.get_text() for t in axes[2].texts]
    plt.close(fig)


def test_image_samples_become_one_grid_per_job() -> None:
    rng = np.random.default_rng(2)
    data = rng.uniform(0, 16, size=(10, 1, 8, 8))
    panels = [comparison.Panel(f"#{i}", rng.uniform(0, 16, size=(40, 1, 8, 8)), data)
              for i in range(2)]
    fig = comparison.comparison_figure(panels, "digits")
    for ax in fig.axes:
        (image,) = ax.get_images()
        grid = image.get_array()
        assert grid.shape == (6 * 9 - 1, 6 * 9 - 1)  # 36 tiles of 8x8 with 1-pixel gaps
        assert 0.0 <= grid.min() and grid.max() <= 1.0
    plt.close(fig)


@pytest.mark.parametrize("n, grid", [(1, (1, 1)), (4, (1, 4)), (5, (2, 4)), (9, (3, 4))])
def test_at_most_four_panels_a_row(n: int, grid: tuple[int, int]) -> None:
    assert comparison._grid(n) == grid
