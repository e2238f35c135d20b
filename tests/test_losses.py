"""Loss functions on cases with known answers (ebm_cli/trainers/losses.py)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from ebm_cli.energies.mlp import MLPEnergy
from ebm_cli.trainers.losses import (
    contrastive_loss,
    denoising_score_matching_loss,
    exact_score_matching_loss,
    nce_logit,
    nce_loss,
    sliced_score_matching_loss,
)

torch.set_num_threads(1)


class Quadratic(nn.Module):
    """E(x) = ½ (x − μ)ᵀ P (x − μ) with P = A Aᵀ + I (symmetric positive definite)."""

    def __init__(self, a: Tensor, mu: Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())
        self.mu = nn.Parameter(mu.clone())

    @property
    def precision(self) -> Tensor:
        return self.a @ self.a.T + torch.eye(self.a.shape[0], dtype=self.a.dtype)

    def forward(self, x: Tensor) -> Tensor:
        d = x - self.mu  # [B, D]
        return 0.5 * ((d @ self.precision) * d).sum(1)


def _quadratic(d: int = 3, seed: int = 0) -> Quadratic:
    g = torch.Generator().manual_seed(seed)
    a = 0.7 * torch.randn(d, d, generator=g, dtype=torch.float64)
    mu = torch.randn(d, generator=g, dtype=torch.float64)
    return Quadratic(a, mu)


def test_contrastive_loss_value_and_gradient() -> None:
    # E(x) = wᵀx: the loss is wᵀ(mean x_data − mean x_neg) + α·mean(E²...), gradient known.
    g = torch.Generator().manual_seed(0)
    w = torch.randn(2, generator=g, dtype=torch.float64, requires_grad=True)
    x_data = torch.randn(50, 2, generator=g, dtype=torch.float64)
    x_neg = torch.randn(70, 2, generator=g, dtype=torch.float64) + 1.0
    alpha = 0.3
    loss = contrastive_loss(x_data @ w, x_neg @ w, alpha)
    (grad,) = torch.autograd.grad(loss, w)
    with torch.no_grad():
        e_d, e_n = x_data @ w, x_neg @ w
        want = e_d.mean() - e_n.mean() + alpha * ((e_d**2).mean() + (e_n**2).mean())
        want_grad = (
            x_data.mean(0) - x_neg.mean(0)
            + alpha * (2 * (e_d[:, None] * x_data).mean(0) + 2 * (e_n[:, None] * x_neg).mean(0))
        )
    torch.testing.assert_close(loss.detach(), want)
    torch.testing.assert_close(grad, want_grad)


def test_exact_score_matching_matches_closed_form_for_a_gaussian_energy() -> None:
    # For E = ½(x−μ)ᵀP(x−μ): ∇E = P(x−μ), tr ∇²E = tr P, so
    # J = mean_x ½‖P(x−μ)‖² − tr P and ∂J/∂μ = −P² (mean x − μ); both exact (float64).
    energy = _quadratic()
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss = exact_score_matching_loss(energy, x)
    (grad_mu,) = torch.autograd.grad(loss, energy.mu)
    with torch.no_grad():
        p = energy.precision
        r = (x - energy.mu) @ p  # [B, D]
        want = 0.5 * (r**2).sum(1).mean() - torch.trace(p)
        want_grad_mu = -(p @ p) @ (x.mean(0) - energy.mu)
    torch.testing.assert_close(loss.detach(), want)
    torch.testing.assert_close(grad_mu, want_grad_mu)


def test_exact_score_matching_is_minimised_at_the_data_precision() -> None:
    # Data N(0, s²I): J(p) = ½ D (p² s² − 2p) for E = ½ p‖x‖² (population), minimised at
    # p = 1/s². On a fixed sample J is a parabola in p whose minimum is 1 / mean(x²) exactly.
    x = 0.5 * torch.randn(4000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    class Iso(nn.Module):
        def __init__(self, p: float) -> None:
            super().__init__()
            self.p = p

        def forward(self, x: Tensor) -> Tensor:
            return 0.5 * self.p * (x**2).sum(1)

    ps = torch.linspace(2.0, 6.0, 81, dtype=torch.float64)
    losses = torch.stack([exact_score_matching_loss(Iso(float(p)), x) for p in ps])
    best = ps[losses.argmin()]
    assert abs(float(best) - 1 / float((x**2).mean())) <= 0.05 / 2 + 1e-12  # grid spacing / 2


@pytest.mark.parametrize("projection", ["rademacher", "gaussian"])
@pytest.mark.parametrize("variance_reduction", [False, True])
def test_sliced_score_matching_is_unbiased_for_exact(
    projection: str, variance_reduction: bool
) -> None:
    # E_v[vᵀ∇²E v] = tr ∇²E and E_v[(vᵀ∇E)²] = ‖∇E‖² when E[vvᵀ] = I: the sliced loss is an
    # unbiased estimate of the exact one. K independent estimates; tolerance 4·sd/√K.
    energy = _quadratic()
    x = torch.randn(32, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    exact = exact_score_matching_loss(energy, x).detach()
    g = torch.Generator().manual_seed(4)
    est = torch.stack([
        sliced_score_matching_loss(energy, x, g, 8, projection, variance_reduction).detach()
        for _ in range(300)
    ])
    k = est.shape[0]
    assert abs(float(est.mean() - exact)) < 4 * float(est.std()) / math.sqrt(k)


def test_sliced_score_matching_is_unbiased_on_an_mlp() -> None:
    # The same identity holds for a non-quadratic energy (Hessian varies with x).
    torch.manual_seed(0)
    energy = MLPEnergy((2,), width=16, depth=2).double()
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    exact = exact_score_matching_loss(energy, x).detach()
    g = torch.Generator().manual_seed(6)
    est = torch.stack([
        sliced_score_matching_loss(energy, x, g, 4).detach() for _ in range(300)
    ])
    assert abs(float(est.mean() - exact)) < 4 * float(est.std()) / math.sqrt(est.shape[0])


def test_denoising_score_matching_expectation() -> None:
    # Data N(0, s²I), E = ½ p‖x‖², x̃ = x + σε: ∇E(x̃) − ε/σ = p x̃ − ε/σ, so
    # E[loss] = ½ D (p²(s² + σ²) − 2p + 1/σ²), minimised at p = 1/(s² + σ²) (the noisy data).
    s, sigma, p, d = 0.5, 0.3, 3.0, 2

    class Iso(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return 0.5 * p * (x**2).sum(1)

    gx, gn = torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)
    est = torch.stack([
        denoising_score_matching_loss(
            Iso(), s * torch.randn(1000, d, generator=gx, dtype=torch.float64), sigma, gn
        ).detach()
        for _ in range(100)
    ])
    want = 0.5 * d * (p**2 * (s**2 + sigma**2) - 2 * p + 1 / sigma**2)
    assert abs(float(est.mean()) - want) < 4 * float(est.std()) / math.sqrt(est.shape[0])


def test_nce_loss_is_minimised_near_the_true_log_z() -> None:
    # E(x) = ½‖x‖² on R², so log Z = log 2π; data N(0, I), noise q = N(0, 2²I), ν = 2.
    # The minimiser ĉ over log Z solves f(c) = mean_data σ(−G) − ν mean_noise σ(G) = 0.
    # Delta method: sd(ĉ) ≈ sd(f) / f'(c), sd(f)² = var(a)/N + ν² var(b)/M with
    # a = σ(−G(x)), b = σ(G(y)), f' = mean a(1−a) + ν mean b(1−b). Tolerance 4·sd(ĉ).
    nu, n = 2.0, 20000
    g = torch.Generator().manual_seed(9)
    x = torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = 2.0 * torch.randn(int(nu * n), 2, generator=g, dtype=torch.float64)

    def log_q(z: Tensor) -> Tensor:
        return -math.log(2 * math.pi * 4.0) - 0.5 * (z**2).sum(1) / 4.0

    e_x, e_y = 0.5 * (x**2).sum(1), 0.5 * (y**2).sum(1)

    def dloss(c: float) -> float:
        log_z = torch.tensor(c, dtype=torch.float64, requires_grad=True)
        loss = nce_loss(e_x, e_y, log_q(x), log_q(y), log_z, nu)
        (grad,) = torch.autograd.grad(loss, log_z)
        return float(grad)

    lo, hi = 0.0, 4.0  # the loss is convex in c: bisect its derivative
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if dloss(mid) < 0 else (lo, mid)
    c_hat = 0.5 * (lo + hi)
    a = torch.sigmoid(-nce_logit(e_x, log_q(x), torch.tensor(c_hat), nu))
    b = torch.sigmoid(nce_logit(e_y, log_q(y), torch.tensor(c_hat), nu))
    sd_f = math.sqrt(float(a.var()) / n + nu**2 * float(b.var()) / y.shape[0])
    slope = float((a * (1 - a)).mean() + nu * (b * (1 - b)).mean())
    assert abs(c_hat - math.log(2 * math.pi)) < 4 * sd_f / slope
