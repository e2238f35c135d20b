"""The seed's figures as experiment configs, run through ``ebm-train`` (trainer=none)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from conftest import run_cli


def test_fig1_mh_chains_from_far_away_reach_both_modes(tmp_path: Path) -> None:
    run_dir = tmp_path / "fig1"
    proc = run_cli([f"hydra.run.dir={run_dir}", "+experiment=fig1_mh_two_gaussians",
                    "trainer.steps=1500", "trainer.n_chains=512"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    samples = np.load(run_dir / "samples.npy")  # [512, 2], chains started near (0, 8)
    assert samples.shape == (512, 2)
    left = (samples[:, 0] < 0).mean()
    # Both modes hold half the mass; a binomial fraction over 512 chains has sd 0.022, and the
    # chains choose a mode on the way down by symmetry: 0.5 ± 5 sd.
    assert abs(left - 0.5) < 0.11
    assert np.abs(samples[:, 1]).max() < 3.0  # no chain is still on its way down
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.1 < metrics["acceptance_rate"] < 0.9
    assert (run_dir / "samples.png").is_file() and (run_dir / "trace.png").is_file()


def test_fig3_hmc_reaches_the_rosenbrock_typical_set_before_mh(tmp_path: Path) -> None:
    run_dir = tmp_path / "fig3"
    proc = run_cli([f"hydra.run.dir={run_dir}", "+experiment=fig3_rosenbrock_mh_vs_hmc",
                    "trainer.steps=200", "trainer.n_chains=256"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # Same starts, same number of transitions: HMC's mean is much closer to the truth.
    assert metrics["HMC/mean_error"] < 0.5 * metrics["RandomWalkMH/mean_error"]
    assert metrics["HMC/rhat_max"] < metrics["RandomWalkMH/rhat_max"]
    assert (run_dir / "samples.png").is_file()
