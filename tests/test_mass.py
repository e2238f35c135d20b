"""Mass matrices (ebm_cli/samplers/mass.py): the metric maps, the within-chain estimate, dense
and low-rank masses in HMC and MALA. Statistical tolerances are Z = 4 Monte Carlo standard
errors (tests/test_samplers.py); float64 throughout."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from ebm_cli.evaluation.diagnostics import mcse_mean
from ebm_cli.samplers.adaptation import warmup
from ebm_cli.samplers.base import MassAdaptable, energy_and_grad
from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.langevin import MALA
from ebm_cli.samplers.mass import (
    DenseInverseMass,
    LowRankInverseMass,
    WithinChainMoments,
    dense_inverse_mass,
    low_rank,
    marginal_std,
    metric,
)

DT = torch.float64
Z = 4.0


class Gaussian(nn.Module):
    """E(x) = ½ xᵀ Σ⁻¹ x, x [B, D] -> [B]."""

    def __init__(self, cov: Tensor) -> None:
        super().__init__()
        self.cov = cov
        self.register_buffer("prec", torch.linalg.inv(cov))

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * ((x @ self.prec) * x).sum(-1)


class TwoModes(nn.Module):
    """½N((∓4, 0), 0.5²I): modes 16 sd apart, so no chain ever crosses (within-mode var 0.25,
    pooled var of x₀ 16.25)."""

    def forward(self, x: Tensor) -> Tensor:
        mu = torch.tensor([[-4.0, 0.0], [4.0, 0.0]], dtype=x.dtype)
        sq = ((x[:, None, :] - mu) ** 2).sum(-1)
        return -torch.logsumexp(-0.5 * sq / 0.25, dim=1)


def rotated(d: int, condition: float, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Σ = Q diag(λ) Qᵀ, Q a random rotation, λ log-spaced with λ_max/λ_min = condition."""
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=DT))
    q = q * torch.sign(torch.diagonal(r))  # Haar
    lam = torch.logspace(-0.5 * math.log10(condition), 0.5 * math.log10(condition), d, dtype=DT)
    return q @ torch.diag(lam) @ q.T, q, lam


def explicit(inv_mass, d: int) -> tuple[Tensor, Tensor]:
    """(A, M⁻¹) as matrices from a Metric's maps (row form: scale(I) has rows (A e_i)ᵀ)."""
    m = metric(inv_mass, torch.zeros(1, d, dtype=DT))
    a = m.scale(torch.eye(d, dtype=DT)).T
    return a, a @ a.T


@pytest.mark.parametrize("kind", ["diag", "dense", "lowrank_full", "lowrank_2"])
def test_metric_maps_agree_with_one_factor(kind: str) -> None:
    """momentum = A⁻ᵀ, velocity = AAᵀ = M⁻¹, whiten = Aᵀ for the same A; dense and a full-rank
    low-rank mass reproduce Σ exactly, a rank-2 one exactly on its two directions."""
    cov, _, _ = rotated(6, 100.0, 0)
    inv_mass = {"diag": cov.diagonal().clone(), "dense": dense_inverse_mass(cov),
                "lowrank_full": low_rank(cov, 6, DT), "lowrank_2": low_rank(cov, 2, DT)}[kind]
    m = metric(inv_mass, torch.zeros(1, 6, dtype=DT))
    eye = torch.eye(6, dtype=DT)
    a, inv = explicit(inv_mass, 6)
    torch.testing.assert_close(m.velocity(eye).T, inv)
    torch.testing.assert_close(m.whiten(eye).T, a.T)
    torch.testing.assert_close(m.momentum(eye).T, torch.linalg.inv(a).T)
    if kind in ("dense", "lowrank_full"):
        torch.testing.assert_close(inv, cov)
    if kind == "lowrank_2":  # exact on span V (in the D^½-scaled space)
        lr = inv_mass
        sd = lr.diag.sqrt()
        v = lr.basis * sd[:, None]  # D^½ v_i: M⁻¹ D^-½ (D^½ v) = D^½ λ v
        torch.testing.assert_close(inv @ (lr.basis / sd[:, None]), v * lr.eigen)
    # each coordinate's scale √diag(M⁻¹), what ChEES measures in (adaptation.ChEES.gradient)
    torch.testing.assert_close(marginal_std(inv_mass), inv.diagonal().sqrt())


def test_within_chain_moments_are_the_average_of_per_chain_variances() -> None:
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(30, 8, 3, generator=g, dtype=DT) * torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    xs = xs + 10 * torch.randn(1, 8, 3, generator=g, dtype=DT)  # chains far apart
    for dense in (False, True):
        m = WithinChainMoments(xs[0], dense=dense)
        for x in xs[1:]:
            m.add(x)
        draws = xs[1:]  # [T, B, D]
        dev = draws - draws.mean(0)
        per_chain = torch.einsum("tbi,tbj->bij", dev, dev) / (draws.shape[0] - 1)
        want = per_chain.mean(0)
        n = m.n
        want = (n / (n + 5)) * want + 1e-3 * (5 / (n + 5)) * torch.eye(3, dtype=DT)
        got = m.covariance()
        torch.testing.assert_close(got, want if dense else want.diagonal())


def _warm(sampler, target, x0: Tensor, seed: int, n: int):
    g = torch.Generator().manual_seed(seed)
    return warmup(sampler, target, sampler.init(target, x0), g, n)


def test_two_modes_mass_is_the_within_mode_variance_and_the_step_size_holds() -> None:
    """Chains split between modes 16 sd apart: the inverse mass is the within-mode variance
    0.25 (the pooled spread would be 16.25 for x₀) and the adapted ε matches that of chains
    all in one mode (it collapsed 6× with the pooled estimate). Tolerances: the one window
    holds 256 chains × 75 draws; with ESS ≥ 1/3 of them the variance's relative sd is
    ≤ √(2/6400) = 1.8 %, so 0.8–1.25 is beyond 10 sd; the step sizes of two exact runs differ
    only by dual averaging's noise (≤ 4 % measured over seeds), the pooled collapse is 6×."""
    g = torch.Generator().manual_seed(1)
    z = 0.5 * torch.randn(256, 2, generator=g, dtype=DT)
    sign = torch.where(torch.arange(256) % 2 == 0, -1.0, 1.0).to(DT)
    both = z + torch.stack([4.0 * sign, torch.zeros(256, dtype=DT)], 1)
    one = z + torch.tensor([4.0, 0.0], dtype=DT)
    sampler = HMC(n_leapfrog=2, adapt_trajectory=False)
    adapted, state = _warm(sampler, TwoModes(), both, 2, 100)
    ratio = adapted.inv_mass / 0.25
    assert ((ratio > 0.8) & (ratio < 1.25)).all(), adapted.inv_mass.tolist()
    assert ((state.x[:, 0] > 0) == (sign > 0)).all()  # no chain changed mode
    reference, _ = _warm(sampler, TwoModes(), one, 2, 100)
    step_ratio = float(adapted.step_size / reference.step_size)
    assert 0.8 < step_ratio < 1.25, (float(adapted.step_size), float(reference.step_size))


@pytest.mark.parametrize("kind", ["dense", "lowrank"])
def test_hmc_with_a_dense_or_low_rank_mass_conserves_energy_to_order_eps2(kind: str) -> None:
    """|ΔH| of one leapfrog trajectory (T = 1) shrinks 4× when ε halves: the kinetic energy,
    momentum draw and drift use the same M⁻¹ (any mismatch leaves an O(1) error)."""
    cov, _, _ = rotated(6, 100.0, 3)
    inv_mass = dense_inverse_mass(cov) if kind == "dense" else low_rank(cov, 2, DT)
    target = Gaussian(cov)
    x0 = torch.linalg.cholesky(cov) @ torch.randn(6, 256, generator=torch.Generator()
                                                  .manual_seed(4), dtype=DT)
    errors = []
    for n in (20, 40, 80):
        sampler = HMC(step_size=1.0 / n, n_leapfrog=n, inv_mass=inv_mass,
                      jitter_n_leapfrog=False)
        _, info = sampler.step(target, sampler.init(target, x0.T), torch.Generator()
                               .manual_seed(5))
        errors.append(float(info.energy_error.abs().mean()))
    assert errors[0] / errors[1] == pytest.approx(4, rel=0.1), errors
    assert errors[1] / errors[2] == pytest.approx(4, rel=0.1), errors


@pytest.mark.parametrize("kind", ["diag", "dense", "lowrank"])
def test_preconditioned_mala_uses_the_hastings_ratio_of_its_proposal(kind: str) -> None:
    """log α = E(x) − E(x') + log N(x | x' − ηM⁻¹g', 2ηM⁻¹) − log N(x' | x − ηM⁻¹g, 2ηM⁻¹),
    computed here from the explicit densities with the proposal rebuilt from the same ξ."""
    cov, _, _ = rotated(5, 50.0, 6)
    inv_mass = {"diag": torch.rand(5, generator=torch.Generator().manual_seed(7),
                                   dtype=DT) + 0.5,
                "dense": dense_inverse_mass(cov), "lowrank": low_rank(cov, 2, DT)}[kind]
    a, inv = explicit(inv_mass, 5)
    target = Gaussian(cov)
    x = torch.randn(64, 5, generator=torch.Generator().manual_seed(8), dtype=DT)
    eta = 0.3
    sampler = MALA(step_size=eta, inv_mass=inv_mass)
    state = sampler.init(target, x)
    _, info = sampler.step(target, state, torch.Generator().manual_seed(9))
    xi = torch.randn(64, 5, generator=torch.Generator().manual_seed(9), dtype=DT)
    e, g = energy_and_grad(target, x)
    x_prop = x - eta * g @ inv.T + math.sqrt(2 * eta) * xi @ a.T
    e_prop, g_prop = energy_and_grad(target, x_prop)
    prec = torch.linalg.inv(2 * eta * inv)

    def log_q(to: Tensor, frm: Tensor, grad: Tensor) -> Tensor:
        d = to - (frm - eta * grad @ inv.T)
        return -0.5 * ((d @ prec) * d).sum(-1)

    want = e - e_prop + log_q(x, x_prop, g_prop) - log_q(x_prop, x, g)
    torch.testing.assert_close(info.log_accept_ratio, want)


def test_samplers_declare_the_mass_and_refuse_bad_settings() -> None:
    assert isinstance(HMC(), MassAdaptable) and isinstance(MALA(), MassAdaptable)
    with pytest.raises(ValueError, match="sampler.mass must be one of diag, dense, lowrank"):
        HMC(mass="full")
    with pytest.raises(ValueError, match="sampler.mass_rank must be an integer >= 1"):
        MALA(mass_rank=0)
    with pytest.raises(ValueError, match="sampler.inv_mass must be symmetric positive definite"):
        HMC(inv_mass=[[1.0, 2.0], [2.0, 1.0]])
    dense = HMC(inv_mass=[[2.0, 0.5], [0.5, 1.0]]).inv_mass  # a config's list of lists
    assert isinstance(dense, DenseInverseMass)
    torch.testing.assert_close(dense.chol @ dense.chol.T, dense.matrix)
    with pytest.raises(ValueError, match="sampler.inv_mass is .* but the event"):
        HMC(inv_mass=dense).init(Gaussian(torch.eye(3, dtype=DT)), torch.zeros(4, 3, dtype=DT))


@pytest.mark.parametrize("kind", ["dense", "lowrank"])
def test_an_inverse_mass_survives_a_weights_only_checkpoint(kind: str, tmp_path) -> None:
    cov, _, _ = rotated(4, 10.0, 10)
    inv_mass = dense_inverse_mass(cov) if kind == "dense" else low_rank(cov, 2, DT)
    torch.save({"m": inv_mass}, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=True)["m"]
    assert type(back) is type(inv_mass)
    assert all(torch.equal(a, b) for a, b in zip(back, inv_mass))
    assert isinstance(back, (DenseInverseMass, LowRankInverseMass))


def _variance_errors(sampler, cov: Tensor, q: Tensor, lam: Tensor, seed: int):
    """Warm up from N(0, I) and draw; per coordinate and along the widest eigenvector:
    (estimate − truth, MCSE) of the mean of squares (the mean is 0, known)."""
    d = cov.shape[0]
    target = Gaussian(cov)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(512, d, generator=g, dtype=DT)
    adapted, state = warmup(sampler, target, sampler.init(target, x0), g, 600)
    xs = []
    for _ in range(400):
        state, _ = adapted.step(target, state, g)
        xs.append(state.x)
    trace = torch.stack(xs)  # [T, B, D]
    widest = trace @ q[:, -1:]  # [T, B, 1], variance λ_max
    sq = torch.cat([trace, widest], -1).square()
    truth = torch.cat([cov.diagonal(), lam[-1:]])
    return sq.mean((0, 1)) - truth, torch.from_numpy(mcse_mean(sq)), truth


@pytest.mark.slow
def test_dense_mass_recovers_a_rotated_ill_conditioned_gaussian() -> None:
    """20-D, random rotation, variance condition number 1e4 (sd 0.1 … 10): HMC with a dense
    mass gets every coordinate's variance and that of the widest direction within Z·MCSE
    (measured: max |error|/MCSE 2.3, widest 1.009 of λ_max); the diagonal mass, with the
    same warm-up, draws and L = 2, stays well short of the widest variance (measured 0.35 of
    it, ≈ 30 MCSE off)."""
    cov, q, lam = rotated(20, 1e4, 11)
    dense = HMC(n_leapfrog=2, mass="dense", adapt_trajectory=False)
    err, se, truth = _variance_errors(dense, cov, q, lam, 12)
    assert (err.abs() < Z * se).all(), (err / se).tolist()
    diag = HMC(n_leapfrog=2, mass="diag", adapt_trajectory=False)
    err, se, truth = _variance_errors(diag, cov, q, lam, 12)
    assert err[-1] + truth[-1] < 0.5 * truth[-1], (err[-1] + truth[-1], truth[-1])
    assert err[-1].abs() > Z * se[-1]


def test_a_resumed_sampling_run_keeps_the_adapted_dense_mass_and_length(tmp_path) -> None:
    """trainer=none: the checkpoint (read with weights_only=True) restores warm-up's dense mass,
    step size and L, and the resumed chains continue exactly."""
    from ebm_cli.trainers.sampling import SamplingOnly

    cov, _, _ = rotated(3, 10.0, 13)

    def run() -> SamplingOnly:
        return SamplingOnly(Gaussian(cov), HMC(n_leapfrog=3, mass="dense"), (3,), dtype=DT,
                            n_chains=64, warmup_steps=40, trace_chains=8)

    first = run()
    first.step(torch.Generator().manual_seed(14))  # warm-up, then one recorded step
    assert isinstance(first.sampler.inv_mass, DenseInverseMass)
    torch.save(first.state_dict(), tmp_path / "c.pt")
    second = run()
    second.load_state_dict(torch.load(tmp_path / "c.pt", weights_only=True))
    a, b = first.sampler, second.sampler
    assert isinstance(b.inv_mass, DenseInverseMass) and b.n_leapfrog == a.n_leapfrog
    assert all(torch.equal(u, v) for u, v in zip(a.inv_mass, b.inv_mass))
    assert torch.equal(torch.as_tensor(a.step_size), torch.as_tensor(b.step_size))
    ga, gb = torch.Generator().manual_seed(15), torch.Generator().manual_seed(15)
    for _ in range(3):
        first.step(ga)
        second.step(gb)
    torch.testing.assert_close(first.state.x, second.state.x, rtol=0, atol=0)
