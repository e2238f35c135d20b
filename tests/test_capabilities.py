"""Capabilities are declared, not probed (house rule 9): the sampler and Info protocols of
ebm_cli/samplers/base.py, the one statistics function (samplers/stats.py) every trainer logs
with, and the string options that became one documented mapping each."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import pytest
import torch
from hydra.utils import instantiate
from torch import Tensor, nn

from ebm_cli.app.config_check import ConfigError, check_node
from ebm_cli.data.toy2d import two_gaussians
from ebm_cli.energies.activations import ACTIVATIONS, make_activation
from ebm_cli.energies.conv import ConvEnergy
from ebm_cli.energies.mlp import MLPEnergy
from ebm_cli.samplers.adaptation import warmup
from ebm_cli.samplers.base import (
    AcceptInfo,
    ChainState,
    HasDivergences,
    Info,
    MassAdaptable,
    StepSizeAdaptable,
    Tempered,
    declares,
    energy_only,
)
from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.langevin import MALA, Langevin
from ebm_cli.samplers.mh import IndependenceMH, RandomWalkMH
from ebm_cli.samplers.stats import sampler_stats
from ebm_cli.trainers.buffer import NOISE_KINDS, DataNoise
from ebm_cli.trainers.losses import SCORE_MATCHING_METHODS
from ebm_cli.trainers.mle import INITS, MLETrainer
from ebm_cli.trainers.sampling import SamplingOnly
from ebm_cli.trainers.score_matching import ScoreMatchingTrainer

DT = torch.float64
DATA = two_gaussians(n_train=512, n_test=16)


class StandardNormal(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x.flatten(1).square().sum(1)


# ---- samplers: each declares exactly what it supports ---------------------------------------
# (sampler, StepSizeAdaptable, MassAdaptable, Tempered, gradient evaluations per transition)
SAMPLERS = {
    "rw_mh": (RandomWalkMH(), True, False, False, 0),
    "independence_mh": (IndependenceMH(), False, False, False, 0),
    "hmc": (HMC(n_leapfrog=4, jitter_n_leapfrog=False), True, True, False, 4),
    "mala": (MALA(), True, True, False, 1),
    "ula": (Langevin(), False, False, True, 1),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_each_sampler_declares_exactly_its_capabilities(name: str) -> None:
    sampler, step_size, mass, tempered, _ = SAMPLERS[name]
    assert isinstance(sampler, StepSizeAdaptable) is step_size
    assert isinstance(sampler, MassAdaptable) is mass
    assert isinstance(sampler, Tempered) is tempered


@pytest.mark.parametrize("name", SAMPLERS)
def test_every_info_fills_the_common_fields(name: str) -> None:
    """accept_prob, is_accepted, energy, is_divergent, grad_evals [B] for every sampler; only
    HMC declares HasDivergences (its ΔH)."""
    sampler, *_, grads = SAMPLERS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, generator=g, dtype=DT)
    _, info = sampler.step(StandardNormal(), sampler.init(StandardNormal(), x), g)
    assert isinstance(info, Info) and declares(info, Info)
    assert declares(info, HasDivergences) is (name == "hmc")
    assert info.accept_prob.shape == info.energy.shape == (16,)
    assert info.is_accepted.dtype == info.is_divergent.dtype == torch.bool
    assert info.grad_evals.dtype == torch.int64 and (info.grad_evals == grads).all()
    if name != "hmc":  # nothing to diverge
        assert not info.is_divergent.any()


class CountingInfo(NamedTuple):
    """An Info whose lazy property counts its evaluations."""

    accept_prob: Tensor
    is_accepted: Tensor
    reads: list

    @property
    def is_divergent(self) -> Tensor:
        self.reads.append(1)
        return torch.zeros_like(self.is_accepted)

    @property
    def energy_error(self) -> Tensor:
        self.reads.append(1)
        return torch.zeros_like(self.accept_prob)


def test_declares_decides_once_per_info_class() -> None:
    # isinstance against a data-member Protocol reads every member (Python < 3.12): declares
    # pays that once per Info class, not on every step.
    reads: list = []
    info = CountingInfo(torch.ones(4), torch.ones(4, dtype=torch.bool), reads)
    assert declares(info, HasDivergences)
    first = len(reads)
    for _ in range(3):
        assert declares(info, HasDivergences)
    assert len(reads) == first
    sampler_stats(info)  # reads the two fields it logs, once each
    assert len(reads) == first + 2


# ---- a user's minimal sampler ----------------------------------------------------------------
class MinimalInfo(NamedTuple):
    accept_prob: Tensor
    is_accepted: Tensor


@dataclass(frozen=True)
class UserRandomWalk:
    """A user's sampler: random-walk Metropolis with a fixed ``scale``, a minimal Info."""

    scale: float = 0.8

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        return ChainState(x, energy_only(energy_fn, x))

    def step(self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator):
        x_prop = state.x + self.scale * torch.randn(state.x.shape, generator=generator,
                                                    dtype=state.x.dtype)
        e_prop = energy_only(energy_fn, x_prop)
        prob = (state.energy - e_prop).clamp(max=0).exp().nan_to_num(nan=0.0)
        accept = torch.rand(prob.shape, generator=generator, dtype=prob.dtype) < prob
        x = torch.where(accept[:, None], x_prop, state.x)
        return ChainState(x, torch.where(accept, e_prop, state.energy)), MinimalInfo(prob, accept)


@dataclass(frozen=True)
class UserTunable(UserRandomWalk):
    """The same sampler declaring StepSizeAdaptable by its fields (the proposal scale)."""

    step_size: float | Tensor = 3.0
    target_accept: float = 0.4

    def step(self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator):
        return UserRandomWalk(float(self.step_size)).step(energy_fn, state, generator)


def test_sampler_stats_of_a_minimal_user_info() -> None:
    info = MinimalInfo(torch.tensor([0.5, 1.0, 0.0]), torch.tensor([True, True, False]))
    assert isinstance(info, AcceptInfo) and not declares(info, Info)
    assert not declares(info, HasDivergences)
    stats = sampler_stats(info)
    assert set(stats) == {"sampler/acceptance_rate"}
    assert float(stats["sampler/acceptance_rate"]) == pytest.approx(0.5)


def test_a_minimal_user_sampler_serves_mle_and_a_sampling_run() -> None:
    g = torch.Generator().manual_seed(0)
    trainer = MLETrainer(MLPEnergy((2,), width=8, depth=1), UserRandomWalk(), DATA.train,
                         functools.partial(torch.optim.Adam, lr=1e-3), n_chains=32)
    out = trainer.step(DATA.train[:32], g)
    assert "sampler/step_size" not in out and "sampler/divergent_fraction" not in out
    assert trainer.warmup_steps == 0 and "step_size" not in trainer.state_dict()
    run = SamplingOnly(StandardNormal(), UserRandomWalk(), (2,), dtype=DT, n_chains=8,
                       warmup_steps=3, trace_chains=2)
    stats = run.step(g)
    assert set(stats) == {"sampler/acceptance_rate", "energy/samples"}
    assert float(run.grad_evals) == 0 and not run.has_divergences


def test_a_user_sampler_that_declares_step_size_adaptation_is_tuned() -> None:
    # scale 3 on N(0, I) accepts ≈ 0.2; dual averaging towards 0.4 must shrink it.
    sampler = UserTunable()
    assert isinstance(sampler, StepSizeAdaptable) and not isinstance(sampler, MassAdaptable)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(256, 2, generator=g, dtype=DT)
    adapted, _ = warmup(sampler, StandardNormal(), sampler.init(StandardNormal(), x0), g, 200)
    assert isinstance(adapted.step_size, Tensor) and float(adapted.step_size) < 3.0
    assert isinstance(adapted, UserTunable) and adapted.scale == sampler.scale


# ---- HMC's divergences in MLE training -------------------------------------------------------
class SteepMLP(nn.Module):
    """E = MLP(x) + ½‖x‖²/0.1²: a trainable energy with curvature 100 (sd 0.1)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mlp = MLPEnergy((2,), width=8, depth=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.mlp(x) + 50.0 * x.square().sum(1)


@pytest.mark.parametrize("sampler_steps", [1, 3])
def test_hmc_divergences_are_logged_during_mle(sampler_steps: int) -> None:
    # ε = 0.5 is 5 sds, far beyond leapfrog's stability limit ε < 2 sd: every trajectory
    # diverges (|ΔH| > 1000, or ±inf/NaN), is rejected and counted; all statistics stay finite.
    adam = functools.partial(torch.optim.Adam, lr=1e-3)
    hmc = HMC(step_size=0.5, n_leapfrog=8, jitter_n_leapfrog=False)  # 8 steps for every chain
    trainer = MLETrainer(SteepMLP(), hmc, DATA.train, adam,
                         n_chains=64, warmup_steps=0, sampler_steps=sampler_steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        out = trainer.step(DATA.train[:64], g)
        assert all(torch.isfinite(v) for v in out.values()), out
    assert float(out["sampler/divergent_fraction"]) == 1.0
    assert float(out["sampler/abs_energy_error"]) == 0.0  # no chain left to average over
    assert float(out["sampler/acceptance_rate"]) == 0.0
    # a stable step size (0.05 = sd/2): no divergences; the mean |ΔH| covers every chain
    # (chains start far out in the noise, so it is not small, but below the bound of 1000)
    trainer = MLETrainer(SteepMLP(), HMC(step_size=0.05, n_leapfrog=4), DATA.train, adam,
                         n_chains=64, warmup_steps=0, sampler_steps=sampler_steps)
    out = trainer.step(DATA.train[:64], g)
    assert float(out["sampler/divergent_fraction"]) == 0.0
    assert 0 < float(out["sampler/abs_energy_error"]) < 1000


# ---- activations: a short name (one table) or any nn.Module by _target_ ----------------------
def test_an_activation_given_as_a_module_or_a_factory() -> None:
    energy = MLPEnergy((2,), width=8, depth=3, activation=nn.PReLU())
    prelus = [m for m in energy.modules() if isinstance(m, nn.PReLU)]
    assert len(prelus) == 3 and len({id(p.weight) for p in prelus}) == 3  # one per layer
    conv = ConvEnergy((1, 8, 8), channels=(4, 4),
                      activation=functools.partial(nn.LeakyReLU, negative_slope=0.1))
    leaky = [m for m in conv.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(leaky) == 2 and all(m.negative_slope == 0.1 for m in leaky)
    assert conv(torch.zeros(3, 1, 8, 8)).shape == (3,)
    for name in ACTIVATIONS:
        assert isinstance(make_activation(name), nn.Module)


@pytest.mark.parametrize("activation", [{"_target_": "torch.nn.Mish"},
                                        {"_target_": "torch.nn.ELU", "_partial_": True,
                                         "alpha": 0.5}])
def test_an_activation_target_in_the_config(activation: dict) -> None:
    node = {"_target_": "ebm_cli.energies.mlp.MLPEnergy", "width": 8, "depth": 2,
            "activation": activation}
    check_node(node, "energy", runtime=("event_shape",))  # the pre-flight check accepts it
    energy = instantiate(node, _partial_=True, _convert_="all")(event_shape=(2,))
    kind = torch.nn.Mish if activation["_target_"] == "torch.nn.Mish" else torch.nn.ELU
    assert sum(isinstance(m, kind) for m in energy.modules()) == 2
    assert energy(torch.zeros(5, 2)).shape == (5,)


def test_an_activation_that_is_not_a_module_is_refused() -> None:
    node = {"_target_": "ebm_cli.energies.mlp.MLPEnergy",
            "activation": {"_target_": "torch.optim.Adam"}}
    with pytest.raises(ConfigError, match="energy.activation"):
        check_node(node, "energy", runtime=("event_shape",))
    with pytest.raises(ValueError, match=r"energy.activation='swish' is not one of silu, "):
        MLPEnergy((2,), activation="swish")
    with pytest.raises(ValueError, match="energy.activation must be one of"):
        MLPEnergy((2,), activation=lambda: 3.0)


# ---- the other string options: one mapping each, every name still accepted ------------------
def test_each_string_option_is_one_mapping_of_its_allowed_values() -> None:
    assert set(INITS) == {"persistent", "noise", "data", "replay_buffer"}
    assert set(NOISE_KINDS) == {"uniform", "gaussian"}
    assert set(SCORE_MATCHING_METHODS) == {"exact", "sliced", "denoising"}
    adam = functools.partial(torch.optim.Adam, lr=1e-3)
    with pytest.raises(ValueError, match="trainer.init must be one of persistent, noise, data, "
                                         "replay_buffer, got 'bogus'"):
        MLETrainer(MLPEnergy((2,)), HMC(), DATA.train, adam, init="bogus")
    with pytest.raises(ValueError, match="trainer.noise_init must be one of uniform, gaussian"):
        DataNoise(DATA.train, "laplace", key="trainer.noise_init")
    with pytest.raises(ValueError, match="trainer.method must be one of exact, sliced, "
                                         "denoising, got 'magic'"):
        ScoreMatchingTrainer(MLPEnergy((2,)), DATA.train, adam, method="magic")


@pytest.mark.parametrize("method", list(SCORE_MATCHING_METHODS))
def test_the_trainer_calls_the_pure_loss_of_its_method(method: str) -> None:
    torch.manual_seed(0)
    energy = MLPEnergy((2,), width=8, depth=2)
    trainer = ScoreMatchingTrainer(energy, DATA.train, functools.partial(torch.optim.SGD, lr=0),
                                   method=method, sigma=0.3, n_projections=2,
                                   projection="gaussian", variance_reduction=True)
    batch = DATA.train[:32]
    got = trainer.loss(batch, torch.Generator().manual_seed(1)).detach()
    spec = SCORE_MATCHING_METHODS[method]
    settings = {"sigma": 0.3, "n_projections": 2, "projection": "gaussian",
                "variance_reduction": True}
    want = spec.loss(energy, batch, generator=torch.Generator().manual_seed(1),
                     **{k: settings[k] for k in spec.settings}).detach()
    assert torch.equal(got, want) and math.isfinite(float(got))
