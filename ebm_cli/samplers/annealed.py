"""Annealed Langevin dynamics down a noise-conditional energy's σ ladder (Song & Ermon 2019).

For each level i = 1..L (σ_1 > … > σ_L, the energy's ``sigmas``), T unadjusted Langevin steps

    x ← x − α_i ∇ₓE_θ(x, σ_i) + √(2 α_i) ξ,   α_i = ε σ_i² / σ_L²,   ξ ~ N(0, I)

(their Algorithm 1): the step shrinks with the noise (α_i/σ_i² is the same at every level)
and each level starts from the previous, broader level's chains. One ``step`` of this sampler
is a whole anneal, L·T gradient evaluations that carry any start to (approximately) the
σ_L-smoothed model. It is no p-invariant kernel to run for many steps or to restart by
independence MH: evaluate with ``eval.warmup=0 eval.sampler_steps=1 eval.restarts=false``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ebm_cli.app.errors import ConfigError
from ebm_cli.energies.noise_conditional import NoiseConditional
from ebm_cli.samplers.base import (
    ChainState,
    add_scaled,
    add_scaled_,
    check_positive,
    standard_normal_like,
)


class AnnealedInfo(NamedTuple):
    """Per-chain [B] diagnostics of one anneal (an ``Info``): E(x, σ_L) at the last gradient
    evaluation; every move accepted, none divergent; ``grad_evals`` = L·T."""

    energy: Tensor  # [B]
    evals: int  # gradient evaluations per chain in the anneal

    @property
    def accept_prob(self) -> Tensor:
        return torch.ones_like(self.energy)

    @property
    def is_accepted(self) -> Tensor:
        return torch.ones_like(self.energy, dtype=torch.bool)

    @property
    def is_divergent(self) -> Tensor:
        return torch.zeros_like(self.energy, dtype=torch.bool)

    @property
    def grad_evals(self) -> Tensor:
        return torch.full_like(self.energy, self.evals, dtype=torch.int64)


def _conditioned_energy_and_grad(energy_fn: NoiseConditional, x: Tensor, sigma: Tensor
                                 ) -> tuple[Tensor, Tensor]:
    """E(x, σ) [B] and ∇ₓE(x, σ) [B, *event], detached (no parameter gradients)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        energy = energy_fn.conditioned(x, sigma)
        (grad,) = torch.autograd.grad(energy.sum(), x)
    return energy.detach(), grad


@dataclass(frozen=True)
class AnnealedLangevin:
    """Annealed Langevin dynamics (module docstring). epsilon ε > 0: the step α_L at the
    smallest level; steps_per_level T >= 1. Needs a NoiseConditional energy. Cost: L·T
    gradient evaluations per ``step``."""

    epsilon: float = 1e-3
    steps_per_level: int = 100

    def __post_init__(self) -> None:
        check_positive("epsilon", self.epsilon)
        if isinstance(self.steps_per_level, bool) or self.steps_per_level < 1:
            raise ValueError(
                f"sampler.steps_per_level must be an integer >= 1, got {self.steps_per_level}")

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        """Chains at x [B, *event], not evaluated (the anneal evaluates at every level)."""
        if not isinstance(energy_fn, NoiseConditional):  # a config choice: one error line
            raise ConfigError(
                "sampler=annealed_langevin needs a noise-conditional energy (sigmas and "
                f"conditioned(x, σ)), got {type(energy_fn).__name__}; use energy=noise_conditional")
        return ChainState(x, None, None)

    def step(
        self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator
    ) -> tuple[ChainState, AnnealedInfo]:
        """One whole anneal from state.x down the ladder; returns the final chains."""
        x = state.x
        sigmas = energy_fn.sigmas.to(device=x.device, dtype=x.dtype)  # [L], descending
        energy = torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)
        for i in range(sigmas.shape[0]):
            sigma = sigmas[i]
            alpha = self.epsilon * (sigma / sigmas[-1]) ** 2  # α_i (0-d)
            noise_sd = (2 * alpha).sqrt()
            for _ in range(self.steps_per_level):
                energy, grad = _conditioned_energy_and_grad(energy_fn, x, sigma)
                x = add_scaled_(add_scaled(x, grad, -alpha), standard_normal_like(x, generator),
                                noise_sd)
        evals = sigmas.shape[0] * self.steps_per_level
        return ChainState(x, None, None), AnnealedInfo(energy, evals)
