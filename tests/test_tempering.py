"""Parallel tempering (ebm_cli/samplers/tempering.py): the exchange keeps the product target,
the replicas' caches stay exact, every caller keeps the hotter replicas, and on a mixture with
unequal, separated modes it recovers the weights where its base sampler cannot.

Statistical tolerances are 4 Monte Carlo standard errors, MCSE = sd/√ESS with the ESS for the
mean (evaluation.diagnostics.mcse_mean), as in tests/test_samplers.py. Float64 throughout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch
from test_faults import _main_in_process
from torch import Tensor, nn

from ebm_cli.energies.analytic import GaussianMixture
from ebm_cli.evaluation.diagnostics import mcse_mean
from ebm_cli.evaluation.sampling import draw_samples
from ebm_cli.samplers.adaptation import warmup
from ebm_cli.samplers.base import (
    ChainState,
    HasDivergences,
    Info,
    SelfAdapting,
    StepSizeAdaptable,
    declares,
    energy_and_grad,
)
from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.kinetic import AdjustedKineticLangevin, KineticLangevin
from ebm_cli.samplers.langevin import MALA, Langevin
from ebm_cli.samplers.mh import IndependenceMH, RandomWalkMH
from ebm_cli.samplers.stats import sampler_stats
from ebm_cli.samplers.tempering import (
    HasSwaps,
    ParallelTempering,
    ReplicaEnergy,
    Replicated,
    TemperingState,
)
from ebm_cli.trainers.buffer import DataNoise
from ebm_cli.trainers.sampling import SamplingOnly

DT = torch.float64
Z = 4.0  # tolerance in Monte Carlo standard errors


class Gaussian(nn.Module):
    """E(x) = ‖x‖²/(2σ²), x [B, D] -> [B]."""

    def __init__(self, sd: float = 1.0) -> None:
        super().__init__()
        self.sd = sd

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x.flatten(1).square().sum(1) / self.sd**2


class StillInfo(NamedTuple):
    accept_prob: Tensor
    is_accepted: Tensor


@dataclass(frozen=True)
class Still:
    """A base sampler that never moves: PT around it is the exchange move alone."""

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        return ChainState(x, energy_fn(x), None)

    def step(self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator
             ) -> tuple[ChainState, StillInfo]:
        ones = torch.ones(state.x.shape[0], dtype=state.x.dtype)
        return state, StillInfo(ones, ones.bool())


# ---- the exchange move ------------------------------------------------------------------------


def test_the_exchange_alone_keeps_each_replica_at_its_temperature() -> None:
    """Replicas start at exact draws of N(0, T_k σ² I); only exchanges move them (a still
    base), so each rung's variance must stay T_k σ² — a wrong acceptance ratio (e.g. its sign,
    or accepting every swap) would pull the rungs' variances together."""
    temps = [1.0, 3.0, 9.0, 27.0]
    sd, b, d, n = 0.7, 2000, 2, 60
    g = torch.Generator().manual_seed(0)
    pt = ParallelTempering(Still(), n_temperatures=4, temperatures=temps)
    t = torch.tensor(temps, dtype=DT)
    x0 = torch.randn(4, b, d, generator=g, dtype=DT) * (sd * t.sqrt())[:, None, None]
    energy = Gaussian(sd)
    state = pt.init_replicas(energy, x0)
    squares, swaps = [], 0.0
    for _ in range(n):
        state, info = pt.step(energy, state, g)
        squares.append(pt.replicas(state).square())  # [K, B, D]
        swaps += float(info.is_swapped.double().mean())
    sq = torch.stack(squares)  # [T, K, B, D]
    assert swaps / n > 0.05, "the exchanges must actually happen for the test to mean anything"
    for k in range(4):
        trace = sq[:, k]  # [T, B, D]
        got = trace.mean((0, 1)).numpy()
        mcse = mcse_mean(trace)
        want = temps[k] * sd**2
        assert np.all(np.abs(got - want) < Z * mcse), (k, got, want, mcse)


def test_only_the_pairs_of_the_steps_parity_exchange_and_the_parity_alternates() -> None:
    g = torch.Generator().manual_seed(1)
    pt = ParallelTempering(Still(), n_temperatures=5, temperatures=[1, 1.5, 2.2, 3.3, 5])
    energy = Gaussian()
    state = pt.init_replicas(energy, torch.randn(5, 300, 2, generator=g, dtype=DT))
    for parity in (0, 1, 0, 1):
        assert state.parity == parity
        state, info = pt.step(energy, state, g)
        pairs = torch.arange(4)
        assert torch.equal(info.swap_attempted, pairs % 2 == parity)
        assert not info.is_swapped[~info.swap_attempted].any()
        assert info.is_swapped[info.swap_attempted].any()


BASES = {
    "hmc": HMC(n_leapfrog=3),
    "mala": MALA(step_size=0.1),
    "ula": Langevin(step_size=0.01),
    "rw_mh": RandomWalkMH(),
    "independence_mh": IndependenceMH(),
    "kinetic": KineticLangevin(),
    "adjusted_kinetic": AdjustedKineticLangevin(),
}


@pytest.mark.parametrize("name", BASES)
def test_any_base_sampler_the_caches_stay_exact_after_exchanges(name: str) -> None:
    """After a step (base move + exchange) the replicas' cached tempered energies and
    gradients are those of a fresh evaluation at the exchanged positions; the cold chains'
    are E and ∇E at state.x; the Info declares what the base's does."""
    base = BASES[name]
    g = torch.Generator().manual_seed(2)
    k, b = 4, 64
    pt = ParallelTempering(base, n_temperatures=k, max_temperature=20.0)
    energy = GaussianMixture(event_shape=(2,)).to(DT)
    state = pt.init(energy, torch.randn(b, 2, generator=g, dtype=DT))
    for _ in range(3):
        state, info = pt.step(energy, state, g)
    assert isinstance(state, TemperingState) and state.x.shape == (b, 2)
    temps, scales = pt.ladder(state.x)
    tempered = ReplicaEnergy(energy, temps.reciprocal(), scales)
    rep = state.replicas
    want_e, want_g = energy_and_grad(tempered, rep.x)
    torch.testing.assert_close(rep.energy, want_e)
    e_cold, g_cold = energy_and_grad(energy, state.x)
    torch.testing.assert_close(state.energy, e_cold)
    if rep.grad is not None:
        torch.testing.assert_close(rep.grad, want_g)
        torch.testing.assert_close(state.grad, g_cold)
    torch.testing.assert_close(pt.replicas(state)[0], state.x)
    assert declares(info, HasSwaps) and info.swap_prob.shape == (k - 1, b)
    assert declares(info, Info) and info.energy.shape == (b,)
    assert declares(info, HasDivergences) is (name in ("hmc", "adjusted_kinetic"))
    base_evals = {"hmc": 3, "rw_mh": 0, "independence_mh": 0}.get(name, 1)
    assert (info.grad_evals == k * base_evals).all()  # each chain pays for its K replicas
    stats = sampler_stats(info)
    assert set(stats) >= {"sampler/swap_rate/0_1", "sampler/swap_rate/2_3",
                          "sampler/replica_acceptance/3"}
    assert all(0 <= float(stats[f"sampler/swap_rate/{i}_{i + 1}"]) <= 1 for i in range(k - 1))


def test_declarations_and_refusals() -> None:
    pt = ParallelTempering(HMC())
    assert isinstance(pt, SelfAdapting) and isinstance(pt, Replicated)
    assert not isinstance(pt, StepSizeAdaptable)  # it adapts itself
    for kwargs, message in [
        ({"n_temperatures": 1}, "sampler.n_temperatures must be an integer >= 2"),
        ({"max_temperature": 1.0}, "sampler.max_temperature must be a number > 1"),
        ({"target_swap": 1.5}, r"sampler.target_swap must be in \(0, 1\)"),
        ({"temperatures": [1, 2]}, "sampler.temperatures must be a list of n_temperatures"),
        ({"n_temperatures": 3, "temperatures": [2, 3, 4]}, "must start at 1 and increase"),
        ({"n_temperatures": 2, "step_scales": [1, 0]}, "sampler.step_scales must be > 0"),
    ]:
        with pytest.raises(ValueError, match=message) as err:
            ParallelTempering(HMC(), **kwargs)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="sampler.base must sample exp"):
        ParallelTempering(Langevin(step_size=0.01, noise_scale=0.05))


def test_the_config_nests_any_base_and_passes_the_preflight_checks() -> None:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from ebm_cli.app.config_check import ConfigError, check_node

    configs = str(Path(__file__).resolve().parents[1] / "configs")
    with initialize_config_dir(config_dir=configs, version_base=None):
        default = compose("config", ["sampler=tempering"])
        mala = compose("config", ["sampler=tempering", "sampler@sampler.base=mala"])
        bad = compose("config", ["sampler=tempering", "sampler.base.n_leapfrog=abc"])
    for cfg, cls in ((default, HMC), (mala, MALA)):
        node = OmegaConf.to_container(cfg.sampler, resolve=True)
        check_node(node, "sampler")
        sampler = instantiate(node, _convert_="all")
        assert isinstance(sampler, ParallelTempering) and type(sampler.base) is cls
        defaults = ParallelTempering(sampler.base)
        assert set(node) - {"_target_"} == {f.name for f in fields(ParallelTempering)}
        for f in fields(ParallelTempering):  # the YAML states the class defaults
            assert getattr(sampler, f.name) is getattr(defaults, f.name) or \
                getattr(sampler, f.name) == getattr(defaults, f.name), f.name
    with pytest.raises(ConfigError, match="sampler.base.n_leapfrog"):
        check_node(OmegaConf.to_container(bad.sampler, resolve=True), "sampler")


# ---- every caller keeps the hotter replicas ----------------------------------------------------


def test_restate_moves_the_cold_chains_only() -> None:
    g = torch.Generator().manual_seed(3)
    pt = ParallelTempering(MALA(step_size=0.1), n_temperatures=3, max_temperature=9.0)
    energy = Gaussian()
    state = pt.init(energy, torch.randn(32, 2, generator=g, dtype=DT))
    for _ in range(3):
        state, _ = pt.step(energy, state, g)
    x = torch.randn(32, 2, generator=g, dtype=DT)
    new = pt.restate(energy, state, x)
    torch.testing.assert_close(pt.replicas(new)[1:], pt.replicas(state)[1:], rtol=1e-14, atol=0)
    torch.testing.assert_close(new.x, x)
    assert new.parity == state.parity  # the exchange schedule continues
    torch.testing.assert_close(new.energy, energy(x))


def test_evaluation_restarts_touch_the_cold_chains_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """draw_samples with eval.restarts: each restart goes through restate (cold chains
    only), never init, which would put every replica at the cold chains."""
    g = torch.Generator().manual_seed(4)
    pt = ParallelTempering(HMC(n_leapfrog=2), n_temperatures=3, max_temperature=9.0)
    calls = {"restate": 0, "init": 0}
    original_restate, original_init = ParallelTempering.restate, ParallelTempering.init

    def restate(self, *args):  # noqa: ANN001, ANN202
        calls["restate"] += 1
        return original_restate(self, *args)

    def init(self, *args):  # noqa: ANN001, ANN202
        calls["init"] += 1
        return original_init(self, *args)

    monkeypatch.setattr(ParallelTempering, "restate", restate)
    monkeypatch.setattr(ParallelTempering, "init", init)
    x0 = torch.randn(64, 2, generator=g, dtype=DT)
    noise = DataNoise(torch.randn(256, 2, generator=g, dtype=DT), "gaussian", 1.0, "restarts")
    x, accept = draw_samples(Gaussian(), pt, x0, 20, 5, g, restarts=noise)
    assert x.shape == (64, 2) and 0 < float(accept) <= 1
    assert calls == {"restate": 5, "init": 1}


def test_sampling_run_logs_swap_rates_and_resumes_with_the_adapted_ladder() -> None:
    energy = GaussianMixture(event_shape=(2,)).to(DT)
    pt = ParallelTempering(HMC(n_leapfrog=2), n_temperatures=3, max_temperature=10.0)

    def run() -> SamplingOnly:
        return SamplingOnly(energy, pt, (2,), dtype=DT, n_chains=64, warmup_steps=30,
                            trace_chains=16)

    first, g = run(), torch.Generator().manual_seed(5)
    for _ in range(10):
        stats = first.step(g)
    assert {"sampler/swap_rate/0_1", "sampler/swap_rate/1_2"} <= set(stats)
    metrics = first.swap_metrics()
    assert set(metrics) == {"swap_rate_0_1", "swap_rate_1_2", "swap_rate_min",
                            "temperature_max"}
    assert 0 < metrics["swap_rate_min"] <= 1
    assert metrics["temperature_max"] == pytest.approx(float(first.sampler.temperatures[-1]))
    assert metrics.items() <= first.diagnostics().items()  # what metrics.json gets
    saved = first.state_dict()
    second = run()
    second.load_state_dict(saved)
    torch.testing.assert_close(second.sampler.temperatures, first.sampler.temperatures)
    torch.testing.assert_close(second.sampler.step_scales, first.sampler.step_scales)
    ga, gb = torch.Generator().manual_seed(6), torch.Generator().manual_seed(6)
    for _ in range(3):
        first.step(ga)
        second.step(gb)
    torch.testing.assert_close(first.sampler.replicas(first.state),
                               second.sampler.replicas(second.state))


@pytest.mark.parametrize("init", ["persistent", "replay_buffer"])
def test_mle_negatives_keep_the_replicas_between_updates_and_resume(init: str) -> None:
    from ebm_cli.data.toy2d import two_gaussians
    from ebm_cli.energies.mlp import MLPEnergy
    from ebm_cli.trainers.mle import MLETrainer

    data = two_gaussians(n_train=256, n_test=16).train.to(DT)

    def trainer(seed: int) -> MLETrainer:
        torch.manual_seed(seed)
        energy = MLPEnergy(event_shape=(2,), width=16, depth=1).to(DT)
        pt = ParallelTempering(MALA(step_size=0.01), n_temperatures=3, max_temperature=4.0)
        return MLETrainer(energy, pt, data, lambda p: torch.optim.Adam(p, lr=1e-3), n_chains=32,
                          init=init, buffer_size=64, reinit_prob=0.1)

    a, g = trainer(0), torch.Generator().manual_seed(7)
    stats = a.step(data[:32], g)
    hot = a.sampler.replicas(a._sampler_state)[1:].clone()
    assert "sampler/swap_rate/0_1" in stats
    restarts = []
    original = a.sampler.restate
    object.__setattr__(a.sampler, "restate",
                       lambda *args: restarts.append(1) or original(*args))
    a.step(data[32:64], g)
    assert restarts == [1], "the second update continues the replicas"
    assert not torch.equal(a.sampler.replicas(a._sampler_state)[1:], hot)  # they moved on
    object.__delattr__(a.sampler, "restate")
    b = trainer(0)
    b.energy_fn.load_state_dict(a.energy_fn.state_dict())
    b.load_state_dict(a.state_dict())
    ga, gb = torch.Generator().manual_seed(8), torch.Generator().manual_seed(8)
    a.step(data[:32], ga)
    b.step(data[:32], gb)
    torch.testing.assert_close(a.sampler.replicas(a._sampler_state),
                               b.sampler.replicas(b._sampler_state))


@pytest.mark.slow
def test_a_sampling_run_writes_swap_rates_to_metrics_json_and_tensorboard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    proc = _main_in_process(
        [f"hydra.run.dir={run_dir}", "trainer=none", "energy=gaussian_mixture",
         "sampler=tempering", "sampler.n_temperatures=3", "sampler.base.n_leapfrog=2",
         "trainer.steps=20", "trainer.warmup_steps=20", "trainer.n_chains=32",
         "trainer.trace_chains=8", "image_every=0", "eval.mmd_points=50", "log_every=1"],
        tmp_path, monkeypatch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"swap_rate_0_1", "swap_rate_1_2", "swap_rate_min"} <= set(metrics), metrics
    tags = EventAccumulator(str(run_dir)).Reload().Tags()["scalars"]
    assert {"sampler/swap_rate/0_1", "sampler/swap_rate/1_2"} <= set(tags), tags


# ---- statistics (slow tier) --------------------------------------------------------------------


def _unequal_mixture() -> GaussianMixture:
    """Weights 0.25 / 0.75, sd 1, modes 12 sd apart: E rises 18 nats between them."""
    return GaussianMixture(event_shape=(2,), means=((-6.0, 0.0), (6.0, 0.0)), std=1.0,
                           weights=(0.25, 0.75)).to(DT)


def _heavy_mode_weight(sampler, steps: int, seed: int) -> tuple[float, float, int, Tensor]:  # noqa: ANN001
    """(weight of the x₀ > 0 mode, its MCSE, chains that ever changed mode, mean swap rates)
    of 256 chains from N(0, I) after 300 warm-up steps."""
    energy = _unequal_mixture()
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(256, 2, generator=g, dtype=DT)
    adapted, state = warmup(sampler, energy, sampler.init(energy, x0), g, 300)
    modes, swaps = [], []
    for _ in range(steps):
        state, info = adapted.step(energy, state, g)
        modes.append((state.x[:, 0] > 0).to(DT))
        if declares(info, HasSwaps):
            swaps.append(info.swap_prob.mean(1))
    trace = torch.stack(modes)[:, :, None]  # [T, B, 1]
    switched = int((trace != trace[:1]).any(0).sum())
    rates = torch.stack(swaps).mean(0) if swaps else torch.empty(0)
    return float(trace.mean()), float(mcse_mean(trace)[0]), switched, rates


@pytest.mark.slow
def test_tempering_recovers_unequal_mode_weights_that_its_base_cannot() -> None:
    """The 0.25/0.75 mixture 12 sd apart: PT around HMC puts 0.75 in the heavy mode within
    4 MCSE (ESS for the mean of the mode indicator); HMC alone, same start and budget of
    steps, never changes mode and misses by more than 4 of its MCSE."""
    base = HMC(n_leapfrog=5)
    pt = ParallelTempering(base, n_temperatures=6, max_temperature=50.0)
    p, mcse, switched, rates = _heavy_mode_weight(pt, 1000, seed=0)
    assert abs(p - 0.75) < Z * mcse, (p, mcse)
    assert switched > 200  # nearly every chain visits both modes
    assert ((rates > 0.15) & (rates < 0.35)).all(), rates  # adapted towards 0.234
    p_base, mcse_base, switched_base, _ = _heavy_mode_weight(base, 1000, seed=0)
    assert switched_base == 0
    assert abs(p_base - 0.75) > Z * mcse_base, (p_base, mcse_base)


@pytest.mark.slow
def test_each_replica_samples_its_tempered_gaussian_after_warmup() -> None:
    """PT around HMC after its warm-up (ladder and step scales adapted) on N(0, σ² I), 3-D:
    replica k's variance is T_k σ² within 4 MCSE, in every coordinate."""
    sd, b = 0.5, 512
    energy = Gaussian(sd)
    g = torch.Generator().manual_seed(9)
    pt = ParallelTempering(HMC(n_leapfrog=3), n_temperatures=4, max_temperature=30.0)
    x0 = torch.randn(b, 3, generator=g, dtype=DT) * sd
    adapted, state = warmup(pt, energy, pt.init(energy, x0), g, 300)
    squares = []
    for _ in range(600):
        state, _ = adapted.step(energy, state, g)
        squares.append(adapted.replicas(state).square())
    sq = torch.stack(squares)  # [T, K, B, D]
    temps = adapted.temperatures.tolist()
    assert temps[-1] > 5.0  # the ladder spans a real range
    for k, t in enumerate(temps):
        got, mcse = sq[:, k].mean((0, 1)).numpy(), mcse_mean(sq[:, k])
        assert np.all(np.abs(got - t * sd**2) < Z * mcse), (k, t, got, mcse)
