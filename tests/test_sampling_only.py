"""``trainer=none`` (ebm_cli/trainers/sampling.py): what it reports while it samples."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_faults import _main_in_process
from torch import Tensor, nn

from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.langevin import MALA, Langevin
from ebm_cli.samplers.mh import IndependenceMH, RandomWalkMH
from ebm_cli.samplers.stats import (
    divergence_stats,
    sampler_stats,
    transitions_stats,
)
from ebm_cli.samplers.tempering import ParallelTempering
from ebm_cli.trainers.sampling import SamplingOnly

torch.set_num_threads(1)


class StandardNormal(nn.Module):
    """E(x) = ½‖x‖² on R²: under the target E ~ ½χ²₂, mean 1 and variance 1."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x.pow(2).sum(-1)


SAMPLERS = {
    "mh": RandomWalkMH(step_size=1.0),
    "independence_mh": IndependenceMH(scale=1.5),
    "langevin": Langevin(step_size=0.003),  # lazy: the state's energy is left unevaluated
    "mala": MALA(step_size=0.5),
    "hmc": HMC(step_size=0.3, n_leapfrog=5),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_reported_energy_is_that_of_the_target(name: str) -> None:
    # Chains start at the target N(0, I) (init_loc 0, init_scale 1), so every step is stationary
    # and the 2048 chains are independent: the reported mean energy is 1 ± 1/√2048 (sd), and
    # ULA's bias at η = 0.003 (variance 1/(1 − η/2)) is 0.0015. Tolerance 4 sds.
    n = 2048
    run = SamplingOnly(StandardNormal(), SAMPLERS[name], (2,), n_chains=n,
                       warmup_steps=0, trace_chains=16)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        stats = run.step(g)
    assert abs(float(stats["energy/samples"]) - 1.0) < 4 / math.sqrt(n)
    assert 0 < float(stats["sampler/acceptance_rate"]) <= 1


def test_divergent_energy_errors_are_counted_not_averaged() -> None:
    # A divergent ΔH may be ±inf or NaN (a rejection, house rule 4): it is left out of the mean
    # |ΔH| and counted, so every statistic stays finite.
    energy_error = torch.tensor([0.5, math.inf, math.nan, -1.5, -math.inf])
    is_divergent = torch.tensor([False, True, True, False, True])
    stats = divergence_stats(energy_error, is_divergent)
    assert float(stats["sampler/abs_energy_error"]) == pytest.approx(1.0)  # (0.5 + 1.5) / 2
    assert float(stats["sampler/divergent_fraction"]) == pytest.approx(3 / 5)
    stats = divergence_stats(energy_error[1:3], is_divergent[1:3])  # all diverged
    assert float(stats["sampler/abs_energy_error"]) == 0.0
    assert float(stats["sampler/divergent_fraction"]) == 1.0


def test_stats_of_k_transitions_are_the_mean_of_each_transitions_stats() -> None:
    """transitions_stats (MLE's k steps, from the stacked fields) = the key-wise mean of
    sampler_stats per transition, for HMC with divergences in some steps, ULA and tempering."""
    target = StandardNormal()
    # HMC beyond its stability limit (ε = 2.05 > 2): 1–30 of the 64 chains diverge per step
    for sampler in (HMC(step_size=2.05, n_leapfrog=6), Langevin(step_size=0.1),
                    ParallelTempering(MALA(step_size=0.3), 3)):  # swap rates per pair too
        g = torch.Generator().manual_seed(0)
        state = sampler.init(target, 3.0 * torch.randn(64, 2, generator=g, dtype=torch.float64))
        infos = []
        for _ in range(5):
            state, info = sampler.step(target, state, g)
            infos.append(info)
        each = [sampler_stats(info) for info in infos]
        expected = {key: torch.stack([s[key] for s in each]).mean() for key in each[0]}
        got = transitions_stats(infos)
        assert set(got) == set(expected)
        for key, value in expected.items():
            torch.testing.assert_close(got[key].double(), value.double(), rtol=1e-12, atol=0)
    assert any(k.startswith("sampler/swap_rate/") for k in expected)  # the last: tempering


def test_sampling_run_totals_the_divergences_it_logs() -> None:
    # HMC far beyond its stability limit (ε = 5 > 2·sd): every transition diverges (|ΔH| ~ 1e13
    # after 10 leapfrog steps, for every chain: no jittered length), is rejected and counted;
    # every statistic stays finite.
    run = SamplingOnly(StandardNormal(), HMC(step_size=5.0, n_leapfrog=10,
                                             jitter_n_leapfrog=False), (2,), n_chains=8,
                       warmup_steps=0, trace_chains=2)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        stats = run.step(g)
        assert all(torch.isfinite(v) for v in stats.values()), stats
    assert float(stats["sampler/divergent_fraction"]) == 1.0
    assert float(stats["sampler/abs_energy_error"]) == 0.0
    assert int(run.divergences) == 3 * 8
    assert run.diagnostics()["divergences"] == 24


def test_hmc_on_rosenbrock_counts_divergences_and_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The README's `ebm-train trainer=none energy=rosenbrock sampler=hmc`, few steps: after
    # warm-up some trajectories still diverge in the steep valley (|ΔH| = inf), are rejected and
    # counted; before the fix the first one stopped the run with a non-finite statistic.
    run_dir = tmp_path / "run"
    proc = _main_in_process(
        [f"hydra.run.dir={run_dir}", "trainer=none", "energy=rosenbrock", "sampler=hmc",
         "trainer.steps=20", "trainer.warmup_steps=100", "trainer.n_chains=256",
         "trainer.trace_chains=64", "log_every=1", "image_every=0", "eval.mmd_points=200"],
        tmp_path, monkeypatch)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "non-finite" not in out, out
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["divergences"] > 0, metrics
    assert all(math.isfinite(v) for v in metrics.values())
    # every logged statistic (log_every=1: all steps) is finite, and divergences were logged
    events = EventAccumulator(str(run_dir)).Reload()
    tags = events.Tags()["scalars"]
    assert "sampler/abs_energy_error" in tags and "sampler/divergent_fraction" in tags
    for tag in tags:
        values = [e.value for e in events.Scalars(tag)]
        assert all(math.isfinite(v) for v in values), (tag, values)
    fractions = [e.value for e in events.Scalars("sampler/divergent_fraction")]
    assert len(fractions) == 20 and sum(fractions) > 0
