"""Recovery Langevin: sampling by the chain of conditionals of diffusion recovery likelihood
(Gao, Song, Poole, Wu & Kingma 2021), in a variance-exploding form over a noise-conditional
energy's ladder.

Levels σ_0 < σ_1 < … < σ_{L−1} (the energy's ``sigmas``, read in ascending order; σ_0 = σ_min
is the density claimed). A point of level t + 1 is one of level t plus Gaussian noise,
x_{t+1} = x_t + δ_t ξ with δ_t² = σ_{t+1}² − σ_t², and the conditional EBM of level t is

    p_θ(x_t | x_{t+1}) ∝ exp(−E_c(x_t)),   E_c(y) = E_θ(y, σ_t) + ‖x_{t+1} − y‖² / (2 δ_t²).

One conditional is sampled by K Langevin steps started at y = x_{t+1}, each a proposal

    y' = y − η_t ∇_y E_c(y) + √(2 η_t) ξ,   ∇_y E_c = ∇_y E_θ(y, σ_t) + (y − x_{t+1}) / δ_t²,
    η_t = ε δ_t² · s_t,

kept with the Metropolis–Hastings probability (MALA, ``metropolis``, the default)

    α = min(1, exp(E_c(y) − E_c(y') + log q(y | y') − log q(y' | y))),
    log q(b | a) = −‖b − a + η_t ∇E_c(a)‖² / (4 η_t),

or always (unadjusted, ``metropolis=false``). The conditional is an exact target, so MALA
leaves it invariant at any step and a move past the stability limit (η_t·κ ≳ 2, κ the stiffest
curvature of E_c) is rejected instead of blowing up. That limit is reached at a gapped lowest
level (energy=noise_level's sigma_1, δ_0 ≫ σ_0): there κ ≈ 1/δ_0² plus the data's own curvature
(≈ 1/(w² + σ_0²) for features of width w: 1/(0.08² + 0.05²) on rings), so η_0 κ ≈ 0.1·(1 +
0.16·112) ≈ 1.9 at ε = 0.1; unadjusted, the learned energy sharpened past it and training
diverged (rings, spirals, pinwheel: energies ~1e8–1e13). s_t = exp(``log_step_scale``[t]) ≤ 1
is a per-level step multiplier that trainer=drl adapts towards a target acceptance and keeps in
the energy's buffers (``AdaptedSteps``; 1 for an energy without them). Cost: K + 1 gradient
evaluations per conditional with MALA (the proposal's gradient is the next step's), K without.
One ``step`` of this sampler walks the whole chain: the top level is drawn as
x_{L−1} = x + √(σ_{L−1}² − σ_0²) ξ from the chains' start x (the evaluation starts them over the
data's box, and with σ_{L−1} well above the data's spread this is ≈ the data smoothed by
σ_{L−1}), then the conditionals t = L−2, …, 0 in turn: (L−1)·(K + 1) gradient evaluations (with
MALA) that end at a sample of exp(−E_θ(·, σ_0)). Like annealed Langevin it is no p-invariant
kernel: evaluate with ``eval.warmup=0 eval.sampler_steps=1 eval.restarts=false``.
trainers/drl.py trains the conditionals with this same Langevin (``conditional_langevin``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ebm_cli.app.errors import ConfigError
from ebm_cli.energies.noise_conditional import NoiseConditional
from ebm_cli.samplers.base import ChainState, chain_view, check_positive, standard_normal_like


def ascending_ladder(energy_fn: NoiseConditional, like: Tensor) -> Tensor:
    """The energy's ladder σ_0 < … < σ_{L−1} [L] on like's device and dtype."""
    sigmas = energy_fn.sigmas.to(device=like.device, dtype=like.dtype)
    return sigmas.sort().values


@runtime_checkable
class AdaptedSteps(Protocol):
    """A noise-conditional energy carrying per-conditional step multipliers: ``log_step_scale``
    [L − 1], log s_t for the conditional of level t (ascending ladder), a buffer saved with it."""

    log_step_scale: Tensor


def level_log_scale(energy_fn: nn.Module, level: Tensor) -> Tensor | None:
    """log s_t for conditional levels ``level`` (0-d or [B] int), or None without AdaptedSteps."""
    if isinstance(energy_fn, AdaptedSteps):
        return energy_fn.log_step_scale[level]
    return None


def langevin_step_size(epsilon: float, sigma: Tensor, delta2: Tensor,
                       log_scale: Tensor | None = None) -> Tensor:
    """η_t = ε δ_t² s_t [B], over δ_t² and log s_t (each 0-d or [B]); σ_t [B] sets the shape."""
    eta = epsilon * delta2.expand_as(sigma)
    return eta if log_scale is None else eta * log_scale.exp().expand_as(sigma)


def _energy_and_grad(energy_fn: NoiseConditional, y: Tensor, sigma: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """E_θ(y, σ) [B] and ∇_y E_θ(y, σ) [B, *event], detached (no parameter gradients)."""
    with torch.enable_grad():
        y_req = y.detach().requires_grad_(True)
        e = energy_fn.conditioned(y_req, sigma)  # [B]
        (grad,) = torch.autograd.grad(e.sum(), y_req)
    return e.detach(), grad


def conditional_langevin(energy_fn: NoiseConditional, x_next: Tensor, sigma: Tensor,
                         delta2: Tensor, steps: int, epsilon: float,
                         generator: torch.Generator, log_scale: Tensor | None = None,
                         metropolis: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """K = ``steps`` Langevin steps on E_c (module docstring) started at y = x_next.

    x_next: x_{t+1} [B, *event]; sigma: σ_t, delta2: δ_t² and log_scale: log s_t (None: 0),
    each 0-d or [B] (a level per point). Returns y [B, *event] (detached), E_θ(y, σ_t) [B] (at
    y with MALA, at the last step's start unadjusted) and the mean acceptance probability of
    the K proposals per point [B] (ones unadjusted). No parameter gradients are kept; K + 1
    gradient passes through E over the B points with MALA, K without.
    """
    x_next = x_next.detach()
    n = x_next.shape[0]
    sigma_b = sigma.expand(n)  # [B]
    eta = langevin_step_size(epsilon, sigma_b, delta2.expand(n), log_scale)  # [B]
    inv_d2 = 1.0 / delta2.expand_as(eta)  # [B]
    eta_v, inv_d2_v = chain_view(eta, x_next), chain_view(inv_d2, x_next)
    noise_sd = (2.0 * eta_v).sqrt()
    y = x_next
    if not metropolis:
        energy = torch.zeros_like(eta)
        for _ in range(steps):
            energy, grad = _energy_and_grad(energy_fn, y, sigma_b)
            grad = grad + (y - x_next) * inv_d2_v  # ∇_y E_c
            y = y - eta_v * grad + noise_sd * standard_normal_like(y, generator)
        return y.detach(), energy, torch.ones_like(eta)

    def with_gaussian(z: Tensor, e: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        diff = z - x_next
        return e + 0.5 * diff.pow(2).flatten(1).sum(1) * inv_d2, g + diff * inv_d2_v

    energy, grad = _energy_and_grad(energy_fn, y, sigma_b)
    e_c, g_c = with_gaussian(y, energy, grad)  # E_c [B], ∇E_c [B, *event]
    accept_sum = torch.zeros_like(eta)
    for _ in range(steps):
        prop = y - eta_v * g_c + noise_sd * standard_normal_like(y, generator)
        energy_p, grad_p = _energy_and_grad(energy_fn, prop, sigma_b)
        e_cp, g_cp = with_gaussian(prop, energy_p, grad_p)
        fwd = (prop - y + eta_v * g_c).pow(2).flatten(1).sum(1)
        rev = (y - prop + eta_v * g_cp).pow(2).flatten(1).sum(1)
        log_alpha = e_c - e_cp + (fwd - rev) / (4.0 * eta)  # NaN/−inf: rejected below
        u = torch.rand(n, generator=generator, device=y.device, dtype=y.dtype)
        keep = u.log() < log_alpha  # [B] bool, False where log_alpha is NaN
        accept_sum = accept_sum + log_alpha.clamp(max=0.0).exp().nan_to_num(0.0)
        keep_v = chain_view(keep, y)
        y = torch.where(keep_v, prop, y)
        energy, e_c = torch.where(keep, energy_p, energy), torch.where(keep, e_cp, e_c)
        g_c = torch.where(keep_v, g_cp, g_c)
    return y.detach(), energy, accept_sum / steps


class RecoveryInfo(NamedTuple):
    """Per-chain [B] diagnostics of one walk (an ``Info``): E_θ(x_0, σ_0), the mean acceptance
    probability over the walk's proposals (ones unadjusted), ``grad_evals`` per chain."""

    energy: Tensor  # [B]
    accept: Tensor  # [B]
    evals: int

    @property
    def accept_prob(self) -> Tensor:
        return self.accept

    @property
    def is_accepted(self) -> Tensor:
        return self.accept > 0

    @property
    def is_divergent(self) -> Tensor:
        return ~torch.isfinite(self.energy)

    @property
    def grad_evals(self) -> Tensor:
        return torch.full_like(self.energy, self.evals, dtype=torch.int64)


@dataclass(frozen=True)
class RecoveryLangevin:
    """The chain of recovery conditionals (module docstring). epsilon ε in (0, 1]: the Langevin
    step η_t = ε δ_t² s_t, a fraction of the conditional's Gaussian variance (s_t from the
    energy's AdaptedSteps, else 1); steps_per_level K >= 1; metropolis: MALA (True) or
    unadjusted Langevin. Needs a NoiseConditional energy. Cost: (L−1)·(K + 1) gradient
    evaluations per ``step`` with MALA, (L−1)·K without."""

    epsilon: float = 0.1
    steps_per_level: int = 15
    metropolis: bool = True

    def __post_init__(self) -> None:
        check_positive("epsilon", self.epsilon)
        if self.epsilon > 1:
            raise ValueError(f"sampler.epsilon must be in (0, 1], got {self.epsilon!r}")
        if isinstance(self.steps_per_level, bool) or not isinstance(self.steps_per_level, int) \
                or self.steps_per_level < 1:
            raise ValueError(
                f"sampler.steps_per_level must be an integer >= 1, got {self.steps_per_level!r}")
        if not isinstance(self.metropolis, bool):
            raise ValueError(f"sampler.metropolis must be true or false, got {self.metropolis!r}")

    @property
    def evals_per_level(self) -> int:
        """Gradient passes per conditional: K + 1 with MALA, K unadjusted."""
        return self.steps_per_level + int(self.metropolis)

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        """Chains at x [B, *event] (where the top level's noise is added), not evaluated."""
        if not isinstance(energy_fn, NoiseConditional):  # a config choice: one error line
            raise ConfigError(
                "sampler=recovery_langevin needs a noise-conditional energy (sigmas and "
                f"conditioned(x, σ)), got {type(energy_fn).__name__}; use energy=noise_conditional")
        return ChainState(x, None, None)

    def conditional(self, energy_fn: NoiseConditional, x_next: Tensor, sigma: Tensor,
                    delta2: Tensor, generator: torch.Generator,
                    log_scale: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """A draw of p_θ(x_t | x_{t+1} = x_next) [B, *event], E_θ(·, σ_t) [B] and the mean
        acceptance [B] (``conditional_langevin`` with this sampler's ε, K and metropolis)."""
        return conditional_langevin(energy_fn, x_next, sigma, delta2, self.steps_per_level,
                                    self.epsilon, generator, log_scale, self.metropolis)

    def step(self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator
             ) -> tuple[ChainState, RecoveryInfo]:
        """The whole walk from state.x down to level 0; returns x_0 [B, *event]."""
        assert isinstance(energy_fn, NoiseConditional)
        x = state.x
        sigmas = ascending_ladder(energy_fn, x)  # [L]
        top = (sigmas[-1] ** 2 - sigmas[0] ** 2).sqrt()
        x = x + top * standard_normal_like(x, generator)  # x_{L−1}
        energy = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        accept = torch.zeros_like(energy)
        for t in range(sigmas.shape[0] - 2, -1, -1):
            delta2 = sigmas[t + 1] ** 2 - sigmas[t] ** 2
            log_scale = level_log_scale(energy_fn, torch.tensor(t, device=x.device))
            x, energy, acc = self.conditional(energy_fn, x, sigmas[t], delta2, generator,
                                              log_scale)
            accept = accept + acc
        n_cond = sigmas.shape[0] - 1
        return ChainState(x, None, None), RecoveryInfo(energy, accept / n_cond,
                                                       n_cond * self.evals_per_level)
