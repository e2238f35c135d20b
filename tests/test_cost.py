"""Every trainer's ``gradients_per_update`` against the gradient passes that actually ran.

The passes are counted independently of the trainers' own bookkeeping: ``torch.autograd.grad``
and ``Tensor.backward`` are wrapped for the duration of a test, and each call is recorded with
the number of points it differentiates at. A gradient w.r.t. the points x over r·N points
(N = the chains, or the data batch) counts r per point, the way a sampler's Info counts
``grad_evals`` per chain (tempering's K replicas, sliced SM's P projections); a backward of the
scalar loss to θ counts 1. A forward hook on the energy counts its evaluations (MH's are not
gradients). What each trainer should report is also derived by hand from its settings.
That metrics.json carries the figure is checked on test_cli.py's run (MLE + HMC: 12).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from ebm_cli.energies.mlp import MLPEnergy
from ebm_cli.energies.noise_conditional import NoiseConditionalEnergy
from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.langevin import MALA, Langevin
from ebm_cli.samplers.mh import RandomWalkMH
from ebm_cli.samplers.tempering import ParallelTempering
from ebm_cli.trainers.base import CountsGradients
from ebm_cli.trainers.energy_discrepancy import EnergyDiscrepancyTrainer
from ebm_cli.trainers.mle import MLETrainer
from ebm_cli.trainers.nce import NCETrainer
from ebm_cli.trainers.ncsn import NCSNTrainer
from ebm_cli.trainers.score_matching import ScoreMatchingTrainer

B = 16  # data batch
M = 12  # MLE chains (≠ B, so a pass over the chains is told from one over the batch)
DATA = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
SGD = functools.partial(torch.optim.SGD, lr=1e-3)


@dataclass
class Passes:
    """What autograd ran: the points of each x-gradient, the θ-backwards, the forward points."""

    x_points: list[int] = field(default_factory=list)
    theta: int = 0
    forward_points: int = 0

    def per_update(self, n_ref: int, updates: int) -> float:
        """Gradient passes per update, an x-gradient over r·n_ref points counting r."""
        assert all(n % n_ref == 0 for n in self.x_points), (self.x_points, n_ref)
        return (sum(n // n_ref for n in self.x_points) + self.theta) / updates


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> Passes:
    """Record every torch.autograd.grad and Tensor.backward call while the test runs."""
    seen = Passes()
    grad, backward = torch.autograd.grad, torch.Tensor.backward

    def counting_grad(outputs: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        first = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
        seen.x_points.append(first.shape[0])
        return grad(outputs, inputs, *args, **kwargs)

    def counting_backward(self: Tensor, *args: Any, **kwargs: Any) -> None:
        seen.theta += 1
        backward(self, *args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting_grad)
    monkeypatch.setattr(torch.Tensor, "backward", counting_backward)
    return seen


def count_forwards(energy: nn.Module, seen: Passes) -> None:
    """Add the points of every forward of ``energy`` to ``seen.forward_points``."""
    def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        seen.forward_points += args[0].shape[0]
    energy.register_forward_hook(hook)


def mle(sampler: Any, **kwargs: Any) -> MLETrainer:
    torch.manual_seed(0)
    return MLETrainer(MLPEnergy((2,), width=8, depth=1), sampler, DATA, SGD, n_chains=M,
                      warmup_steps=2, **kwargs)


# (name, builder, the points a pass is counted over, the count derived from the settings)
HMC_L, K_STEPS, KL_STEPS, K_TEMPS, P = 3, 2, 2, 3, 3
CASES: list[tuple[str, Callable[[], Any], int, float]] = [
    # init's ∇E + k transitions of L + the loss (a jittered L: test_shared_jitter_… below)
    ("mle_hmc", lambda: mle(HMC(n_leapfrog=HMC_L, jitter_n_leapfrog=False),
                            sampler_steps=K_STEPS), M, 1 + K_STEPS * HMC_L + 1),
    ("mle_mala_noise", lambda: mle(MALA(step_size=0.1), init="noise"), M, 1 + 1 + 1),
    # ULA's init is lazy (0) + k·1 + improved CD's kl_steps + the loss (double backward)
    ("mle_langevin_improved_cd", lambda: mle(Langevin(step_size=0.01), sampler_steps=K_STEPS,
                                             kl_weight=1.0, kl_steps=KL_STEPS), M,
     K_STEPS + KL_STEPS + 1),
    ("mle_mh", lambda: mle(RandomWalkMH(step_size=0.5), sampler_steps=K_STEPS), M, 1),
    # K replicas per chain: the start K + k transitions of K·1 + the loss
    ("mle_tempering_replay", lambda: mle(ParallelTempering(MALA(step_size=0.1), K_TEMPS),
                                         init="replay_buffer", buffer_size=32), M,
     K_TEMPS + K_TEMPS + 1),
    ("mle_hmc_cd", lambda: mle(HMC(n_leapfrog=HMC_L, jitter_n_leapfrog=False), init="data"),
     B, 1 + HMC_L + 1),
    # + 1 for the health ∇E on the clean batch
    ("score_exact", lambda: ScoreMatchingTrainer(MLPEnergy((2,), 8, 1), DATA, SGD), B,
     1 + 1 + 2 + 1),
    ("score_sliced", lambda: ScoreMatchingTrainer(MLPEnergy((2,), 8, 1), DATA, SGD,
                                                  method="sliced", n_projections=P), B,
     1 + 2 * P + 1),
    ("score_denoising", lambda: ScoreMatchingTrainer(MLPEnergy((2,), 8, 1), DATA, SGD,
                                                     method="denoising"), B, 1 + 2),
    ("nce", lambda: NCETrainer(MLPEnergy((2,), 8, 1), DATA, SGD, noise_ratio=2.0), B, 1),
    ("energy_discrepancy", lambda: EnergyDiscrepancyTrainer(MLPEnergy((2,), 8, 1), DATA, SGD,
                                                            n_negatives=4), B, 1),
    ("ncsn", lambda: NCSNTrainer(NoiseConditionalEnergy((2,), n_levels=3, width=8, depth=1), DATA,
                                 SGD), B, 2),
]


@pytest.mark.parametrize(("name", "build", "n_ref", "derived"), CASES, ids=[c[0] for c in CASES])
def test_reported_gradients_are_the_passes_that_ran(
    name: str, build: Callable[[], Any], n_ref: int, derived: float, passes: Passes,
) -> None:
    trainer = build()
    assert isinstance(trainer, CountsGradients)
    assert trainer.gradients_per_update() == 0.0  # before the first update
    count_forwards(trainer.energy_fn, passes)
    g = torch.Generator().manual_seed(1)
    updates = 3  # across the end of MLE's 2-update warm-up
    for i in range(updates):
        trainer.step(DATA[i * B:(i + 1) * B], g)
    ran = passes.per_update(n_ref, updates)
    assert trainer.gradients_per_update() == ran == derived, (name, passes.x_points)
    if name == "mle_mh":  # its energy evaluations are forward passes, not gradients
        assert passes.forward_points >= updates * K_STEPS * M


def test_shared_jitter_counts_the_leapfrog_steps_that_ran(passes: Passes) -> None:
    """HMC's default jitter (one L_t = ⌈u·8⌉ ∈ 5..8 for all chains) costs L_t gradients on CPU:
    the count reported is the passes that ran, and below the 1 + 8 + 1 of unjittered L = 8."""
    trainer = mle(HMC(n_leapfrog=8))
    g = torch.Generator().manual_seed(1)
    for i in range(6):
        trainer.step(DATA[i * B:(i + 1) * B], g)
    ran = passes.per_update(M, 6)
    assert trainer.gradients_per_update() == ran, passes.x_points
    assert 1 + 5 + 1 <= ran < 1 + 8 + 1


def test_a_resumed_count_covers_the_whole_run() -> None:
    trainer = mle(HMC(n_leapfrog=HMC_L, jitter_n_leapfrog=False))
    g = torch.Generator().manual_seed(1)
    trainer.step(DATA[:B], g)
    state = trainer.state_dict()
    resumed = mle(HMC(n_leapfrog=HMC_L, jitter_n_leapfrog=False), sampler_steps=2)
    resumed.load_state_dict(state)
    assert resumed.gradients_per_update() == 1 + HMC_L + 1
    resumed.step(DATA[:B], g)  # one update of 1 + 2L + 1 after one of 1 + L + 1
    assert resumed.gradients_per_update() == (1 + HMC_L + 1 + 1 + 2 * HMC_L + 1) / 2
    legacy = {k: v for k, v in state.items() if k != "gradients"}  # an older checkpoint
    older = mle(HMC(n_leapfrog=HMC_L))
    older.load_state_dict(legacy)
    assert older.gradients_per_update() == 0.0  # counted from the resume on, not guessed

