"""Warm-up adaptation: dual averaging (Hoffman & Gelman 2014, Alg. 5), Stan's windows, warmup()."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from ebm_cli.evaluation.diagnostics import mcse_mean
from ebm_cli.samplers.adaptation import (
    DualAveraging,
    StepSizeAdaptation,
    adaptation_windows,
    warmup,
)
from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.langevin import MALA, Langevin
from ebm_cli.samplers.mh import IndependenceMH, RandomWalkMH

DT = torch.float64
Z = 4.0  # tolerance in Monte Carlo standard errors


class DiagonalGaussian(nn.Module):
    """E(x) = ½ Σ (x_i / s_i)², x [B, D] -> [B]."""

    def __init__(self, scales: Tensor) -> None:
        super().__init__()
        self.register_buffer("scales", scales)

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * ((x / self.scales) ** 2).sum(-1)


def test_dual_averaging_update_follows_algorithm_5() -> None:
    da = DualAveraging(0.8)
    state = da.init(0.5)
    assert float(da.current(state)) == pytest.approx(0.5)
    assert float(da.final(state)) == pytest.approx(0.5)
    state = da.update(state, torch.full((16,), 0.3))
    # t = 1: H̄ = (δ − α)/(1 + t0) = 0.5/11; log ε = log(10·0.5) − √1/0.05 · H̄; ε̄ = ε (w = 1)
    log_eps = math.log(5.0) - (1 / 0.05) * (0.5 / 11)
    assert float(state.log_step_size) == pytest.approx(log_eps)
    assert float(da.final(state)) == pytest.approx(math.exp(log_eps))
    assert all(isinstance(v, Tensor) and v.ndim == 0 for v in state)


def test_dual_averaging_moves_the_step_size_the_right_way() -> None:
    """Acceptance above the target grows ε, below shrinks it (compare with always-on-target,
    whose iterate settles at μ = log 10ε₀)."""
    da = DualAveraging(0.6)
    runs = {}
    for alpha in (0.9, 0.6, 0.3):
        state = da.init(1.0)
        for _ in range(50):
            state = da.update(state, torch.full((8,), alpha, dtype=DT))
        runs[alpha] = float(da.current(state))
    assert runs[0.6] == pytest.approx(10.0)
    assert runs[0.9] > runs[0.6] > runs[0.3]


def test_dual_averaging_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match=r"sampler.target_accept must be in \(0, 1\)"):
        DualAveraging(1.5)
    with pytest.raises(ValueError, match=r"sampler.kappa must be in \(0.5, 1\]"):
        DualAveraging(0.8, kappa=0.4)


def test_step_size_adaptation_is_dual_averaging_with_restarts() -> None:
    """The one mechanism (warm-up, MLE, AIS): per transition, ε_t of DualAveraging; after the
    transitions counted in ``restarts`` it restarts from ε̄ with μ = log(restart_shrink · ε̄);
    ``final`` gives a new sampler with ε̄, the old one untouched."""
    adaptation = StepSizeAdaptation(0.8, restarts={3, 5}, restart_shrink=10.0)
    da = DualAveraging(0.8)
    sampler = HMC(step_size=0.5)
    state, ref = adaptation.init(sampler), da.init(0.5)
    alphas = [0.9, 0.2, 0.5, 0.7, 0.95, 0.4, 0.6]
    for t, alpha in enumerate(alphas, start=1):
        tuned = adaptation.tuned(sampler, state)
        assert isinstance(tuned, HMC) and torch.equal(tuned.step_size, da.current(ref))
        state = adaptation.update(state, torch.full((4,), alpha, dtype=DT))
        ref = da.update(ref, torch.full((4,), alpha, dtype=DT))
        if t in (3, 5):
            ref = da.init(da.final(ref), shrink_factor=10.0)
        assert state.count == t and all(torch.equal(a, b) for a, b in zip(state.dual, ref))
    final = adaptation.final(sampler, state)
    assert torch.equal(final.step_size, da.final(ref)) and sampler.step_size == 0.5
    assert torch.equal(adaptation.step_size(state), da.current(ref))


def test_stan_windows() -> None:
    # 1000 steps: buffers 75 / 50, windows 25, 50, 100, 200 and the stretched last 500
    assert adaptation_windows(1000) == [(75, 100), (100, 150), (150, 250), (250, 450), (450, 950)]
    # too short for the default buffers: 15 % / 75 % / 10 %
    assert adaptation_windows(100) == [(15, 90)]
    assert adaptation_windows(10) == []


# (sampler, target scales, chains): RW-MH and MALA on an isotropic 2-D Gaussian; HMC with
# jitter on the 10-D Gaussian with scales 0.1…10 (step size and diagonal mass adapted).
CASES = [
    (RandomWalkMH(), torch.ones(2, dtype=DT)),
    (MALA(), torch.ones(2, dtype=DT)),
    # (trajectory length fixed: this tests dual averaging; ChEES has tests/test_trajectory.py)
    (HMC(n_leapfrog=5, jitter=0.2, adapt_trajectory=False), torch.logspace(-1, 1, 10, dtype=DT)),
]


@pytest.mark.parametrize("case", CASES, ids=["rw_mh", "mala", "hmc"])
def test_dual_averaging_reaches_the_target_acceptance(case) -> None:
    """After warm-up the fixed sampler accepts at target_accept to within Monte Carlo error.

    The achieved rate of one run varies with the warm-up's own randomness (ε̄ is an average
    of noisy iterates) as well as with the measurement, so the MC error is estimated from
    R = 8 independent replicates (2048 chains, 400 warm-up + 100 measured steps each): the mean
    over replicates must lie within Z·s/√R of δ, s their standard deviation. The spread s
    contains the measurement's own ESS-based MCSE, so s must be at least that (a sanity check
    of the replicate estimate)."""
    sampler, scales = case
    target = DiagonalGaussian(scales)
    rates, mcses = [], []
    for r in range(8):
        g = torch.Generator().manual_seed(1000 + r)
        x0 = torch.randn(2048, scales.numel(), generator=g, dtype=DT)
        adapted, state = warmup(sampler, target, sampler.init(target, x0), g, 400)
        accept = []
        for _ in range(100):
            state, info = adapted.step(target, state, g)
            accept.append(info.accept_prob)
        trace = torch.stack(accept)[..., None]  # [T, B, 1]
        rates.append(float(trace.mean()))
        mcses.append(float(mcse_mean(trace)[0]))
    rates_np = np.array(rates)
    s = rates_np.std(ddof=1)
    delta = sampler.target_accept
    assert abs(rates_np.mean() - delta) < Z * s / math.sqrt(len(rates)), (rates, delta)
    assert s > 0.5 * float(np.mean(mcses)), (mcses, s)


def test_hmc_warmup_adapts_mass_and_returns_a_new_fixed_sampler() -> None:
    scales = torch.tensor([0.1, 1.0, 10.0], dtype=DT)
    target = DiagonalGaussian(scales)
    sampler = HMC(n_leapfrog=5)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1024, 3, generator=g, dtype=DT)
    adapted, state = warmup(sampler, target, sampler.init(target, x0), g, 300)
    assert sampler.inv_mass is None and float(sampler.step_size) == 0.1  # untouched
    assert adapted.inv_mass.dtype == DT and adapted.inv_mass.shape == (3,)
    # variance over 1024 chains × the last window (≥ 100 steps): within a few % of s²
    ratio = adapted.inv_mass / scales**2
    assert ((ratio > 0.8) & (ratio < 1.25)).all(), ratio.tolist()
    assert isinstance(adapted.step_size, Tensor) and adapted.step_size.ndim == 0
    assert state.x.shape == (1024, 3)


@pytest.mark.parametrize("sampler", [Langevin(), IndependenceMH()], ids=["ula", "independence"])
def test_warmup_only_runs_samplers_that_are_not_step_size_adaptable(sampler) -> None:
    target = DiagonalGaussian(torch.ones(2, dtype=DT))
    g = torch.Generator().manual_seed(0)
    state = sampler.init(target, torch.zeros(16, 2, dtype=DT))
    adapted, new_state = warmup(sampler, target, state, g, 5)
    assert adapted is sampler
    assert not torch.equal(new_state.x, state.x)


def test_warmup_refuses_a_negative_length() -> None:
    target = DiagonalGaussian(torch.ones(2, dtype=DT))
    sampler = RandomWalkMH()
    state = sampler.init(target, torch.zeros(4, 2, dtype=DT))
    with pytest.raises(ValueError, match="n_steps must be an integer >= 0"):
        warmup(sampler, target, state, torch.Generator(), -1)
