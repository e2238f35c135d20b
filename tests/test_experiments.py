"""The seed's figures as experiment configs, run through ``ebm-train`` (trainer=none)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli
from test_faults import _main_in_process


def test_fig1_mh_chains_from_far_away_reach_both_modes(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "fig1"
    proc = _main_in_process([f"hydra.run.dir={run_dir}", "+experiment=fig1_mh_two_gaussians",
                             "trainer.steps=1500", "trainer.n_chains=512"], tmp_path, monkeypatch)
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_digits_t1_recipe_runs_at_temperature_one_with_both_ais_directions(
        tmp_path: Path) -> None:
    """+experiment=digits_t1 shortened: MALA (exact, T = 1) negatives from persistent chains, a
    confined energy (energy.base_scale), and the AIS keys that make its bits/dim checkable."""
    run_dir = tmp_path / "t1"
    proc = run_cli([
        f"hydra.run.dir={run_dir}", "+experiment=digits_t1", "energy.channels=[4,8]",
        "trainer.steps=6", "trainer.warmup_steps=6", "trainer.n_chains=16",
        "trainer.batch_size=16", "trainer.sampler_steps=3", "log_every=3", "checkpoint_every=0",
        "eval.n_samples=64", "eval.sampler_steps=5", "eval.warmup=5", "eval.mmd_points=64",
        "eval.ais_chains=32", "eval.ais_steps=100",
    ], cwd=tmp_path, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics.get("sampler_temperature", 1.0) == 1.0  # MALA: no cold-noise option
    for key in ("log_z_ais", "log_z_ais_se", "ais_weight_ess", "log_z_ais_reverse",
                "log_z_ais_reverse_se", "ais_gap", "bits_per_dim", "bits_per_dim_reverse",
                "fd_pca", "classes_covered"):
        assert np.isfinite(metrics[key]), key
    assert 1 <= metrics["ais_weight_ess"] <= 32 and 1 <= metrics["ais_reverse_weight_ess"] <= 32
    assert np.load(run_dir / "samples.npy").shape == (64, 1, 8, 8)


@pytest.mark.slow
def test_rings_recipe_resolves_the_inner_rings(tmp_path: Path) -> None:
    """+experiment=rings at seed 1, where the defaults (256 data points and chains per update)
    leave the two inner rings as one blob (KL 0.46 with HMC). The recipe measured KL 0.040 at this
    seed and 0.037–0.041 over seeds 0–4 (configs/experiment/rings.yaml), with a standard error of
    ≈ 0.005 nats: 0.1 is far above the worst seed and far below the blob."""
    run_dir = tmp_path / "rings"
    proc = run_cli([f"hydra.run.dir={run_dir}", "+experiment=rings", "seed=1", "image_every=0"],
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["kl"] < 0.1, metrics
    samples = np.load(run_dir / "samples.npy")  # [1000, 2]
    radius = np.linalg.norm(samples, axis=1)
    # The data has 0.3 % of its mass in the gap between the two inner rings (radius 0.95–1.3,
    # ≥ 2.5 noise sds from both); the blob of the defaults put 14 % of the samples there, the
    # this recipe 1.1 % (seed 0).
    assert ((radius > 0.95) & (radius < 1.3)).mean() < 0.05
