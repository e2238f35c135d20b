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
    acceptance_probability,
    add_event_sum,
    as_vector,
    check_positive,
    check_unit_interval,
    energy_only,
    event_vector,
    select,
    standard_normal_like,
)
from ebm_cli.samplers.compiled import EnergyCalls, run_kernel, sequential_draws


class MHInfo(NamedTuple):
    """Per-chain [B] diagnostics of one Metropolis–Hastings transition (an ``Info``).

    ``accept_prob``, ``is_nan``, ``is_divergent`` and ``grad_evals`` are derived when read, so
    a step that nobody inspects does not pay for them (see base.metropolis_test).
    """

    log_accept_ratio: Tensor  # log α; NaN counts as a rejection
    is_accepted: Tensor  # bool
    energy: Tensor  # E at the new state

    @property
    def accept_prob(self) -> Tensor:
        """min(1, α) [B], 0 where log α is NaN."""
        return acceptance_probability(self.log_accept_ratio)

    @property
    def is_nan(self) -> Tensor:
        """[B] bool: log α was NaN (a counted rejection)."""
        return torch.isnan(self.log_accept_ratio)

    @property
    def is_divergent(self) -> Tensor:
        """False for every chain [B] bool: no trajectory to diverge (a non-finite E(x*) is a
        rejection)."""
        return torch.zeros_like(self.is_accepted)

    @property
    def grad_evals(self) -> Tensor:
        """Gradient evaluations per chain and transition (0) [B] int64."""
        return torch.zeros_like(self.energy, dtype=torch.int64)


class MHDraws(NamedTuple):
    """The random numbers of one MH transition: the proposal's noise [B, *event] (RandomWalkMH
    with a number s: s·ξ, drawn as N(0, s²); else ξ ~ N(0, I)) and u ~ U[0, 1) [B]."""

    noise: Tensor
    u: Tensor


def accept_uniforms(state: ChainState, generator: torch.Generator) -> Tensor:
    """u ~ U[0, 1) [B] of the Metropolis test, in the dtype of log α (that of E)."""
    assert state.energy is not None
    return torch.rand_like(state.energy, generator=generator)  # = metropolis_test's draw


def _mh_update(
    state: ChainState, x_prop: Tensor, energy_prop: Tensor, log_ratio: Tensor, u: Tensor
) -> tuple[ChainState, MHInfo]:
    """Accept/reject x* [B, *event] with log α [B] and u [B]; the new state has no gradient."""
    is_accepted = torch.lt(u, log_ratio.exp())  # u < α  [B] (base.metropolis_test's event)
    x = select(is_accepted, x_prop, state.x)  # [B, *event]
    energy = torch.where(is_accepted, energy_prop, state.energy)  # [B]
    return ChainState(x, energy, None), MHInfo(log_ratio, is_accepted, energy)


@dataclass(frozen=True)
class RandomWalkMH:
    """Random-walk Metropolis: x* = x + s ξ, ξ ~ N(0, I), s = ``step_size``.

    The proposal is symmetric, so log α = E(x) − E(x*). StepSizeAdaptable: ``target_accept``
    (0.234, the optimal rate for high-dimensional targets, Roberts, Gelman & Gilks 1997) is
    used by ``adaptation.warmup`` to tune s. Cost: 1 energy evaluation, 0 gradients per transition.
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
        state = self.prepare(energy_fn, state)
        return run_kernel(self, energy_fn, state, self.draws(state, generator))

    def prepare(self, energy_fn: nn.Module, state: ChainState) -> ChainState:
        """A lazy state (unadjusted Langevin) gets E(x) evaluated once."""
        return self.init(energy_fn, state.x) if state.energy is None else state

    def draws(self, state: ChainState, generator: torch.Generator) -> MHDraws:
        """s·ξ (a number s: drawn as N(0, s²), what torch.normal(x, s) draws) or ξ, then u."""
        s = self.step_size
        if isinstance(s, Tensor):  # adapted step size (0-d tensor)
            noise = standard_normal_like(state.x, generator)
        else:
            noise = torch.empty_like(state.x).normal_(0.0, s, generator=generator)
        return MHDraws(noise, accept_uniforms(state, generator))

    def draws_ahead(self, state: ChainState, generator: torch.Generator, k: int
                    ) -> list[MHDraws]:
        """The draws of k steps, in order (DrawsAhead: they read x's and E's shapes only)."""
        return sequential_draws(self, state, generator, k)

    def kernel(self, energy: EnergyCalls, state: ChainState, draws: MHDraws
               ) -> tuple[ChainState, MHInfo]:
        """x* = x + s ξ, accepted if u < exp(E(x) − E(x*)) (q symmetric)."""
        x, s = state.x, self.step_size
        if isinstance(s, Tensor):
            x_prop = torch.addcmul(x, draws.noise, s)  # [B, *event]
        else:  # torch.normal(x, s) is normal_(0, s).add_(x): the same sum
            x_prop = draws.noise + x
        energy_prop = energy.energy(x_prop)  # [B]
        log_ratio = state.energy - energy_prop  # log α = E(x) − E(x*), q symmetric
        return _mh_update(state, x_prop, energy_prop, log_ratio, draws.u)


@dataclass(frozen=True, eq=False)
class IndependenceMH:
    """Independence Metropolis–Hastings with the proposal q(x*) = N(loc, diag(scale²)).

    The proposal ignores the current state, so the Hastings correction does not cancel:
    log α = E(x) − E(x*) + log q(x) − log q(x*) (seed §2.1.2). ``loc`` and ``scale`` are a number
    or a list/tensor [D] over the flattened event. The target is invariant for any such q (full
    support); convergence is uniform when p/q is bounded (target tails no heavier than q's) and
    fast only when q resembles the target. No step size to adapt (not StepSizeAdaptable), so
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
        object.__setattr__(self, "_on", {})  # (dtype, device, event) -> _proposal(...) tensors

    def _proposal(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(loc, scale, −loc/scale, 1/scale), each [*event] or 0-d on x's dtype and device.

        Converted and checked once per dtype/device/event, not in every step.
        """
        key = (x.dtype, x.device, x.shape[1:])
        params = self._on.get(key)
        if params is None:
            loc = event_vector(self.loc, x, "loc")
            scale = event_vector(self.scale, x, "scale")
            params = (loc, scale, -loc / scale, scale.reciprocal())
            self._on[key] = params
        return params

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        """Chains at x [B, *event] with their energy [B] (shapes of loc/scale checked here)."""
        self._proposal(x)
        return ChainState(x, energy_only(energy_fn, x), None)

    def step(
        self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator
    ) -> tuple[ChainState, MHInfo]:
        state = self.prepare(energy_fn, state)
        return run_kernel(self, energy_fn, state, self.draws(state, generator))

    def prepare(self, energy_fn: nn.Module, state: ChainState) -> ChainState:
        """A lazy state (unadjusted Langevin) gets E(x) evaluated once."""
        return self.init(energy_fn, state.x) if state.energy is None else state

    def draws(self, state: ChainState, generator: torch.Generator) -> MHDraws:
        """ξ ~ N(0, I) [B, *event], then u [B]."""
        self._proposal(state.x)  # converted here, eagerly: the kernel only reads it
        return MHDraws(standard_normal_like(state.x, generator), accept_uniforms(state, generator))

    def draws_ahead(self, state: ChainState, generator: torch.Generator, k: int
                    ) -> list[MHDraws]:
        """The draws of k steps, in order (DrawsAhead: they read x's and E's shapes only)."""
        return sequential_draws(self, state, generator, k)

    def kernel(self, energy: EnergyCalls, state: ChainState, draws: MHDraws
               ) -> tuple[ChainState, MHInfo]:
        """x* = loc + scale ξ, accepted with the Hastings ratio of q."""
        x, noise = state.x, draws.noise
        loc, scale, shift, inv_scale = self._proposal(x)
        x_prop = torch.addcmul(loc, noise, scale)  # x* = loc + scale ξ  [B, *event]
        energy_prop = energy.energy(x_prop)  # [B]
        # log q(x) − log q(x*) = ½ Σ (ξ² − z²), z = (x − loc)/scale (normalisers cancel)
        z = torch.addcmul(shift, x, inv_scale)  # [B, *event]
        q_terms = noise.square().addcmul_(z, z, value=-1.0)  # ξ² − z²  [B, *event]
        log_ratio = add_event_sum(state.energy - energy_prop, q_terms, 0.5)  # Hastings log α
        return _mh_update(state, x_prop, energy_prop, log_ratio, draws.u)
