"""Underdamped (kinetic) Langevin (ebm_cli/samplers/kinetic.py): the BAOAB recursion, the
velocity that persists and reverses on rejection, and the stationary law on a Gaussian.

On N(0, σ²) BAOAB's x-marginal is exact for any h < 2σ (Leimkuhler & Matthews 2013, the
harmonic case of its O(h²) configurational bias), while its velocity is biased:
Var v = 1 − h²/(4σ²). So the unadjusted sampler's bias bound on this target is 0 for x and
h²/(4σ²) for v, and both are checked within 4 Monte Carlo standard errors (MCSE = sd/√ESS,
evaluation.diagnostics.mcse_mean); the adjusted sampler must give Var v = 1 at any h.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from ebm_cli.evaluation.diagnostics import mcse_mean
from ebm_cli.samplers.adaptation import warmup
from ebm_cli.samplers.base import (
    ChainState,
    HasDivergences,
    Info,
    MassAdaptable,
    StepSizeAdaptable,
    declares,
    energy_and_grad,
)
from ebm_cli.samplers.kinetic import AdjustedKineticLangevin, KineticLangevin, KineticState

DT = torch.float64
Z = 4.0
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "sampler"


class Gaussian(nn.Module):
    """E(x) = Σ_i x_i²/(2σ_i²), x [B, D] -> [B]."""

    def __init__(self, sd: Tensor) -> None:
        super().__init__()
        self.register_buffer("sd", sd)

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * (x / self.sd).square().sum(1)


SD = torch.tensor([0.5, 2.0], dtype=DT)


@pytest.mark.parametrize(("name", "cls"), [("kinetic_langevin", KineticLangevin),
                                           ("adjusted_kinetic_langevin", AdjustedKineticLangevin)])
def test_configs_instantiate_with_the_class_defaults(name: str, cls: type) -> None:
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    sampler = instantiate(cfg)
    assert type(sampler) is cls
    assert set(cfg.keys()) - {"_target_"} == {f.name for f in fields(cls)}
    assert all(getattr(sampler, f.name) == getattr(cls(), f.name) for f in fields(cls))


def test_declarations() -> None:
    """Only the adjusted form has an acceptance to target (StepSizeAdaptable) and a ΔH to
    report (HasDivergences); neither takes a mass matrix."""
    energy, g = Gaussian(SD), torch.Generator().manual_seed(0)
    x = torch.randn(16, 2, generator=g, dtype=DT)
    for sampler, adaptable in ((KineticLangevin(), False), (AdjustedKineticLangevin(), True)):
        assert isinstance(sampler, StepSizeAdaptable) is adaptable
        assert not isinstance(sampler, MassAdaptable)
        state, info = sampler.step(energy, sampler.init(energy, x), g)
        assert declares(info, Info) and declares(info, HasDivergences) is adaptable
        assert (info.grad_evals == 1).all() and state.velocity.shape == x.shape
    for cls in (KineticLangevin, AdjustedKineticLangevin):
        with pytest.raises(ValueError, match="sampler.friction must be a finite number > 0"):
            cls(friction=0.0)
    with pytest.raises(ValueError, match=r"sampler.target_accept must be in \(0, 1\)"):
        AdjustedKineticLangevin(target_accept=1.0)


def test_baoab_follows_its_recursion_and_carries_the_velocity() -> None:
    """One step from (x, v) with the generator's next ξ: B, A, exact O, A, B."""
    energy, h, gamma = Gaussian(SD), 0.3, 0.7
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 2, generator=g, dtype=DT)
    v = torch.randn(8, 2, generator=g, dtype=DT)
    e, grad = energy_and_grad(energy, x)
    xi = torch.randn(8, 2, generator=torch.Generator().manual_seed(2), dtype=DT)
    c = math.exp(-gamma * h)
    v1 = v - 0.5 * h * grad
    x1 = x + 0.5 * h * v1
    v2 = c * v1 + math.sqrt(1 - c * c) * xi
    x2 = x1 + 0.5 * h * v2
    v3 = v2 - 0.5 * h * energy_and_grad(energy, x2)[1]
    state, info = KineticLangevin(h, gamma).step(
        energy, KineticState(x, e, grad, v), torch.Generator().manual_seed(2))
    torch.testing.assert_close(state.x, x2)
    torch.testing.assert_close(state.velocity, v3)
    torch.testing.assert_close(info.energy, energy(x2))
    # a state from another sampler (no velocity) draws one and continues
    other, _ = KineticLangevin().step(energy, ChainState(x, None, None), g)
    assert other.velocity is not None and torch.isfinite(other.x).all()


def test_adjusted_rejection_keeps_x_and_reverses_the_velocity() -> None:
    """A step far too large is rejected: x stays, v is negated (γ → 0: the O halves keep
    v up to √(1 − c²) ≈ 3e-5 of fresh noise)."""
    energy, g = Gaussian(SD), torch.Generator().manual_seed(3)
    x = torch.randn(64, 2, generator=g, dtype=DT)
    v = torch.randn(64, 2, generator=g, dtype=DT)
    e, grad = energy_and_grad(energy, x)
    sampler = AdjustedKineticLangevin(step_size=40.0, friction=1e-9)
    state, info = sampler.step(energy, KineticState(x, e, grad, v), g)
    assert not info.is_accepted.any()
    torch.testing.assert_close(state.x, x, rtol=0, atol=0)
    torch.testing.assert_close(state.velocity, -v, rtol=0, atol=1e-3)


def _moments(sampler, steps: int, seed: int, n_warmup: int = 0):  # noqa: ANN001, ANN202
    """Time averages of x, x² and v² over 512 chains started at exact draws of the target:
    (mean x, MCSE), (mean x², MCSE), (mean v², MCSE), the sampler after any warm-up."""
    energy, g = Gaussian(SD), torch.Generator().manual_seed(seed)
    x0 = torch.randn(512, 2, generator=g, dtype=DT) * SD
    state = sampler.init(energy, x0)
    if n_warmup:
        sampler, state = warmup(sampler, energy, state, g, n_warmup)
    xs, vs = [], []
    for _ in range(steps):
        state, _ = sampler.step(energy, state, g)
        xs.append(state.x)
        vs.append(state.velocity)
    x, v = torch.stack(xs), torch.stack(vs)  # [T, B, D]
    return ((x.mean((0, 1)).numpy(), mcse_mean(x)), (x.square().mean((0, 1)).numpy(),
            mcse_mean(x.square())), (v.square().mean((0, 1)).numpy(), mcse_mean(v.square())),
            sampler)


@pytest.mark.slow
def test_baoab_is_exact_in_x_on_a_gaussian_and_biased_in_v_by_h2_over_4s2() -> None:
    h = 0.3  # h²/(4σ²) = 0.09 on the sd-0.5 coordinate, 0.0056 on the sd-2 one
    (m, m_se), (x2, x2_se), (v2, v2_se), _ = _moments(KineticLangevin(h, 1.0), 800, seed=4)
    assert np.all(np.abs(m) < Z * m_se), (m, m_se)
    assert np.all(np.abs(x2 - SD.numpy() ** 2) < Z * x2_se), (x2, x2_se)
    v_want = 1 - h**2 / (4 * SD.numpy() ** 2)
    assert np.all(np.abs(v2 - v_want) < Z * v2_se), (v2, v_want, v2_se)
    assert abs(v2[0] - 1.0) > 10 * v2_se[0]  # the O(h²) velocity bias is resolved


@pytest.mark.slow
def test_adjusted_kinetic_langevin_is_exact_at_a_large_step_and_adapts_it() -> None:
    # h = 0.6: BAOAB would give Var v = 1 − 0.36 on the sd-0.5 coordinate; the MH test fixes it
    (m, m_se), (x2, x2_se), (v2, v2_se), _ = _moments(
        AdjustedKineticLangevin(step_size=0.6, friction=0.5), 800, seed=5)
    assert np.all(np.abs(m) < Z * m_se), (m, m_se)
    assert np.all(np.abs(x2 - SD.numpy() ** 2) < Z * x2_se), (x2, x2_se)
    assert np.all(np.abs(v2 - 1.0) < Z * v2_se), (v2, v2_se)
    *_, adapted = _moments(AdjustedKineticLangevin(friction=0.5), 1, seed=6, n_warmup=300)
    energy, g = Gaussian(SD), torch.Generator().manual_seed(7)
    state = adapted.init(energy, torch.randn(512, 2, generator=g, dtype=DT) * SD)
    accept = 0.0
    for _ in range(200):
        state, info = adapted.step(energy, state, g)
        accept += float(info.accept_prob.mean()) / 200
    assert abs(accept - adapted.target_accept) < 0.03, (accept, float(adapted.step_size))
