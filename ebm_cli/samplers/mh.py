"""Metropolis–Hastings samplers: random-walk and independence proposals (seed §2.1.2).

Both propose x* ~ q(x* | x) for every chain at once and accept with probability
α = min(1, exp(−E(x*)) q(x | x*) / (exp(−E(x)) q(x* | x))). Neither needs a gradient: one
energy evaluation per transition, at the proposal; the current energy is cached in ChainState.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ebm_cli.samplers.base import (
    ChainState,
    add_scaled,
    as_vector,
    check_positive,
    check_unit_interval,
    energy_only,
    event_vector,
    metropolis_accept,
    select,
    standard_normal_like,
    sum_squares,
)


class MHInfo(NamedTuple):
    """Per-chain [B] diagnostics of one Metropolis–Hastings transition."""

    accept_prob: Tensor  # min(1, α)
    is_accepted: Tensor  # bool
    is_nan: Tensor  # bool: log α was NaN, counted as a rejection
    energy: Tensor  # E at the new state


def _mh_update(
    state: ChainState, x_prop: Tensor, energy_prop: Tensor, log_ratio: Tensor, g: torch.Generator
) -> tuple[ChainState, MHInfo]:
    """Accept/reject x* [B, *event] with log α [B]; the new state carries no gradient."""
    accept_prob, is_accepted, is_nan = metropolis_accept(log_ratio, g)
    x = select(is_accepted, x_prop, state.x)  # [B, *event]
    energy = torch.where(is_accepted, energy_prop, state.energy)  # [B]
    return ChainState(x, energy, None), MHInfo(accept_prob, is_accepted, is_nan, energy)


@dataclass(frozen=True)
class RandomWalkMH:
    """Random-walk Metropolis: x* = x + s ξ, ξ ~ N(0, I), s = ``step_size``.

    The proposal is symmetric, so log α = E(x) − E(x*). ``target_accept`` (0.234, the optimal
    rate for high-dimensional targets, Roberts, Gelman & Gilks 1997) is used by
    ``adaptation.warmup`` to tune s. Cost: 1 energy evaluation, 0 gradients per transition.
    """

    step_size: float | Tensor = 0.5
    target_accept: float = 0.234

    def __post_init__(self) -> None:
        check_positive("step_size", self.step_size)
        check_unit_interval("target_accept", self.target_accept)

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        """Chains at x [B, *event] with their energy [B]; no gradient is ever needed."""
        return ChainState(x, energy_only(energy_fn, x), None)

    def step(
        self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator
    ) -> tuple[ChainState, MHInfo]:
        x = state.x
        noise = standard_normal_like(x, generator)
        x_prop = add_scaled(x, noise, self.step_size)  # x* = x + s ξ  [B, *event]
        energy_prop = energy_only(energy_fn, x_prop)  # [B]
        log_ratio = state.energy - energy_prop  # log α = E(x) − E(x*), q symmetric
        return _mh_update(state, x_prop, energy_prop, log_ratio, generator)


@dataclass(frozen=True, eq=False)
class IndependenceMH:
    """Independence Metropolis–Hastings with the proposal q(x*) = N(loc, diag(scale²)).

    The proposal ignores the current state, so the Hastings correction does not cancel:
    log α = E(x) − E(x*) + log q(x) − log q(x*) (seed §2.1.2). ``loc`` and ``scale`` are a number
    or a list/tensor [D] over the flattened event. The target is invariant for any such q (full
    support); convergence is uniform when p/q is bounded (target tails no heavier than q's) and
    fast only when q resembles the target. No step size to adapt, so
    ``adaptation.warmup`` only runs it. Cost: 1 energy evaluation per transition.
    (eq=False: tensor fields make the generated __eq__ ambiguous.)
    """

    loc: float | Sequence[float] | Tensor = 0.0
    scale: float | Sequence[float] | Tensor = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "loc", as_vector("loc", self.loc))
        scale = as_vector("scale", self.scale)
        if not bool((scale > 0).all()):  # construction time, not a step
            raise ValueError(f"sampler.scale must be > 0 everywhere, got {scale.tolist()}")
        object.__setattr__(self, "scale", scale)

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        """Chains at x [B, *event] with their energy [B] (shapes of loc/scale checked here)."""
        event_vector(self.loc, x, "loc")
        event_vector(self.scale, x, "scale")
        return ChainState(x, energy_only(energy_fn, x), None)

    def step(
        self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator
    ) -> tuple[ChainState, MHInfo]:
        x = state.x
        loc = event_vector(self.loc, x, "loc")  # [*event] or 0-d
        scale = event_vector(self.scale, x, "scale")
        noise = standard_normal_like(x, generator)
        x_prop = torch.addcmul(loc, noise, scale)  # x* = loc + scale ξ  [B, *event]
        energy_prop = energy_only(energy_fn, x_prop)  # [B]
        # log q(x) − log q(x*) = ½ (‖ξ‖² − ‖(x − loc)/scale‖²) (normalisers cancel)
        q_term = sum_squares(noise).sub_(sum_squares((x - loc).div_(scale)))
        log_ratio = (state.energy - energy_prop).add_(q_term, alpha=0.5)  # Hastings log α [B]
        return _mh_update(state, x_prop, energy_prop, log_ratio, generator)
