"""Langevin samplers: unadjusted (ULA, SGLD as EBM training uses it) and adjusted (MALA).

Both discretise the Langevin diffusion dx = −∇E(x) dt + √2 dW with the Euler–Maruyama step

    x' = x − η ∇E(x) + σ ξ,  ξ ~ N(0, I),  η = step_size,  σ = √(2η).

ULA keeps every x' (biased by O(η); on N(0, s²) its stationary variance is s²/(1 − η/(2s²))).
MALA accepts x' with the Metropolis–Hastings ratio of the asymmetric Gaussian proposal
q(x'|x) = N(x − η∇E(x), 2η I), which makes it exact (Roberts & Tweedie 1996). Song & Kingma
(2021, §3) use ULA with η and σ set separately for EBM training. Cost: 1 gradient evaluation
per transition for both; the gradient at the current state is cached in ChainState.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ebm_cli.samplers.base import (
    ChainState,
    add_scaled,
    add_scaled_,
    chain_view,
    check_positive,
    check_unit_interval,
    energy_and_grad,
    event_sum,
    metropolis_accept,
    standard_normal_like,
    sum_squares,
)


class LangevinInfo(NamedTuple):
    """Per-chain [B] diagnostics of one Langevin transition (ULA accepts everything)."""

    accept_prob: Tensor  # 1 for ULA
    is_accepted: Tensor  # bool, True for ULA
    is_nan: Tensor  # bool: the new energy (ULA) or log α (MALA) is NaN
    energy: Tensor  # E at the new state
    grad_evals: Tensor  # int64: gradient evaluations per chain (1)


def _sqrt(v: float | Tensor) -> float | Tensor:
    return v.sqrt() if isinstance(v, Tensor) else math.sqrt(v)


@dataclass(frozen=True)
class Langevin:
    """Unadjusted Langevin / SGLD: x' = x − η g + σ ξ, with g = ∇E(x) (optionally clipped).

    step_size η > 0; noise_scale σ > 0 or None for σ = √(2η) (temperature 1, the diffusion of
    p ∝ exp(−E)); set separately, as EBM training often does, the chain targets roughly
    exp(−E/T) with T = σ²/(2η) (``temperature``). grad_clip: None, or a bound c > 0 on each
    chain's Euclidean gradient norm over the whole event, g ← g · min(1, c/‖g‖) (the direction
    is kept). No Metropolis correction: biased by O(η); no ``target_accept``, so
    ``adaptation.warmup`` only runs it. Cost: 1 gradient evaluation per transition.
    """

    step_size: float | Tensor = 0.01
    noise_scale: float | Tensor | None = None
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        check_positive("step_size", self.step_size)
        if self.noise_scale is not None:
            check_positive("noise_scale", self.noise_scale)
        if self.grad_clip is not None:
            check_positive("grad_clip", self.grad_clip)

    @property
    def temperature(self) -> float | Tensor:
        """T = σ²/(2η); 1 when noise_scale is None."""
        if self.noise_scale is None:
            return 1.0
        return self.noise_scale**2 / (2 * self.step_size)

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        """Chains at x [B, *event] with energy [B] and gradient [B, *event] (1 evaluation)."""
        energy, grad = energy_and_grad(energy_fn, x)
        return ChainState(x, energy, grad)

    def step(
        self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator
    ) -> tuple[ChainState, LangevinInfo]:
        x = state.x
        if state.grad is None:  # a state from a gradient-free sampler: one extra evaluation
            state = self.init(energy_fn, x)
        eta = self.step_size
        sigma = _sqrt(2 * eta) if self.noise_scale is None else self.noise_scale
        grad = state.grad
        if self.grad_clip is not None:
            norm = sum_squares(grad).sqrt_()  # ‖g‖ per chain [B]
            factor = self.grad_clip / norm.clamp_(min=self.grad_clip)  # min(1, c/‖g‖)
            grad = grad * chain_view(factor, grad)
        noise = standard_normal_like(x, generator)
        x_new = add_scaled_(add_scaled(x, grad, -eta), noise, sigma)  # x − η g + σ ξ
        energy, grad_new = energy_and_grad(energy_fn, x_new)  # cached for the next step
        ones = torch.ones_like(energy)
        info = LangevinInfo(ones, ones.bool(), torch.isnan(energy), energy, ones.long())
        return ChainState(x_new, energy, grad_new), info


@dataclass(frozen=True)
class MALA:
    """Metropolis-adjusted Langevin: the ULA proposal with σ = √(2η), then MH with the Hastings
    ratio of q(x'|x) = N(x − η∇E(x), 2ηI):

        log α = E(x) − E(x') − ‖x − x' + η∇E(x')‖²/(4η) + ‖x' − x + η∇E(x)‖²/(4η),

    computed in the expanded form E(x) − E(x') + ½ (√(2η) ξ − η/2 (g + g'))·(g + g'), with
    g = ∇E(x), g' = ∇E(x'). ``target_accept`` 0.574 is the optimal rate in high
    dimension (Roberts & Rosenthal 1998). Cost: 1 gradient evaluation per transition.
    """

    step_size: float | Tensor = 0.05
    target_accept: float = 0.574

    def __post_init__(self) -> None:
        check_positive("step_size", self.step_size)
        check_unit_interval("target_accept", self.target_accept)

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        """Chains at x [B, *event] with energy [B] and gradient [B, *event] (1 evaluation)."""
        energy, grad = energy_and_grad(energy_fn, x)
        return ChainState(x, energy, grad)

    def step(
        self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator
    ) -> tuple[ChainState, LangevinInfo]:
        x = state.x
        if state.grad is None:
            state = self.init(energy_fn, x)
        eta = self.step_size
        kick = standard_normal_like(x, generator).mul_(_sqrt(2 * eta))  # √(2η) ξ
        x_prop = add_scaled(x, state.grad, -eta).add_(kick)  # x' = x − η g + √(2η) ξ
        energy_prop, grad_prop = energy_and_grad(energy_fn, x_prop)
        # log q(x|x') − log q(x'|x) = ½ d·(g + g') + (η/4)(‖g‖² − ‖g'‖²) with d = x' − x
        # = −η g + √(2η) ξ, i.e. ½ w·(g + g') with w = √(2η) ξ − (η/2)(g + g'): one inner
        # product, no cancellation between two O(D) terms
        g_sum = state.grad + grad_prop  # g + g'  [B, *event]
        w = add_scaled(kick, g_sum, -0.5 * eta)  # [B, *event]
        log_q_ratio = event_sum(w.mul_(g_sum))  # 2·(log q(x|x') − log q(x'|x))  [B]
        log_ratio = (state.energy - energy_prop).add_(log_q_ratio, alpha=0.5)  # log α [B]
        accept_prob, is_accepted, is_nan = metropolis_accept(log_ratio, generator)
        keep = chain_view(is_accepted, x)  # [B, 1, …]
        new_state = ChainState(
            torch.where(keep, x_prop, x),
            torch.where(is_accepted, energy_prop, state.energy),
            torch.where(keep, grad_prop, state.grad),
        )
        grad_evals = torch.ones_like(energy_prop, dtype=torch.int64)
        info = LangevinInfo(accept_prob, is_accepted, is_nan, new_state.energy, grad_evals)
        return new_state, info
