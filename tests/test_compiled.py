"""Compiled transitions (samplers/compiled.py): the prepare / draws / kernel split, compiled and
eager agreement, exact resume, and the eager fallback for an energy that cannot be traced.

Every test that compiles a graph is slow (tens of seconds per graph on two cores) except the
fallback test, whose trace fails within its first operations.
"""

from __future__ import annotations

import io
import logging

import pytest
import torch
from torch import Tensor, nn

from ebm_cli.energies.mlp import MLPEnergy
from ebm_cli.samplers.base import ChainState
from ebm_cli.samplers.compiled import (
    MAX_FUSED,
    Compilable,
    CompiledTransitions,
    DrawsAhead,
    EagerEnergy,
    fused_chunks,
    is_transient,
    run_transitions,
    transient,
)
from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.kinetic import AdjustedKineticLangevin, KineticLangevin
from ebm_cli.samplers.langevin import MALA, Langevin
from ebm_cli.samplers.mh import IndependenceMH, RandomWalkMH

# dynamo traces through base._ones's lru_cache; compiled.py silences this for runs, pytest
# resets warning filters per test
pytestmark = pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache")

SAMPLERS = {
    "rwmh": lambda: RandomWalkMH(0.5),
    "rwmh_tensor": lambda: RandomWalkMH(torch.tensor(0.4, dtype=torch.float64)),
    "independence": lambda: IndependenceMH(0.0, [1.0, 2.0]),
    "mala": lambda: MALA(0.1),
    "mala_mass": lambda: MALA(torch.tensor(0.1), inv_mass=[1.0, 0.5]),
    "mala_dense": lambda: MALA(0.1, inv_mass=[[1.0, 0.3], [0.3, 0.5]]),
    "ula": lambda: Langevin(0.01, grad_clip=2.0),
    "hmc": lambda: HMC(0.1, 5, jitter_n_leapfrog=False),
    "hmc_jittered": lambda: HMC(0.1, 5, jitter=0.2, inv_mass=[1.0, 0.5]),
    "hmc_per_chain_jitter": lambda: HMC(0.1, 5, shared_n_leapfrog=False),
    "kinetic": lambda: KineticLangevin(0.1),
    "adjusted_kinetic": lambda: AdjustedKineticLangevin(0.3),
}


def _energy() -> MLPEnergy:
    torch.manual_seed(0)
    return MLPEnergy((2,), 16, 2, "silu")


def _start(sampler: Compilable, energy_fn: nn.Module, seed: int = 3
           ) -> tuple[ChainState, torch.Generator]:
    g = torch.Generator().manual_seed(seed)
    return sampler.init(energy_fn, torch.randn(64, 2, generator=g)), g


@pytest.mark.parametrize("name", SAMPLERS)
def test_kernel_is_pure_and_all_randomness_is_in_the_draws(name: str) -> None:
    """A step's draws consume the generator exactly as the whole step does; the kernel draws
    nothing, modifies neither its state nor its draws, and gives the step's result bit for bit."""
    sampler = SAMPLERS[name]()
    assert isinstance(sampler, Compilable)
    energy_fn = _energy()
    state, g = _start(sampler, energy_fn)
    state, _ = sampler.step(energy_fn, state, g)  # a state as a run carries it (ULA: lazy)
    g_step = torch.Generator().set_state(g.get_state())
    stepped, _ = sampler.step(energy_fn, state, g_step)

    prepared = sampler.prepare(energy_fn, state)
    draws = sampler.draws(prepared, g)
    assert torch.equal(g.get_state(), g_step.get_state())  # the step drew nothing else
    before = [None if t is None else t.clone() for t in (*prepared, *draws)]
    result, _ = sampler.kernel(EagerEnergy(energy_fn), prepared, draws)
    assert torch.equal(g.get_state(), g_step.get_state())  # the kernel drew nothing
    for old, new in zip(before, (*prepared, *draws)):
        assert (old is None and new is None) or torch.equal(old, new)  # inputs untouched
    for a, b in zip(result, stepped):
        assert (a is None and b is None) or torch.equal(a, b)


class Branchy(nn.Module):
    """E(x) = ½‖x‖² with a data-dependent Python branch: dynamo cannot put it in one graph."""

    event_shape = (2,)

    def forward(self, x: Tensor) -> Tensor:
        energy = 0.5 * x.square().sum(1)
        if energy.sum() > -1.0:  # always true, but only known from the data
            return energy
        return -energy


def test_untraceable_energy_falls_back_to_eager_with_one_log_line(
        caplog: pytest.LogCaptureFixture) -> None:
    torch._dynamo.reset()
    sampler, energy_fn = RandomWalkMH(0.5), Branchy()
    compiled = CompiledTransitions(energy_fn)
    runs = []
    with caplog.at_level(logging.WARNING, logger="ebm_cli"):
        for fn in (energy_fn, compiled):
            state, g = _start(sampler, fn)
            for _ in range(4):
                state, info = sampler.step(fn, state, g)
            runs.append((state.x, info.is_accepted))
    lines = [r.getMessage() for r in caplog.records if "transitions run eager" in r.getMessage()]
    assert len(lines) == 1 and "Data-dependent" in lines[0]  # one line, not one per step
    assert compiled.fallback is not None and compiled.graphs == 0
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_tuned_samplers_are_transient_and_the_fixed_one_is_not() -> None:
    from ebm_cli.samplers.adaptation import StepSizeAdaptation

    sampler = HMC(0.1, 5)
    adaptation = StepSizeAdaptation(sampler.target_accept)
    tuned = adaptation.tuned(sampler, adaptation.init(sampler))
    assert is_transient(tuned) and not is_transient(sampler)
    assert not is_transient(adaptation.final(sampler, adaptation.init(sampler)))
    assert transient(sampler) is sampler and is_transient(sampler)


def _chains(sampler: Compilable, energy_fn: nn.Module, steps: int
            ) -> list[tuple[Tensor, Tensor]]:
    state, g = _start(sampler, energy_fn)
    out = []
    for _ in range(steps):
        state, info = sampler.step(energy_fn, state, g)
        out.append((state.x, info.is_accepted))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", SAMPLERS)
def test_compiled_and_eager_make_the_same_decisions(name: str) -> None:
    """Same draws → same accept decisions; positions equal up to float32 reassociation.

    Tolerance: a fused graph reorders sums of O(1) terms, a few ulps (1.2e-7 each) per op; over
    6 transitions of ≤ 5 leapfrog steps (~60 dependent ops) that is ≲ 1e-5 absolute, and 1e-4
    leaves room without hiding a wrong formula (a dropped factor moves x by ≥ 1e-2)."""
    torch._dynamo.reset()
    sampler, energy_fn = SAMPLERS[name](), _energy()
    compiled = CompiledTransitions(energy_fn)
    eager, fused = _chains(sampler, energy_fn, 6), _chains(sampler, compiled, 6)
    assert compiled.fallback is None and compiled.graphs >= 1 and compiled.seconds_compile > 0
    for (x_e, acc_e), (x_c, acc_c) in zip(eager, fused):
        assert torch.equal(acc_e, acc_c)
        torch.testing.assert_close(x_c, x_e, rtol=0, atol=1e-4)
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(eager[:-1], eager[1:]))  # chains move


def _mle(compile_: bool, warmup: int = 3):
    from ebm_cli.trainers.mle import MLETrainer

    torch.manual_seed(0)
    energy_fn = MLPEnergy((2,), 32, 2, "silu")
    data = torch.randn(512, 2, generator=torch.Generator().manual_seed(5)) * 0.5 + 1.0
    fast = CompiledTransitions(energy_fn) if compile_ else energy_fn
    trainer = MLETrainer(fast, HMC(0.1, 5), data, lambda p: torch.optim.Adam(p, lr=3e-3),
                         n_chains=64, warmup_steps=warmup)
    return energy_fn, fast, trainer, data


def _train(trainer, data: Tensor, g: torch.Generator, steps: int) -> list[Tensor]:
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, data.shape[0], (64,), generator=g)
        losses.append(trainer.step(data[idx], g)["loss"])
    return losses


@pytest.mark.slow
def test_compiled_mle_agrees_with_eager_and_resumes_exactly() -> None:
    torch._dynamo.reset()
    runs = {}
    for compile_ in (False, True):  # no warm-up: a fixed ε = 0.1, compiled from the first update
        energy_fn, fast, trainer, data = _mle(compile_, warmup=0)
        g = torch.Generator().manual_seed(1)
        runs[compile_] = (_train(trainer, data, g, 8), energy_fn, trainer, g)
    (loss_e, energy_e, trainer_e, _), (loss_c, energy_c, trainer_c, g_c) = runs[False], runs[True]
    # 8 updates with compiled HMC negatives: θ and the chains follow the eager path
    torch.testing.assert_close(torch.stack(loss_c), torch.stack(loss_e), rtol=0, atol=1e-4)
    for p_e, p_c in zip(energy_e.parameters(), energy_c.parameters()):
        torch.testing.assert_close(p_c, p_e, rtol=0, atol=1e-4)
    torch.testing.assert_close(trainer_c.chains, trainer_e.chains, rtol=0, atol=1e-4)

    # resume: a fresh compiled trainer loaded from the checkpointed state continues exactly
    # (here after 3 eager warm-up updates of transient samplers and 5 compiled ones)
    energy_c, _, trainer_c, data = _mle(True, warmup=3)
    g_c = torch.Generator().manual_seed(1)
    _train(trainer_c, data, g_c, 8)
    saved = io.BytesIO()  # what a checkpoint holds, written before the run goes on
    torch.save({"trainer": trainer_c.state_dict(), "energy": energy_c.state_dict()}, saved)
    g_state = g_c.get_state()
    straight = _train(trainer_c, data, g_c, 4)
    energy_r, _, trainer_r, _ = _mle(True, warmup=3)
    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=True)
    energy_r.load_state_dict(checkpoint["energy"])
    trainer_r.load_state_dict(checkpoint["trainer"])
    resumed = _train(trainer_r, data, torch.Generator().set_state(g_state), 4)
    assert torch.equal(torch.stack(resumed), torch.stack(straight))
    for p_c, p_r in zip(energy_c.parameters(), energy_r.parameters()):
        assert torch.equal(p_c, p_r)


def test_fused_chunks_cover_the_steps_in_at_most_two_sizes() -> None:
    for steps in range(1, 100):
        chunks = fused_chunks(steps)
        assert sum(chunks) == steps and max(chunks) <= MAX_FUSED and len(set(chunks)) <= 2
        assert len(chunks) == -(-steps // MAX_FUSED)  # as few graph calls as the cap allows
    assert fused_chunks(40) == [8] * 5 and fused_chunks(10) == [5, 5]


DRAWS_AHEAD = ("ula", "rwmh", "rwmh_tensor", "independence", "mala", "mala_mass", "mala_dense")


@pytest.mark.parametrize("name", DRAWS_AHEAD)
def test_draws_ahead_are_the_draws_of_successive_steps(name: str) -> None:
    """A DrawsAhead sampler's k draws made up front equal those of k eager steps: the same
    numbers in the same order, and the generator left in the same state."""
    sampler, energy_fn = SAMPLERS[name](), _energy()
    assert isinstance(sampler, DrawsAhead)
    state, g = _start(sampler, energy_fn)
    g_ahead = torch.Generator().set_state(g.get_state())
    ahead = sampler.draws_ahead(state, g_ahead, 3)
    for draws in ahead:  # the draws read shapes only: the same state stands for every step
        for a, b in zip(draws, sampler.draws(state, g)):
            assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(g_ahead.get_state(), g.get_state())


@pytest.mark.parametrize("name", sorted(set(SAMPLERS) - set(DRAWS_AHEAD)))
def test_samplers_whose_draws_depend_on_more_do_not_declare_draws_ahead(name: str) -> None:
    """Not HMC (a graph of k transitions would unroll k·L leapfrog steps), nor the kinetic
    samplers (their first draw depends on whether the state has a velocity): run_transitions
    runs their k steps one call each."""
    assert not isinstance(SAMPLERS[name](), DrawsAhead)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ula", "rwmh", "mala"])
def test_fused_transitions_agree_with_eager_steps(name: str) -> None:
    """k = 10 steps as two compiled graphs of 5 (run_transitions) against 10 eager steps:
    the same draws (the generators end in the same state), the chains equal up to float32
    reassociation (tolerance as in test_compiled_and_eager_make_the_same_decisions)."""
    torch._dynamo.reset()
    sampler, energy_fn = SAMPLERS[name](), _energy()
    compiled = CompiledTransitions(energy_fn)
    state, g_e = _start(sampler, energy_fn)
    _, g_c = _start(sampler, energy_fn)
    eager, infos_e = run_transitions(sampler, energy_fn, state, g_e, 10)
    fused, infos_c = run_transitions(sampler, compiled, state, g_c, 10)
    assert compiled.fallback is None and compiled.graphs == 1 and len(infos_c) == 10
    assert torch.equal(g_e.get_state(), g_c.get_state())
    torch.testing.assert_close(fused.x, eager.x, rtol=0, atol=1e-4)
    for info_e, info_c in zip(infos_e, infos_c):  # each step's energy (ULA: at its start)
        torch.testing.assert_close(info_c.energy, info_e.energy, rtol=0, atol=1e-4)
        assert torch.equal(info_c.is_accepted, info_e.is_accepted)  # the same decisions
    assert (fused.x - state.x).abs().max() > 1e-2  # the chains moved


@pytest.mark.slow
def test_compiled_cd_k_langevin_agrees_with_eager() -> None:
    """MLE CD-10 with ULA negatives (fused in chunks of 5) follows the eager trainer."""
    from ebm_cli.trainers.mle import MLETrainer

    torch._dynamo.reset()
    data = torch.randn(512, 2, generator=torch.Generator().manual_seed(5)) * 0.5 + 1.0
    runs = []
    for compile_ in (False, True):
        torch.manual_seed(0)
        energy_fn = MLPEnergy((2,), 32, 2, "silu")
        fast = CompiledTransitions(energy_fn) if compile_ else energy_fn
        trainer = MLETrainer(fast, Langevin(0.01), data, lambda p: torch.optim.Adam(p, lr=3e-3),
                             n_chains=64, sampler_steps=10, init="data", warmup_steps=0)
        losses = _train(trainer, data, torch.Generator().manual_seed(1), 4)
        runs.append((torch.stack(losses), trainer, energy_fn))
    (loss_e, trainer_e, energy_e), (loss_c, trainer_c, energy_c) = runs
    assert trainer_c.energy_fn.graphs == 1 and trainer_c.gradients_per_update() == 11
    torch.testing.assert_close(loss_c, loss_e, rtol=0, atol=1e-4)
    for p_e, p_c in zip(energy_e.parameters(), energy_c.parameters()):
        torch.testing.assert_close(p_c, p_e, rtol=0, atol=1e-4)
    torch.testing.assert_close(trainer_c.negatives(), trainer_e.negatives(), rtol=0, atol=1e-4)


@pytest.mark.slow
def test_each_sampler_object_compiles_its_own_graph_past_dynamo_recompile_limit() -> None:
    """Dynamo allows 8 graphs per code object: more sampler objects than that in one process (a
    sweep launched in-process) each still compile, none falls back to eager."""
    limit = torch._dynamo.config.recompile_limit
    energy_fn = _energy()
    for i in range(limit + 2):
        sampler = RandomWalkMH(0.5)  # equal settings: distinct objects, a cached graph each
        compiled = CompiledTransitions(energy_fn)
        state, g = _start(sampler, energy_fn, seed=i)
        sampler.step(compiled, state, g)
        assert compiled.fallback is None, (i, compiled.fallback)
        assert compiled.graphs == 1, i
