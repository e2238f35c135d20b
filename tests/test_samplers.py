"""Exactness and contract tests of the MCMC samplers (ebm_cli/samplers).

Every statistical tolerance is 4 Monte Carlo standard errors (MCSE). For a time average over
batched chains MCSE = sd/√ESS with the ESS for the mean from arviz-stats
(evaluation.diagnostics.mcse_mean / ess_mean); for a mode weight it is the binomial
√(p(1−p)/ESS). An exact sampler misses a 4-MCSE band with probability ≈ 6e-5 per checked
quantity; seeds are fixed, so the outcome is deterministic. Covariances are checked as means of
the products (x_i − μ_i)(x_j − μ_j) with the true μ, whose expectation is exactly Σ_ij.
Everything runs in float64.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from ebm_cli.evaluation.diagnostics import ess_mean, mcse_mean
from ebm_cli.samplers.adaptation import warmup
from ebm_cli.samplers.base import (
    acceptance_probability,
    energy_and_grad,
    evaluated,
    metropolis_accept,
    metropolis_test,
    select,
)
from ebm_cli.samplers.compiled import EagerEnergy
from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.langevin import MALA, Langevin
from ebm_cli.samplers.mh import IndependenceMH, RandomWalkMH

DT = torch.float64
Z = 4.0  # tolerance in Monte Carlo standard errors (see module docstring)


class Gaussian(nn.Module):
    """E(x) = ½ (x − μ)ᵀ Σ⁻¹ (x − μ), x [B, D] -> [B]."""

    def __init__(self, mean: Tensor, cov: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("prec", torch.linalg.inv(cov))
        self.cov = cov

    def forward(self, x: Tensor) -> Tensor:
        d = x - self.mean
        return 0.5 * ((d @ self.prec) * d).sum(-1)


class Mixture(nn.Module):
    """E(x) = −log Σ_k w_k N(x | μ_k, σ²I) (up to a constant), x [B, 2] -> [B]."""

    def __init__(self, means: Tensor, std: float, weights: Tensor) -> None:
        super().__init__()
        self.register_buffer("means", means)
        self.register_buffer("log_w", weights.log())
        self.std, self.weights = std, weights

    def forward(self, x: Tensor) -> Tensor:
        sq = ((x[:, None, :] - self.means) ** 2).sum(-1)  # [B, K]
        return -torch.logsumexp(self.log_w - 0.5 * sq / self.std**2, dim=1)

    def moments(self) -> tuple[Tensor, Tensor]:
        w, mu = self.weights, self.means
        mean = (w[:, None] * mu).sum(0)
        second = (w[:, None, None] * (mu[:, :, None] * mu[:, None, :])).sum(0)
        cov = second + self.std**2 * torch.eye(2, dtype=DT) - mean[:, None] * mean[None, :]
        return mean, cov


def gaussian_2d() -> Gaussian:
    """sd (1, 2), correlation 0.8, mean (1, −1)."""
    cov = torch.tensor([[1.0, 1.6], [1.6, 4.0]], dtype=DT)
    return Gaussian(torch.tensor([1.0, -1.0], dtype=DT), cov)


def mixture_2d() -> Mixture:
    """Weights (0.3, 0.7) at (∓2, 0), σ = 0.8."""
    means = torch.tensor([[-2.0, 0.0], [2.0, 0.0]], dtype=DT)
    return Mixture(means, 0.8, torch.tensor([0.3, 0.7], dtype=DT))


SCALES_10D = torch.logspace(-1, 1, 10, dtype=DT)  # sd 0.1 … 10


def gaussian_10d() -> Gaussian:
    return Gaussian(torch.zeros(10, dtype=DT), torch.diag(SCALES_10D**2))


def run(sampler, energy_fn, x0, seed, n_warmup, n_draws):
    """Warm up (adapting) then collect n_draws states -> (adapted sampler, trace [T, B, D])."""
    g = torch.Generator().manual_seed(seed)
    state = sampler.init(energy_fn, x0)
    sampler, state = warmup(sampler, energy_fn, state, g, n_warmup)
    xs = []
    for _ in range(n_draws):
        state, _ = sampler.step(energy_fn, state, g)
        xs.append(state.x)
    return sampler, torch.stack(xs)


def assert_moments(trace: Tensor, mean: Tensor, cov: Tensor, label: str) -> None:
    """|mean error| and |covariance error| below Z·MCSE (ESS-based) for every entry."""
    err = trace.mean((0, 1)) - mean
    se = torch.from_numpy(mcse_mean(trace))
    assert (err.abs() < Z * se).all(), f"{label}: mean error {err.tolist()} vs MCSE {se.tolist()}"
    i, j = torch.triu_indices(mean.numel(), mean.numel())
    d = trace - mean
    prods = d[..., i] * d[..., j]  # [T, B, K], E = Σ_ij
    err = prods.mean((0, 1)) - cov[i, j]
    se = torch.from_numpy(mcse_mean(prods))
    bad = (err.abs() >= Z * se).nonzero().flatten().tolist()
    assert not bad, f"{label}: covariance entries {bad} off: {err[bad].tolist()} vs MCSE {se[bad]}"


def start(b: int, d: int, scale: float, seed: int) -> Tensor:
    return scale * torch.randn(b, d, generator=torch.Generator().manual_seed(seed), dtype=DT)


# (name, sampler for the Gaussian, sampler for the mixture, chains, warm-up, draws)
SAMPLERS_2D = [
    ("rw_mh", RandomWalkMH(), RandomWalkMH(), 2048, 300, 300),
    ("independence_mh", IndependenceMH([1.0, -1.0], [2.0, 3.0]), IndependenceMH(0.0, [3.0, 2.0]),
     2048, 100, 300),
    ("hmc", HMC(n_leapfrog=5), HMC(n_leapfrog=5), 1024, 200, 200),
    ("hmc_jitter", HMC(n_leapfrog=5, jitter=0.2, jitter_n_leapfrog=True),
     HMC(n_leapfrog=5, jitter=0.2, jitter_n_leapfrog=True), 1024, 200, 200),
    ("hmc_per_chain_jitter", HMC(n_leapfrog=5, shared_n_leapfrog=False),
     HMC(n_leapfrog=5, shared_n_leapfrog=False), 1024, 200, 200),
    ("mala", MALA(), MALA(), 2048, 300, 300),
]


@pytest.mark.parametrize("case", SAMPLERS_2D, ids=[c[0] for c in SAMPLERS_2D])
def test_correlated_gaussian_2d(case) -> None:
    name, sampler, _, b, n_warmup, n_draws = case
    target = gaussian_2d()
    _, trace = run(sampler, target, start(b, 2, 2.0, 0), 1, n_warmup, n_draws)
    assert_moments(trace, target.mean, target.cov, name)


@pytest.mark.parametrize("case", SAMPLERS_2D, ids=[c[0] for c in SAMPLERS_2D])
def test_mixture_2d_moments_and_mode_weights(case) -> None:
    name, _, sampler, b, n_warmup, n_draws = case
    target = mixture_2d()
    _, trace = run(sampler, target, start(b, 2, 3.0, 2), 3, n_warmup, n_draws)
    mean, cov = target.moments()
    assert_moments(trace, mean, cov, name)
    # P(x₀ > 0) = Σ_k w_k Φ(μ_k0/σ): 0.6975, the heavy mode's weight blurred by the overlap
    p = float((target.weights * torch.special.ndtr(target.means[:, 0] / target.std)).sum())
    indicator = (trace[..., :1] > 0).to(DT)  # [T, B, 1]
    se = math.sqrt(p * (1 - p) / float(ess_mean(indicator)[0]))  # binomial sd / √ESS
    p_hat = float(indicator.mean())
    assert abs(p_hat - p) < Z * se, f"{name}: P(x0>0) {p_hat:.4f} vs {p:.4f} ± {se:.4f}"


def test_hmc_adapted_diagonal_mass_10d() -> None:
    """Scales 0.1…10: converges from N(0, I) only with the warm-up's diagonal mass."""
    target = gaussian_10d()
    sampler = HMC(n_leapfrog=10, jitter=0.2, adapt_trajectory=False)  # the mass is the subject
    adapted, trace = run(sampler, target, start(1024, 10, 1.0, 4), 5, 500, 300)
    # the last slow window sees ≥ 1024 × 200 draws: its variance is within a few % of s²
    ratio = adapted.inv_mass / SCALES_10D**2
    assert ((ratio > 0.8) & (ratio < 1.25)).all(), f"inv_mass / s² = {ratio.tolist()}"
    assert_moments(trace, target.mean, target.cov, "hmc 10-d")


def test_independence_mh_10d() -> None:
    """Proposal 1.2× the target scales: bounded weights, fast mixing even at 10-D."""
    target = gaussian_10d()
    sampler = IndependenceMH(0.0, (1.2 * SCALES_10D).tolist())
    _, trace = run(sampler, target, start(2048, 10, 1.0, 6), 7, 100, 200)
    assert_moments(trace, target.mean, target.cov, "independence 10-d")


@pytest.mark.parametrize("sampler", [RandomWalkMH(), MALA()], ids=["rw_mh", "mala"])
def test_scalar_step_samplers_keep_the_10d_target_invariant(sampler) -> None:
    """With one scalar step size RW-MH and MALA need ~10⁴ steps per independent draw of the
    sd-10 coordinate, so convergence from afar is out of reach of a fast test. What a fast test
    can check is exactness itself: chains started with exact draws must stay distributed as the
    target (stationarity). The step size is adapted on separate chains first."""
    target = gaussian_10d()
    g = torch.Generator().manual_seed(8)
    state = sampler.init(target, start(1024, 10, 1.0, 9))
    adapted, _ = warmup(sampler, target, state, g, 300)
    exact = start(2048, 10, 1.0, 10) * SCALES_10D  # iid draws from the target
    state = adapted.init(target, exact)
    xs = []
    for _ in range(300):
        state, _ = adapted.step(target, state, g)
        xs.append(state.x)
    assert_moments(torch.stack(xs), target.mean, target.cov, f"{type(sampler).__name__} 10-d")


def ula_variance(s2: float, eta: float, temperature: float = 1.0) -> float:
    """Stationary variance of ULA on N(0, s²): x' = (1 − η/s²) x + σ ξ is AR(1), so
    v = σ²/(1 − (1 − η/s²)²) = T s²/(1 − η/(2s²)) with T = σ²/(2η)."""
    return temperature * s2 / (1 - eta / (2 * s2))


def ula_trace(sampler: Langevin, scales: Tensor, seed: int) -> Tensor:
    """4096 chains from N(0, s²), 300 burn-in steps (residual factor (1−η/s²)^600 < 1e-5 at
    the smallest η/s² = 0.025), then 400 draws."""
    target = Gaussian(torch.zeros(2, dtype=DT), torch.diag(scales**2))
    _, trace = run(sampler, target, start(4096, 2, 1.0, seed) * scales, seed + 1, 300, 400)
    return trace


def test_ula_bias_matches_closed_form_and_shrinks_with_step_size() -> None:
    scales = torch.tensor([1.0, 2.0], dtype=DT)
    biases = []
    for eta in (0.4, 0.2, 0.1):
        trace = ula_trace(Langevin(step_size=eta), scales, 11)
        sq = trace.square()  # E[x²] = v, the mean is 0
        v_hat, se = sq.mean((0, 1)), torch.from_numpy(mcse_mean(sq))
        v = torch.tensor([ula_variance(s**2, eta) for s in scales.tolist()], dtype=DT)
        assert ((v_hat - v).abs() < Z * se).all(), f"η={eta}: {v_hat.tolist()} vs {v.tolist()}"
        bias = v_hat[0] - 1.0  # the s = 1 coordinate: 0.25, 0.111, 0.053 in theory
        assert bias > Z * se[0], f"η={eta}: the O(η) bias {bias:.4f} must be resolved"
        biases.append(bias)
    assert biases[0] > biases[1] > biases[2]


def test_langevin_temperature_scales_the_stationary_variance() -> None:
    eta, sigma = 0.1, 0.3
    sampler = Langevin(step_size=eta, noise_scale=sigma)
    assert sampler.temperature == pytest.approx(sigma**2 / (2 * eta))
    assert Langevin(step_size=eta).temperature == 1.0
    scales = torch.tensor([1.0, 2.0], dtype=DT)
    trace = ula_trace(sampler, scales, 12)
    sq = trace.square()
    v_hat, se = sq.mean((0, 1)), torch.from_numpy(mcse_mean(sq))
    v = [ula_variance(s**2, eta, sampler.temperature) for s in scales.tolist()]
    assert ((v_hat - torch.tensor(v, dtype=DT)).abs() < Z * se).all(), (v_hat.tolist(), v)


def test_langevin_grad_clip_bounds_each_chains_gradient_norm() -> None:
    """With grad_clip c the drift is η·g·min(1, c/‖g‖) per chain (norm over the event)."""
    target = Gaussian(torch.zeros(2, dtype=DT), torch.eye(2, dtype=DT))  # ∇E = x
    x = torch.tensor([[30.0, 40.0], [0.3, 0.4]], dtype=DT)  # ‖g‖ = 50 and 0.5
    sampler = Langevin(step_size=0.1, noise_scale=1e-12, grad_clip=1.0)
    state, _ = sampler.step(target, sampler.init(target, x), torch.Generator().manual_seed(0))
    expected = torch.tensor([[30.0 - 0.1 * 0.6, 40.0 - 0.1 * 0.8], [0.27, 0.36]], dtype=DT)
    torch.testing.assert_close(state.x, expected, rtol=0, atol=1e-10)


class Counting(nn.Module):
    """Wraps an energy and counts forward calls with and without autograd."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.with_grad = 0
        self.without_grad = 0

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            self.with_grad += 1
        else:
            self.without_grad += 1
        return self.inner(x)


@pytest.mark.parametrize(
    ("sampler", "grads", "energies"),
    [
        (RandomWalkMH(), 0, 1),
        (IndependenceMH(), 0, 1),
        (HMC(n_leapfrog=7, jitter_n_leapfrog=False), 7, 0),
        (HMC(n_leapfrog=7, jitter=0.3, shared_n_leapfrog=False), 7, 0),
        (MALA(), 1, 0),
        (Langevin(), 1, 0),
    ],
    ids=["rw_mh", "independence_mh", "hmc", "hmc_jitter", "mala", "ula"],
)
def test_energy_and_gradient_evaluations_per_step(sampler, grads: int, energies: int) -> None:
    energy_fn = Counting(gaussian_2d())
    g = torch.Generator().manual_seed(0)
    state = sampler.init(energy_fn, start(64, 2, 1.0, 0))
    energy_fn.with_grad = energy_fn.without_grad = 0
    for _ in range(5):
        state, info = sampler.step(energy_fn, state, g)
    assert (energy_fn.with_grad, energy_fn.without_grad) == (5 * grads, 5 * energies)
    assert (info.grad_evals == grads).all()  # every Info counts its gradients
    assert info.accept_prob.shape == info.is_accepted.shape == (64,)
    assert info.is_accepted.dtype == torch.bool


def test_metropolis_test_is_the_metropolis_event() -> None:
    """log u < log α with the generator's u decides exactly as u < min(1, α) (same draws);
    NaN is a rejection; min(1, α) read from the Info matches metropolis_accept's."""
    log_ratio = torch.randn(4096, dtype=DT, generator=torch.Generator().manual_seed(1)) * 3
    log_ratio[::7] = math.nan
    log_ratio[1::11] = -math.inf
    log_ratio[2::13] = math.inf
    prob, accepted, is_nan = metropolis_accept(log_ratio, torch.Generator().manual_seed(2))
    got = metropolis_test(log_ratio, torch.Generator().manual_seed(2))
    assert torch.equal(got, accepted) and not got[is_nan].any()
    torch.testing.assert_close(acceptance_probability(log_ratio), prob, rtol=0, atol=0)


@pytest.mark.parametrize("shape_dtype", [((257, 2), torch.float32), ((257, 1), torch.float64),
                                         ((257, 3), torch.float32), ((257, 2, 2), DT)])
def test_select_is_a_bitwise_per_chain_where(shape_dtype) -> None:
    """select (with its int64 path for 8-byte events) copies every bit of the chosen rows:
    NaN, ±inf and −0.0 included."""
    shape, dtype = shape_dtype
    g = torch.Generator().manual_seed(0)
    new, old = (torch.randn(shape, generator=g, dtype=dtype) for _ in range(2))
    new.view(-1)[::5], old.view(-1)[1::7], new.view(-1)[2::9] = math.nan, -0.0, -math.inf
    mask = torch.rand(shape[0], generator=g) < 0.5
    got = select(mask, new, old)
    want = torch.where(mask.view(-1, *([1] * (len(shape) - 1))), new, old)
    assert got.shape == new.shape and got.dtype == dtype
    bits = torch.int64 if dtype == torch.float64 else torch.int32
    assert torch.equal(got.view(bits), want.view(bits))


def test_ula_is_lazy_and_follows_the_euler_maruyama_recursion() -> None:
    """init evaluates nothing; each step costs one gradient, at its start, and leaves x'
    unevaluated; the chain is x' = x − η ∇E(x) + √(2η) ξ with ξ from the generator."""
    energy_fn = Counting(gaussian_2d())
    sampler, eta = Langevin(step_size=0.1), 0.1
    state = sampler.init(energy_fn, start(64, 2, 1.0, 0))
    assert (energy_fn.with_grad, energy_fn.without_grad) == (0, 0)
    assert state.energy is None and state.grad is None
    g, g_ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for k in range(1, 4):
        x = state.x
        state, info = sampler.step(energy_fn, state, g)
        assert (energy_fn.with_grad, energy_fn.without_grad) == (k, 0)
        assert state.energy is None and state.grad is None
        energy, grad = energy_and_grad(energy_fn.inner, x)
        torch.testing.assert_close(info.energy, energy, rtol=0, atol=0)  # E at the start
        noise = torch.randn(x.shape, generator=g_ref, dtype=DT)
        torch.testing.assert_close(state.x, x - eta * grad + math.sqrt(2 * eta) * noise)
    assert info.accept_prob.eq(1).all() and info.is_accepted.all() and not info.is_nan.any()


@pytest.mark.parametrize(
    "sampler", [RandomWalkMH(), IndependenceMH(), HMC(n_leapfrog=3), MALA(), Langevin()],
    ids=["rw_mh", "independence_mh", "hmc", "mala", "ula"],
)
def test_every_sampler_continues_from_a_lazy_state(sampler) -> None:
    """A state left unevaluated by ULA (energy and grad None) is evaluated by the next step."""
    target = gaussian_2d()
    g = torch.Generator().manual_seed(0)
    ula = Langevin(step_size=0.05)
    state, _ = ula.step(target, ula.init(target, start(32, 2, 1.0, 0)), g)
    assert state.energy is None
    filled = evaluated(target, state)
    torch.testing.assert_close(filled.energy, target(state.x), rtol=0, atol=0)
    state, info = sampler.step(target, state, g)
    assert info.energy.shape == (32,) and torch.isfinite(info.energy).all()


class Beyond(nn.Module):
    """½‖x‖², but ``value`` (NaN: a broken network in miniature; +inf: an energy that
    overflows, as Rosenbrock's walls do in float32) where x₀ > 1."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: Tensor) -> Tensor:
        e = 0.5 * x.pow(2).sum(-1)
        return torch.where(x[:, 0] > 1.0, torch.full_like(e, self.value), e)


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize(
    "sampler",
    [RandomWalkMH(step_size=1.0), IndependenceMH(scale=2.0), HMC(step_size=0.5), MALA(0.5)],
    ids=["rw_mh", "independence_mh", "hmc", "mala"],
)
def test_a_non_finite_proposal_energy_is_a_counted_rejection_with_finite_info(
        sampler, value: float) -> None:
    # log α = NaN or −inf (or NaN, where ∞ − ∞ or a NaN gradient enters): rejected (house rule
    # 4), a NaN counted in is_nan, and every Info field a statistic is made of — accept_prob,
    # the energy of the new state — stays finite; HMC flags the transition divergent.
    energy_fn = Beyond(value)
    g = torch.Generator().manual_seed(0)
    state = sampler.init(energy_fn, torch.zeros(256, 2, dtype=DT))
    n_bad = 0
    for _ in range(20):
        state, info = sampler.step(energy_fn, state, g)
        bad = ~torch.isfinite(info.log_accept_ratio)  # [B]
        n_bad += int(bad.sum())
        assert not info.is_accepted[bad].any()
        assert torch.equal(info.is_nan, torch.isnan(info.log_accept_ratio))
        assert torch.isfinite(info.accept_prob).all() and torch.isfinite(info.energy).all()
        assert torch.isfinite(state.energy).all() and (state.x[:, 0] <= 1.0).all()
        if isinstance(sampler, HMC):
            assert info.is_divergent[bad].all()
    assert n_bad > 0


def test_hmc_flags_divergent_transitions() -> None:
    target = gaussian_2d()
    g = torch.Generator().manual_seed(0)
    # far beyond the stability limit 2·sd_min, 5 steps for every chain (no jittered L_b = 1)
    sampler = HMC(step_size=5.0, n_leapfrog=5, jitter_n_leapfrog=False)
    state = sampler.init(target, start(128, 2, 1.0, 0))
    state, info = sampler.step(target, state, g)
    assert info.is_divergent.all() and not info.is_accepted.any()
    assert (info.energy_error.abs() > 1000).all()
    _, info = HMC(step_size=0.1).step(target, state, g)
    assert not info.is_divergent.any()
    torch.testing.assert_close(info.step_size, torch.full((128,), 0.1, dtype=DT))


def test_hmc_jitter_draws_per_chain_step_sizes_and_lengths() -> None:
    target = gaussian_2d()
    sampler = HMC(step_size=0.2, n_leapfrog=8, jitter=0.5, shared_n_leapfrog=False,
                  length_floor=0.5)
    g = torch.Generator().manual_seed(0)
    _, info = sampler.step(target, sampler.init(target, start(4096, 2, 1.0, 0)), g)
    assert info.step_size.min() >= 0.1 and info.step_size.max() < 0.3
    assert info.step_size.unique().numel() > 1000  # per chain, not one shared draw
    assert set(info.n_leapfrog.unique().tolist()) == set(range(5, 9))  # ⌈u·8⌉, u ∈ (½, 1]
    assert (info.grad_evals == 8).all()


def test_hmc_shared_jitter_runs_one_length_for_all_chains_and_pays_only_its_gradients() -> None:
    """shared_n_leapfrog: one L_t = ⌈u·8⌉, u ~ U(½, 1], per transition for every chain (so
    L_t ∈ 5..8), exactly L_t gradients on CPU, and the same result as the masked pass of 8
    batched steps (what a compiled graph or CUDA runs) with every chain frozen after L_t."""
    energy_fn = Counting(gaussian_2d())
    sampler = HMC(step_size=0.3, n_leapfrog=8, length_floor=0.5)
    g = torch.Generator().manual_seed(0)
    state = sampler.init(energy_fn, start(256, 2, 1.0, 0))
    lengths = []
    for _ in range(40):
        prepared = sampler.prepare(energy_fn, state)
        draws = sampler.draws(prepared, g)
        energy_fn.with_grad = 0
        new, info = sampler.kernel(EagerEnergy(energy_fn), prepared, draws)
        n = int(info.n_leapfrog[0])
        assert draws.fraction.ndim == 0 and energy_fn.with_grad == n
        assert (info.n_leapfrog == n).all() and (info.grad_evals == n).all()
        per_chain = sampler.kernel(EagerEnergy(energy_fn), prepared,
                                   draws._replace(fraction=draws.fraction.expand(256)))
        assert (per_chain[1].grad_evals == 8).all()  # masked: the batched 8 steps are paid
        for a, b in zip(new, per_chain[0]):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        lengths.append(n)
        state = new
    assert set(lengths) == set(range(5, 9))  # each has chance ¼ per draw: P(one missing) < 1e-4


def test_hmc_default_floor_jitters_a_configured_length_from_one_step() -> None:
    """length_floor None (the default) with a configured L: u ~ U(0, 1], L_t = ⌈u·8⌉ ∈ 1..8
    (MLE's negatives); warm-up's ChEES sets its own floor (test_adaptation)."""
    target = gaussian_2d()
    sampler = HMC(step_size=0.3, n_leapfrog=8)
    assert sampler.length_floor is None
    g = torch.Generator().manual_seed(0)
    state = sampler.init(target, start(64, 2, 1.0, 0))
    lengths = set()
    for _ in range(80):
        state, info = sampler.step(target, state, g)
        lengths.add(int(info.n_leapfrog[0]))
    assert lengths == set(range(1, 9))  # each has chance 1/8 per draw: P(one missing) < 2e-4


@pytest.mark.parametrize(
    "sampler",
    [RandomWalkMH(), IndependenceMH(), HMC(inv_mass=[1.0] * 6, jitter=0.1), MALA(), Langevin()],
    ids=["rw_mh", "independence_mh", "hmc", "mala", "ula"],
)
def test_multi_dimensional_events(sampler) -> None:
    """Chains [B, 2, 3]: per-chain quantities reduce over the whole event."""
    target = Gaussian(torch.zeros(6, dtype=DT), torch.eye(6, dtype=DT))

    class Flat(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return target(x.flatten(1))

    g = torch.Generator().manual_seed(0)
    state = sampler.init(Flat(), torch.zeros(32, 2, 3, dtype=DT))
    state, info = sampler.step(Flat(), state, g)
    assert state.x.shape == (32, 2, 3)
    if isinstance(sampler, Langevin):  # lazy: x' is evaluated by the next step
        assert state.energy is None and state.grad is None
    else:
        assert state.energy.shape == (32,)
    assert all(v.shape == (32,) for v in info)
    assert info.accept_prob.shape == info.is_nan.shape == (32,)


def test_hmc_rejects_inv_mass_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="sampler.inv_mass has 3 entries"):
        HMC(inv_mass=[1.0, 2.0, 3.0]).init(gaussian_2d(), torch.zeros(4, 2, dtype=DT))


def test_same_seed_same_chains_and_warmup_returns_fixed_sampler() -> None:
    target = gaussian_2d()
    sampler = HMC(n_leapfrog=3, jitter=0.1)
    a = run(sampler, target, start(64, 2, 1.0, 0), 1, 40, 5)
    b = run(sampler, target, start(64, 2, 1.0, 0), 1, 40, 5)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    adapted = a[0]
    assert adapted is not sampler and sampler.inv_mass is None  # replace, never mutate
    assert adapted.inv_mass is not None and adapted.inv_mass.shape == (2,)
    assert isinstance(adapted.step_size, Tensor) and adapted.step_size.ndim == 0


@pytest.mark.parametrize(
    ("cls", "kwargs", "message"),
    [
        (RandomWalkMH, {"step_size": -1.0}, "sampler.step_size must be a finite number > 0"),
        (RandomWalkMH, {"target_accept": 1.0}, r"sampler.target_accept must be in \(0, 1\)"),
        (IndependenceMH, {"scale": [1.0, 0.0]}, "sampler.scale must be > 0"),
        (IndependenceMH, {"loc": "a"}, "sampler.loc must be a number or a list"),
        (HMC, {"n_leapfrog": 0}, "sampler.n_leapfrog must be an integer >= 1"),
        (HMC, {"n_leapfrog": 2.5}, "sampler.n_leapfrog must be an integer >= 1"),
        (HMC, {"jitter": 1.0}, r"sampler.jitter must be in \[0, 1\)"),
        (HMC, {"inv_mass": [1.0, -1.0]}, "sampler.inv_mass must be > 0"),
        (HMC, {"jitter_n_leapfrog": "yes"}, "sampler.jitter_n_leapfrog must be true or false"),
        (HMC, {"max_energy_error": 0.0}, "sampler.max_energy_error must be a finite number > 0"),
        (Langevin, {"noise_scale": -0.1}, "sampler.noise_scale must be a finite number > 0"),
        (Langevin, {"grad_clip": 0.0}, "sampler.grad_clip must be a finite number > 0"),
        (Langevin, {"step_size": float("nan")}, "sampler.step_size must be a finite number"),
        (MALA, {"step_size": "big"}, "sampler.step_size must be a number > 0"),
    ],
)
def test_bad_hyperparameters_fail_with_one_line(cls, kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        cls(**kwargs)
    assert "\n" not in str(err.value)


CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "sampler"


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("mh", RandomWalkMH),
        ("independence_mh", IndependenceMH),
        ("hmc", HMC),
        ("langevin", Langevin),
        ("mala", MALA),
    ],
)
def test_sampler_configs_instantiate_with_the_class_defaults(name: str, cls) -> None:
    from dataclasses import fields

    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    sampler = instantiate(cfg)
    assert isinstance(sampler, cls)
    keys = set(cfg.keys()) - {"_target_"}
    assert keys == {f.name for f in fields(cls)}, "every hyperparameter, nothing else"
    default = cls()
    for f in fields(cls):
        got, want = getattr(sampler, f.name), getattr(default, f.name)
        if isinstance(want, Tensor):
            torch.testing.assert_close(got, want)
        else:
            assert got == want, f.name
    g = torch.Generator().manual_seed(0)
    sampler.step(gaussian_2d(), sampler.init(gaussian_2d(), torch.zeros(8, 2, dtype=DT)), g)


def test_mcse_helpers_agree_with_iid_theory() -> None:
    """For iid draws ESS ≈ T·B and MCSE ≈ sd/√(T·B) (sanity of the tolerance machinery)."""
    rng = np.random.default_rng(0)
    draws = rng.standard_normal((200, 500, 1)) * 3.0
    ess = float(ess_mean(draws)[0])
    assert 0.9 * 1e5 < ess < 1.1 * 1e5
    assert float(mcse_mean(draws)[0]) == pytest.approx(3.0 / math.sqrt(1e5), rel=0.1)


def test_hmc_config_list_override_becomes_a_tensor() -> None:
    """A Hydra list (ListConfig) for inv_mass is converted and validated at construction."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONFIGS / "hmc.yaml")
    cfg.inv_mass = [1.0, 4.0]
    sampler = instantiate(cfg)
    torch.testing.assert_close(sampler.inv_mass, torch.tensor([1.0, 4.0]))
    cfg.inv_mass = [1.0, 0.0]
    with pytest.raises(Exception, match="sampler.inv_mass must be > 0"):
        instantiate(cfg)
