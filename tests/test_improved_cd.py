"""Improved contrastive divergence (Du et al. 2021): trainers/losses.py and the MLE options."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import Tensor, nn

from ebm_cli.data.toy2d import two_gaussians
from ebm_cli.energies.mlp import MLPEnergy
from ebm_cli.evaluation.quadrature import log_partition_2d, nll
from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.langevin import Langevin
from ebm_cli.trainers.losses import (
    differentiable_langevin,
    kl_sampler_loss,
    nearest_neighbour_entropy_loss,
)
from ebm_cli.trainers.mle import MLETrainer

torch.set_num_threads(1)
DATA = two_gaussians()
ETA, SIGMA = 0.1, 0.3


class Quadratic(nn.Module):
    """E_a(x) = ½ a ‖x‖², one parameter a: every derivative in closed form."""

    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.tensor(a, dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * self.a * (x**2).sum(1)


def _one_step(energy: Quadratic, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """x0 [M, 2], the noise ξ the step draws, and x̃ = x0 − η a x0 + σ ξ with its graph."""
    x0 = torch.randn(64, 2, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    xi = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=x0.dtype)
    x_tilde = differentiable_langevin(energy, x0, 1, ETA, SIGMA,
                                      torch.Generator().manual_seed(seed))
    return x0, xi, x_tilde


def test_the_langevin_step_is_ula_and_differentiable_in_theta() -> None:
    energy = Quadratic(1.5)
    x0, xi, x_tilde = _one_step(energy)
    torch.testing.assert_close(x_tilde.detach(), x0 - ETA * 1.5 * x0 + SIGMA * xi)
    (grad,) = torch.autograd.grad(x_tilde.sum(), energy.a)
    torch.testing.assert_close(grad, (-ETA * x0).sum())  # ∂x̃/∂a = −η x0


def test_kl_term_reaches_theta_through_the_samples_only() -> None:
    # L = mean ½ ā ‖x̃(a)‖² with ā = a frozen: dL/da = mean ā x̃·(−η x0). Without the stop
    # gradient the derivative would add mean ½‖x̃‖² (≈ 0.6 here), so this fails if θ̄ leaked.
    a = 1.5
    energy = Quadratic(a)
    x0, _, x_tilde = _one_step(energy)
    (grad,) = torch.autograd.grad(kl_sampler_loss(energy, x_tilde), energy.a)
    expected = (a * (x_tilde.detach() * (-ETA * x0)).sum(1)).mean()
    torch.testing.assert_close(grad, expected)
    assert abs(float(grad)) > 1e-3  # nonzero through the samples
    # through the energy copy alone (samples detached): no gradient at all
    loss = kl_sampler_loss(energy, x_tilde.detach())
    assert not loss.requires_grad
    assert float(loss) == pytest.approx(float(energy(x_tilde.detach()).mean().detach()))


def test_entropy_term_matches_its_closed_form_gradient() -> None:
    # x̃_i − x̃_j = (1 − ηa)(x0_i − x0_j) + σ(ξ_i − ξ_j) = v; d/da of −½ mean log‖v‖² is
    # −mean v·(−η (x0_i − x0_j)) / ‖v‖², with j the nearest neighbour of i among the x̃.
    energy = Quadratic(1.5)
    x0, _, x_tilde = _one_step(energy, seed=1)
    loss = nearest_neighbour_entropy_loss(x_tilde)
    (grad,) = torch.autograd.grad(loss, energy.a)
    x = x_tilde.detach()
    d = torch.cdist(x, x).fill_diagonal_(math.inf)
    j = d.argmin(1)
    v = x - x[j]
    torch.testing.assert_close(loss.detach(), -torch.log((v**2).sum(1)).mean() / 2)
    expected = -((v * (-ETA * (x0 - x0[j]))).sum(1) / (v**2).sum(1)).mean()
    torch.testing.assert_close(grad, expected)


def _trainer(energy: nn.Module, sampler, **kw) -> MLETrainer:
    return MLETrainer(energy, sampler, DATA.train, functools.partial(torch.optim.Adam, lr=2e-3),
                      n_chains=64, sampler_steps=2, warmup_steps=0, **kw)


def test_mle_with_both_terms_trains_and_their_gradients_are_on_theta() -> None:
    torch.manual_seed(0)
    energy = MLPEnergy((2,), width=32, depth=2)
    trainer = _trainer(energy, Langevin(step_size=0.05), kl_weight=1.0, entropy_weight=0.1,
                       kl_steps=2)
    g = torch.Generator().manual_seed(0)
    for i in range(3):
        out = trainer.step(DATA.train[i * 128 : (i + 1) * 128], g)
        assert all(torch.isfinite(v) and v.ndim == 0 for v in out.values())
    assert {"loss/kl", "loss/entropy"} <= set(out)
    # the KL term alone on the trainer's own differentiable steps: a gradient on every layer
    x_tilde = differentiable_langevin(energy, trainer.negatives(), 2, 0.05, math.sqrt(0.1), g)
    grads = torch.autograd.grad(kl_sampler_loss(energy, x_tilde), list(energy.parameters()),
                                allow_unused=True)
    weights = [gr for gr, p in zip(grads, energy.parameters()) if p.dim() == 2]
    assert all(gr is not None and float(gr.abs().sum()) > 0 for gr in weights)


def test_off_by_default_and_the_same_as_plain_mle() -> None:
    outs = []
    for kw in ({}, {"kl_steps": 3}):  # kl_steps alone changes nothing while both weights are 0
        torch.manual_seed(0)
        trainer = _trainer(MLPEnergy((2,), width=16, depth=2), Langevin(step_size=0.05), **kw)
        outs.append(trainer.step(DATA.train[:64], torch.Generator().manual_seed(0)))
    assert "loss/kl" not in outs[0]
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"kl_weight": -1.0}, "trainer.kl_weight must be >= 0"),
        ({"entropy_weight": -0.1}, "trainer.entropy_weight must be >= 0"),
        ({"kl_steps": 0}, "trainer.kl_steps must be an integer >= 1"),
        ({"kl_step_size": 0.0}, "trainer.kl_step_size must be > 0"),
        ({"kl_weight": 1.0}, "trainer.kl_step_size must be set"),  # HMC lends no ULA step
    ],
)
def test_bad_improved_cd_settings_are_refused(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        _trainer(MLPEnergy((2,), width=8, depth=1), HMC(), **kw)
    assert "\n" not in str(err.value)


def test_another_sampler_with_kl_step_size_runs() -> None:
    torch.manual_seed(0)
    trainer = _trainer(MLPEnergy((2,), width=16, depth=2), HMC(n_leapfrog=2), kl_weight=1.0,
                       kl_step_size=0.01)
    out = trainer.step(DATA.train[:64], torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss/kl"])


@pytest.mark.slow
def test_mle_with_the_balanced_kl_learns_two_gaussians() -> None:
    # KL term (w = 1) with the entropy weighed D = 2 (the −mean log NN distance is Ĥ/D), i.e.
    # the paper's KL(q_θ ‖ p_θ): as test_trainers.test_mle_learns_two_gaussians, < 0.1 nats
    # (a single Gaussian scores 0.72, wrong mode weights 0.7/0.3 score 0.087).
    torch.manual_seed(0)
    trainer = MLETrainer(MLPEnergy((2,), width=64, depth=3), Langevin(step_size=0.05),
                         DATA.train, functools.partial(torch.optim.Adam, lr=2e-3), alpha=0.01,
                         n_chains=256, kl_weight=1.0, entropy_weight=2.0)
    g = torch.Generator().manual_seed(0)
    for _ in range(600):
        idx = torch.randint(0, DATA.train.shape[0], (256,), generator=g)
        out = trainer.step(DATA.train[idx], g)
    assert torch.isfinite(out["loss/kl"]) and torch.isfinite(out["loss/entropy"])
    log_z = log_partition_2d(trainer.energy_fn, DATA.bounds, 200)
    kl = nll(trainer.energy_fn, DATA.test, log_z) + DATA.log_prob(DATA.test).double().mean()
    assert float(kl) < 0.1
