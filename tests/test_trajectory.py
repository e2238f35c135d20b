"""HMC's trajectory length: ChEES (Hoffman, Radul & Sountsov 2021) in samplers/adaptation.py and
HMC.transition's per-chain lengths. float64 throughout."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from ebm_cli.samplers.adaptation import CHEES_LENGTH_FLOOR, ChEES, leapfrog_steps, warmup
from ebm_cli.samplers.base import Trajectory, TrajectoryAdaptable
from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.langevin import MALA

DT = torch.float64
Z = 4.0
# On N(0, I) the exact flow is x(t) = x cos t + p sin t, and E[(‖x(t)‖² − ‖x‖²)²] = 4D sin²t;
# with t = u·T, u ~ U(0, 1], ChEES(T) ∝ ½ − sin(2T)/(4T), maximal where tan 2T = 2T.
T_STAR = 4.493409457909064 / 2  # 2T = the first positive root of tan y = y
# HMC's default length_floor ½ (u ~ U(½, 1]): ChEES(T) ∝ ½ − (sin 2T − sin T)/(2T), maximal here
T_STAR_FLOOR = 2.014575


class StandardGaussian(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x.square().sum(-1)


def exact_trajectory(x: Tensor, t: Tensor, g: torch.Generator) -> Trajectory:
    """The exact Hamiltonian flow on N(0, I) for per-chain times t [B] (identity mass)."""
    p = torch.randn(x.shape, generator=g, dtype=DT)
    c, s = t.cos()[:, None], t.sin()[:, None]
    return Trajectory(x * c + p * s, -x * s + p * c, t)


def test_chees_gradient_has_the_sign_of_the_criterions_slope() -> None:
    """ĝ > 0 below the quarter period (longer trajectories move farther), < 0 beyond it up to
    the half period; each by more than Z standard errors of the chain average."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4096, 10, generator=g, dtype=DT)
    ones = torch.ones(4096, dtype=DT)
    chees = ChEES()
    for t, sign in ((0.6, 1), (2.4, -1)):
        traj = exact_trajectory(x, torch.full((4096,), t, dtype=DT), g)
        grads = [float(chees.gradient(x[i::8], Trajectory(*(v[i::8] for v in traj)),
                                      ones[i::8])) for i in range(8)]  # 8 independent blocks
        mean, se = np.mean(grads), np.std(grads, ddof=1) / math.sqrt(8)
        assert sign * mean > Z * se, (t, grads)


def test_chees_gradient_in_scaled_coordinates_does_not_depend_on_units() -> None:
    """Coordinates in other units (x·s, velocity v·s) with scale = s give the gradient of the
    unit target; without the scale the widest coordinate dominates and the value changes."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1024, 3, generator=g, dtype=DT)
    traj = exact_trajectory(x, torch.full((1024,), 0.8, dtype=DT), g)
    s = torch.tensor([0.1, 1.0, 30.0], dtype=DT)
    ones, chees = torch.ones(1024, dtype=DT), ChEES()
    unit = chees.gradient(x, traj, ones)
    scaled = Trajectory(traj.x * s, traj.velocity * s, traj.length)
    torch.testing.assert_close(chees.gradient(x * s, scaled, ones, s), unit, rtol=1e-10, atol=0)
    assert not torch.isclose(chees.gradient(x * s, scaled, ones), unit, rtol=0.1)


@pytest.mark.slow
def test_chees_adam_finds_the_jittered_optimum_on_exact_dynamics() -> None:
    """Adam on log T with jittered exact trajectories converges to T* = 2.247 (tan 2T = 2T).
    R = 6 replicates of 400 iterations on 512 chains (fresh exact draws each iteration, as a
    chain at stationarity would give); their mean T̄ must be within Z·s/√R of T*, s their sd."""
    finals = []
    for r in range(6):
        g = torch.Generator().manual_seed(100 + r)
        chees = ChEES()
        state = chees.init(torch.tensor(0.3, dtype=DT))
        for _ in range(400):
            x = torch.randn(512, 20, generator=g, dtype=DT)
            u = 1.0 - torch.rand(512, generator=g, dtype=DT)
            traj = exact_trajectory(x, u * state.log_length.exp(), g)
            grad = chees.gradient(x, traj, torch.ones(512, dtype=DT))
            state = chees.update(state, grad, torch.tensor(1e-3), torch.tensor(1e3))
        finals.append(float(state.log_length_avg.exp()))
    s = np.std(finals, ddof=1)
    assert abs(np.mean(finals) - T_STAR) < Z * s / math.sqrt(len(finals)), (finals, T_STAR)
    assert s < 0.1 * T_STAR, finals  # and the optimiser settles (its noise is a few %)


def test_transition_runs_each_chain_for_ceil_of_its_jittered_length() -> None:
    sampler = HMC(step_size=0.25, n_leapfrog=12, shared_n_leapfrog=False, length_floor=0.0)
    target = StandardGaussian()
    g = torch.Generator().manual_seed(0)
    state = sampler.init(target, torch.randn(2048, 3, generator=g, dtype=DT))
    _, info, traj = sampler.transition(target, state, g, torch.tensor(2.0, dtype=DT))
    assert set(info.n_leapfrog.tolist()) == set(range(1, 9))  # ⌈u·2/0.25⌉, u ∈ (0, 1]
    assert (info.grad_evals == 12).all()  # the batched count is still paid
    torch.testing.assert_close(traj.length, 0.25 * info.n_leapfrog.to(DT))
    fixed = HMC(step_size=0.25, n_leapfrog=12, jitter_n_leapfrog=False)
    _, info, _ = fixed.transition(target, state, g, torch.tensor(2.0, dtype=DT))
    assert (info.n_leapfrog == 8).all()


def test_shared_transition_length_is_one_draw_and_costs_only_its_steps() -> None:
    """shared_n_leapfrog (the default): one L_t = ⌈u·T/ε⌉ for every chain, u ~ U(½, 1]
    (length_floor ½, the floor ChEES's warm-up sets), L_t gradients."""
    sampler = HMC(step_size=0.25, n_leapfrog=12, length_floor=CHEES_LENGTH_FLOOR)
    target = StandardGaussian()
    g = torch.Generator().manual_seed(0)
    state = sampler.init(target, torch.randn(512, 3, generator=g, dtype=DT))
    seen = set()
    for _ in range(60):
        state, info, traj = sampler.transition(target, state, g, torch.tensor(2.0, dtype=DT))
        n = int(info.n_leapfrog[0])
        assert (info.n_leapfrog == n).all() and (info.grad_evals == n).all()
        torch.testing.assert_close(traj.length, torch.full((512,), 0.25 * n, dtype=DT))
        seen.add(n)
    assert seen == set(range(5, 9))  # u·2/0.25 ∈ (4, 8]: each value has chance ¼ per draw


@pytest.mark.parametrize(("settings", "floor"), [
    ({}, CHEES_LENGTH_FLOOR),  # ChEES tunes the length: its floor
    ({"length_floor": 0.25}, 0.25),  # a configured floor is kept
    ({"adapt_trajectory": False}, None),  # a configured L: jittered from one step
])
def test_warmup_sets_the_chees_floor_only_for_a_tuned_length(settings, floor) -> None:
    sampler = HMC(step_size=0.3, n_leapfrog=8, **settings)
    target = StandardGaussian()
    g = torch.Generator().manual_seed(0)
    state = sampler.init(target, torch.randn(64, 3, generator=g, dtype=DT))
    tuned, _ = warmup(sampler, target, state, g, 12)
    assert tuned.length_floor == floor


def test_warmup_replaces_a_full_oscillation_by_the_chees_length() -> None:
    """L = 30 at ε ≈ 0.5 is several full periods on N(0, I); warm-up chooses L = ⌈T̄/ε̄⌉ with
    T̄ near the optimum of the default jitter, u ~ U(½, 1] (a factor-2 band: the leapfrog flow
    and the step size shift it a little)."""
    sampler = HMC(n_leapfrog=30)
    assert isinstance(sampler, TrajectoryAdaptable) and not isinstance(MALA(), TrajectoryAdaptable)
    target = StandardGaussian()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(256, 10, generator=g, dtype=DT)
    adapted, _ = warmup(sampler, target, sampler.init(target, x0), g, 150)
    assert isinstance(adapted.n_leapfrog, int) and adapted.n_leapfrog < 30
    length = adapted.n_leapfrog * float(adapted.step_size)
    assert 0.5 * T_STAR_FLOOR < length < 2 * T_STAR_FLOOR, (adapted.n_leapfrog,
                                                           float(adapted.step_size))
    off, _ = warmup(HMC(n_leapfrog=30, adapt_trajectory=False), target,
                    sampler.init(target, x0), g, 30)
    assert off.n_leapfrog == 30


def test_leapfrog_steps_and_bad_settings() -> None:
    assert leapfrog_steps(2.0, 0.5, 100) == 4 and leapfrog_steps(2.01, 0.5, 100) == 5
    assert leapfrog_steps(1e9, 0.5, 100) == 100 and leapfrog_steps(0.01, 0.5, 100) == 1
    assert leapfrog_steps(math.inf, 0.5, 7) == 7
    with pytest.raises(ValueError, match="sampler.adapt_trajectory must be true or false"):
        HMC(adapt_trajectory="yes")
    with pytest.raises(ValueError, match="sampler.max_leapfrog must be an integer >= 1"):
        HMC(max_leapfrog=0)
