"""Annealed importance sampling (ebm_cli.evaluation.ais): log Z against quadrature in 2-D and
against closed forms in higher dimension, and the run loop's evaluate_high_dim.

Tolerances: AIS returns log Ẑ = log mean(w) with its delta-method standard error
se = sd(w)/(√B mean w) from the B chain weights; |log Ẑ − log Z| < 4·se (a 4-sigma band; the
Jensen bias of log Ẑ is ≈ se²/2, negligible at these se). The quadrature reference is checked
to be converged far below se (|log Z(n) − log Z(2n)| < 1e-4).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ebm_cli.data.images import digits
from ebm_cli.data.toy2d import two_gaussians
from ebm_cli.energies.analytic import GaussianMixture
from ebm_cli.energies.mlp import MLPEnergy
from ebm_cli.evaluation.ais import (
    GaussianBase,
    ais_log_partition,
    evaluate_high_dim,
    log_mean_exp_with_se,
    reverse_ais_log_partition,
    sigmoid_schedule,
)
from ebm_cli.evaluation.quadrature import log_partition_2d
from ebm_cli.samplers.langevin import MALA

BOX = ((-8.0, 8.0), (-8.0, 8.0))


class ConfinedMLP(nn.Module):
    """A random 2-D MLP energy plus a confining quadratic: E = 3·MLP(x) + ‖x‖²/(2·1.5²)."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.mlp = MLPEnergy((2,), width=32, depth=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3 * self.mlp(x) + 0.5 * (x.flatten(1) ** 2).sum(1) / 1.5**2


class Shifted(nn.Module):
    """E(x) + c, so log Z = log Z_E − c."""

    def __init__(self, energy_fn: nn.Module, c: float) -> None:
        super().__init__()
        self.energy_fn, self.c = energy_fn, c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.energy_fn(x) + self.c


def _quadrature(energy_fn: nn.Module) -> float:
    coarse, fine = log_partition_2d(energy_fn, BOX, 400), log_partition_2d(energy_fn, BOX, 800)
    assert abs(float(coarse - fine)) < 1e-4  # converged well below the AIS se
    return float(fine)


@pytest.mark.parametrize("energy_name", ["mlp", "mixture"])
def test_ais_agrees_with_quadrature_in_2d(energy_name: str) -> None:
    energy_fn = ConfinedMLP() if energy_name == "mlp" else Shifted(GaussianMixture(), 2.0)
    data = two_gaussians(n_train=2000, n_test=10).train  # the base is fitted to these
    truth = _quadrature(energy_fn)
    result = ais_log_partition(energy_fn, GaussianBase(data), n_chains=512, n_steps=200,
                               generator=torch.Generator().manual_seed(0))
    se = float(result.log_z_se)
    assert 0 < se < 0.05 and float(result.ess) > 100
    assert abs(float(result.log_z) - truth) < 4 * se, (float(result.log_z), truth, se)


def test_ais_in_16d_with_mala_matches_the_closed_form() -> None:
    """A 16-D two-component mixture (normalised, shifted by c: log Z = −c), base fitted to
    its samples; MALA transitions instead of the default HMC."""
    d, c = 16, 5.0
    mixture = GaussianMixture((d,), means=([1.0] * d, [-1.0] * d), std=0.7)
    data = mixture.sample(4000, torch.Generator().manual_seed(1)).float()
    result = ais_log_partition(Shifted(mixture, c), GaussianBase(data), n_chains=256,
                               n_steps=300, generator=torch.Generator().manual_seed(2),
                               sampler=MALA(step_size=0.05))
    se = float(result.log_z_se)
    assert 0 < se < 0.1
    assert abs(float(result.log_z) + c) < 4 * se, (float(result.log_z), -c, se)


def test_reverse_ais_from_exact_samples_matches_the_closed_form() -> None:
    """Reverse AIS (β from 1 to 0) from exact draws of the same 16-D mixture: E[w'] = 1/Z, so
    −log mean(w') estimates log Z = −c, within 4 se of the reverse weights."""
    d, c = 16, 5.0
    mixture = GaussianMixture((d,), means=([1.0] * d, [-1.0] * d), std=0.7)
    data = mixture.sample(4000, torch.Generator().manual_seed(1)).float()
    exact = mixture.sample(256, torch.Generator().manual_seed(3)).float()
    result = reverse_ais_log_partition(Shifted(mixture, c), GaussianBase(data), exact,
                                       n_steps=300, generator=torch.Generator().manual_seed(4),
                                       sampler=MALA(step_size=0.05))
    se = float(result.log_z_se)
    assert 0 < se < 0.1 and float(result.ess) > 50
    assert abs(float(result.log_z) + c) < 4 * se, (float(result.log_z), -c, se)
    with pytest.raises(ValueError, match="at least 2 samples"):
        reverse_ais_log_partition(mixture, GaussianBase(data), exact[:1], 10, torch.Generator())


def test_schedule_and_weight_summary() -> None:
    betas = sigmoid_schedule(50)
    assert betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()
    log_z, se, ess = log_mean_exp_with_se(torch.full((64,), 3.0, dtype=torch.float64))
    assert float(log_z) == pytest.approx(3.0) and float(se) == 0 and float(ess) == 64
    log_w = torch.tensor([0.0, math.log(3.0)], dtype=torch.float64)  # weights 1 and 3
    log_z, se, ess = log_mean_exp_with_se(log_w)
    assert float(log_z) == pytest.approx(math.log(2.0))
    assert float(se) == pytest.approx(math.sqrt(2.0) / (math.sqrt(2.0) * 2.0))  # sd/(√B mean)
    assert float(ess) == pytest.approx(16 / 10)


def test_gaussian_base_log_prob_and_samples() -> None:
    data = two_gaussians(n_train=3000, n_test=10).train
    base = GaussianBase(data, jitter=0.0)
    ref = torch.distributions.MultivariateNormal(data.double().mean(0), torch.cov(data.double().T))
    x = torch.randn(20, 2)
    assert torch.allclose(base.log_prob(x), ref.log_prob(x.double()), atol=1e-8)
    draws = base.sample(20000, torch.Generator().manual_seed(0))
    assert draws.shape == (20000, 2) and draws.dtype == data.dtype
    # sample mean within 4 standard errors (sd/√n) of μ, per coordinate
    sd = data.double().std(0)
    assert ((draws.double().mean(0) - base.mean).abs() < 4 * sd / math.sqrt(20000)).all()
    with pytest.raises(ValueError, match="eval.ais_chains"):
        ais_log_partition(GaussianMixture(), base, 1, 10, torch.Generator())


class GaussianEnergy(nn.Module):
    """E(x) = −log N(x | μ, s²Σ): normalised (log Z = 0) for any D."""

    def __init__(self, data: torch.Tensor, scale: float) -> None:
        super().__init__()
        flat = data.flatten(1).double()
        cov = torch.cov(flat.T) * scale**2 + 1e-4 * torch.eye(flat.shape[1], dtype=flat.dtype)
        self.dist = torch.distributions.MultivariateNormal(flat.mean(0), cov)
        self.dummy = nn.Parameter(torch.zeros(()))  # so the energy has a device and dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.dist.log_prob(x.flatten(1).double()).to(x.dtype) + 0 * self.dummy


def test_evaluate_high_dim_on_digits_with_a_normalised_gaussian() -> None:
    """64-D: a normalised Gaussian (wider than the AIS base, so the path is not trivial):
    log Z = 0 within 4 se, the reported NLL is the closed-form one, and bits/dim adds log 17."""
    ds = digits()
    energy_fn = GaussianEnergy(ds.train, scale=1.3)
    samples = energy_fn.dist.sample((500,)).float().view(500, 1, 8, 8)
    m = evaluate_high_dim(energy_fn, ds, samples, torch.Generator().manual_seed(0),
                          ais_chains=128, ais_steps=300)
    assert abs(m["log_z_ais"]) < 4 * m["log_z_ais_se"], m
    # reverse AIS from the 500 exact samples (the first 128 are used): log Z = 0 within 4 se
    assert abs(m["log_z_ais_reverse"]) < 4 * m["log_z_ais_reverse_se"], m
    assert m["ais_gap"] == pytest.approx(m["log_z_ais_reverse"] - m["log_z_ais"])
    exact_nll = float(-energy_fn.dist.log_prob(ds.test.flatten(1).double()).mean())
    assert m["test_nll_ais"] == pytest.approx(exact_nll + m["log_z_ais"], abs=1e-6)
    d = 64
    assert m["bits_per_dim"] == pytest.approx((m["test_nll_ais"] + d * math.log(17))
                                              / (d * math.log(2)))
    assert m["bits_per_dim_reverse"] == pytest.approx(
        m["bits_per_dim"] + m["ais_gap"] / (d * math.log(2)))
    for key in ("fd_pca", "classifier_confidence", "classes_covered", "label_entropy",
                "ais_weight_ess", "test_nll_ais_se"):
        assert key in m
