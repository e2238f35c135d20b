"""Recovery Langevin: sampling by the chain of conditionals of diffusion recovery likelihood
(Gao, Song, Poole, Wu & Kingma 2021), in a variance-exploding form over a noise-conditional
energy's ladder.

Levels σ_0 < σ_1 < … < σ_{L−1} (the energy's ``sigmas``, read in ascending order; σ_0 = σ_min
is the density claimed). A point of level t + 1 is one of level t plus Gaussian noise,
x_{t+1} = x_t + δ_t ξ with δ_t² = σ_{t+1}² − σ_t², and the conditional EBM of level t is

    p_θ(x_t | x_{t+1}) ∝ exp(−E_c(x_t)),   E_c(y) = E_θ(y, σ_t) + ‖x_{t+1} − y‖² / (2 δ_t²).

One conditional is sampled by K unadjusted Langevin steps started at y = x_{t+1}:

    y ← y − η_t ∇_y E_c(y) + √(2 η_t) ξ,   ∇_y E_c = ∇_y E_θ(y, σ_t) + (y − x_{t+1}) / δ_t²,
    η_t = ε δ_t²,

the step a fraction ε of the Gaussian term's variance at every level (Gao et al.'s step ∝ the
level's noise variance). Its stiffest direction has curvature 1/δ_t² plus at most 1/σ_t² (the
data smoothed by σ_t), so η_t times it is at most ε(1 + δ_t²/σ_t²) = ε r² on a geometric ladder
of ratio r: the bound to keep below ~0.5, where unadjusted Langevin's O(η) bias stays small.
Below a gapped first level (energy=noise_level's sigma_1, δ_0 ≫ σ_0) that bound is loose: the
curvature there is the data's own κ (≈ 1/(0.354² + σ_0²) on eight_gaussians), the step
ε(1 + δ_0² κ) ≈ 0.22 at the defaults; data with features much narrower than δ_0 need a smaller ε.
One ``step`` of this sampler walks the whole chain: the top level is drawn as
x_{L−1} = x + √(σ_{L−1}² − σ_0²) ξ from the chains' start x (the evaluation starts them over the
data's box, and with σ_{L−1} well above the data's spread this is ≈ the data smoothed by
σ_{L−1}), then the conditionals t = L−2, …, 0 in turn: (L−1)·K gradient evaluations that end at
a sample of exp(−E_θ(·, σ_0)). Like annealed Langevin it is no p-invariant kernel: evaluate with
``eval.warmup=0 eval.sampler_steps=1 eval.restarts=false``. trainers/drl.py trains the
conditionals with this same Langevin (``conditional_langevin``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ebm_cli.app.errors import ConfigError
from ebm_cli.energies.noise_conditional import NoiseConditional
from ebm_cli.samplers.annealed import AnnealedInfo
from ebm_cli.samplers.base import ChainState, chain_view, check_positive, standard_normal_like


def ascending_ladder(energy_fn: NoiseConditional, like: Tensor) -> Tensor:
    """The energy's ladder σ_0 < … < σ_{L−1} [L] on like's device and dtype."""
    sigmas = energy_fn.sigmas.to(device=like.device, dtype=like.dtype)
    return sigmas.sort().values


def langevin_step_size(epsilon: float, sigma: Tensor, delta2: Tensor) -> Tensor:
    """η_t = ε δ_t² [B], over δ_t² (0-d or [B]); σ_t [B] sets the shape."""
    return epsilon * delta2.expand_as(sigma)


def conditional_langevin(energy_fn: NoiseConditional, x_next: Tensor, sigma: Tensor,
                         delta2: Tensor, steps: int, epsilon: float,
                         generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """K = ``steps`` Langevin steps on E_c (module docstring) started at y = x_next.

    x_next: x_{t+1} [B, *event]; sigma: σ_t and delta2: δ_t², each 0-d or [B] (a level per
    point). Returns y [B, *event] (detached) and E_θ(y, σ_t) [B] at the last step's start.
    No parameter gradients are kept; K gradient passes through E over the B points.
    """
    x_next = x_next.detach()
    sigma_b = sigma.expand(x_next.shape[0])  # [B]
    eta = langevin_step_size(epsilon, sigma_b, delta2.expand(x_next.shape[0]))  # [B]
    eta_v, inv_d2 = chain_view(eta, x_next), chain_view(1.0 / delta2.expand_as(eta), x_next)
    noise_sd = (2.0 * eta_v).sqrt()
    y = x_next
    energy = torch.zeros_like(eta)
    for _ in range(steps):
        with torch.enable_grad():
            y_req = y.detach().requires_grad_(True)
            e = energy_fn.conditioned(y_req, sigma_b)  # [B]
            (grad,) = torch.autograd.grad(e.sum(), y_req)  # ∇_y E_θ(y, σ_t)
        energy = e.detach()
        grad = grad + (y - x_next) * inv_d2  # ∇_y E_c
        y = y - eta_v * grad + noise_sd * standard_normal_like(y, generator)
    return y.detach(), energy


@dataclass(frozen=True)
class RecoveryLangevin:
    """The chain of recovery conditionals (module docstring). epsilon ε in (0, 1]: the Langevin
    step η_t = ε δ_t², a fraction of the conditional's Gaussian variance; steps_per_level
    K >= 1. Needs a NoiseConditional energy. Cost: (L−1)·K gradient evaluations per ``step``."""

    epsilon: float = 0.1
    steps_per_level: int = 15

    def __post_init__(self) -> None:
        check_positive("epsilon", self.epsilon)
        if self.epsilon > 1:
            raise ValueError(f"sampler.epsilon must be in (0, 1], got {self.epsilon!r}")
        if isinstance(self.steps_per_level, bool) or not isinstance(self.steps_per_level, int) \
                or self.steps_per_level < 1:
            raise ValueError(
                f"sampler.steps_per_level must be an integer >= 1, got {self.steps_per_level!r}")

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        """Chains at x [B, *event] (where the top level's noise is added), not evaluated."""
        if not isinstance(energy_fn, NoiseConditional):  # a config choice: one error line
            raise ConfigError(
                "sampler=recovery_langevin needs a noise-conditional energy (sigmas and "
                f"conditioned(x, σ)), got {type(energy_fn).__name__}; use energy=noise_conditional")
        return ChainState(x, None, None)

    def conditional(self, energy_fn: NoiseConditional, x_next: Tensor, sigma: Tensor,
                    delta2: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A draw of p_θ(x_t | x_{t+1} = x_next) [B, *event] and E_θ(·, σ_t) [B] at its last
        step (``conditional_langevin`` with this sampler's ε and K)."""
        return conditional_langevin(energy_fn, x_next, sigma, delta2, self.steps_per_level,
                                    self.epsilon, generator)

    def step(self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator
             ) -> tuple[ChainState, AnnealedInfo]:
        """The whole walk from state.x down to level 0; returns x_0 [B, *event]."""
        assert isinstance(energy_fn, NoiseConditional)
        x = state.x
        sigmas = ascending_ladder(energy_fn, x)  # [L]
        top = (sigmas[-1] ** 2 - sigmas[0] ** 2).sqrt()
        x = x + top * standard_normal_like(x, generator)  # x_{L−1}
        energy = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for t in range(sigmas.shape[0] - 2, -1, -1):
            delta2 = sigmas[t + 1] ** 2 - sigmas[t] ** 2
            x, energy = self.conditional(energy_fn, x, sigmas[t], delta2, generator)
        evals = (sigmas.shape[0] - 1) * self.steps_per_level
        return ChainState(x, None, None), AnnealedInfo(energy, evals)
