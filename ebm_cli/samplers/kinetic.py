"""Underdamped (kinetic) Langevin dynamics, unadjusted (BAOAB) and Metropolis-adjusted.

The diffusion on (x, v), unit mass, friction γ > 0:

    dx = v dt,   dv = −∇E(x) dt − γ v dt + √(2γ) dW,

leaves exp(−E(x) − ½‖v‖²) invariant. One transition of step h is a splitting into
B (kick v ← v − h/2 ∇E(x)), A (drift x ← x + h/2 v) and O (the Ornstein–Uhlenbeck part solved
exactly, v ← c v + √(1 − c²) ξ, ξ ~ N(0, I)):

- ``KineticLangevin``: BAOAB, c = exp(−γh) (Leimkuhler & Matthews 2013). No Metropolis test:
  O(h²) bias in the x-marginal in general; on a Gaussian target its x-marginal is exact and
  only v is biased: Var v = 1 − h²/(4σ²) per direction of variance σ² (h < 2σ).
- ``AdjustedKineticLangevin``: OBABO with an MH test on the BAB (leapfrog) part, c = exp(−γh/2)
  per O half: Horowitz's (1991) generalised HMC. A rejection keeps x and negates v, so the
  chain is exact (invariant for exp(−E − ½‖v‖²)); with a small h the velocity persists and the
  moves are those of HMC with a long trajectory, spread over transitions.

The velocity is carried in ``KineticState`` across transitions: persistent momentum is the point.
``init`` has no generator, so it leaves the velocity None and the first step draws v ~ N(0, I)
(as after a state from another sampler). Cost: 1 gradient evaluation per transition (the
gradient at x is cached).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ebm_cli.samplers.base import (
    add_event_sum,
    add_scaled,
    add_scaled_,
    check_positive,
    check_unit_interval,
    energy_and_grad,
    select,
    standard_normal_like,
)
from ebm_cli.samplers.compiled import EnergyCalls, add_scaled_traceable, run_kernel
from ebm_cli.samplers.hmc import HMCInfo
from ebm_cli.samplers.integrators import leapfrog


class KineticState(NamedTuple):
    """Chains x [B, *event] with E(x) [B], ∇E(x) [B, *event] and velocities v [B, *event]
    (None: not drawn yet, the next step draws v ~ N(0, I))."""

    x: Tensor
    energy: Tensor | None
    grad: Tensor | None = None
    velocity: Tensor | None = None


class KineticInfo(NamedTuple):
    """Per-chain [B] diagnostics of one BAOAB transition (an ``Info``): no Metropolis test, so
    every move is accepted and none divergent; the constant fields are built when read."""

    energy: Tensor  # E at the new state [B]

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
        return torch.ones_like(self.energy, dtype=torch.int64)


def _sqrt(v: float | Tensor) -> float | Tensor:
    return v.sqrt() if isinstance(v, Tensor) else math.sqrt(v)


def _ou_coefficients(friction: float, dt: float | Tensor) -> tuple[Any, Any]:
    """(c, √(1 − c²)) of the exact Ornstein–Uhlenbeck step over time dt, c = exp(−γ dt)."""
    if isinstance(dt, Tensor):
        c = torch.exp(-friction * dt)
        return c, (1 - c * c).sqrt()
    c = math.exp(-friction * dt)
    return c, math.sqrt(-math.expm1(-2 * friction * dt))  # √(1 − c²), accurate for small γ dt


class KineticDraws(NamedTuple):
    """The random numbers of one BAOAB step: the first velocity v ~ N(0, I) [B, *event] (None
    where the state has one) and the O step's ξ [B, *event]."""

    velocity: Tensor | None
    xi: Tensor


class AdjustedKineticDraws(NamedTuple):
    """The random numbers of one OBABO step, in the order drawn: the first velocity (None where
    the state has one), ξ of the first O half, u ~ U[0, 1) [B] of the test, ξ of the second."""

    velocity: Tensor | None
    xi_in: Tensor
    u: Tensor
    xi_out: Tensor


def _prepare(energy_fn: nn.Module, state: Any) -> KineticState:
    """A KineticState to step from: E and ∇E evaluated where missing (a lazy or gradient-free
    state from another sampler), the velocity kept (None where the state has none)."""
    x, energy, grad = state.x, state.energy, state.grad
    if grad is None or energy is None:
        energy, grad = energy_and_grad(energy_fn, x)
    v = state.velocity if isinstance(state, KineticState) else None
    return KineticState(x, energy, grad, v)


def _first_velocity(state: KineticState, generator: torch.Generator) -> Tensor | None:
    """v ~ N(0, I) [B, *event] where the state has no velocity yet, else None."""
    return standard_normal_like(state.x, generator) if state.velocity is None else None


def _init(energy_fn: nn.Module, x: Tensor) -> KineticState:
    energy, grad = energy_and_grad(energy_fn, x)
    return KineticState(x, energy, grad, None)


@dataclass(frozen=True)
class KineticLangevin:
    """Unadjusted underdamped Langevin, BAOAB splitting (module docstring).

    step_size h > 0, friction γ > 0 (1/γ: how long a velocity persists; γh ≪ 1 is nearly
    Hamiltonian, γh ≫ 1 is overdamped). No Metropolis test: not StepSizeAdaptable, warm-up
    only runs it. Cost: 1 gradient evaluation per transition.
    """

    step_size: float | Tensor = 0.1
    friction: float = 1.0

    def __post_init__(self) -> None:
        check_positive("step_size", self.step_size)
        check_positive("friction", self.friction)

    def init(self, energy_fn: nn.Module, x: Tensor) -> KineticState:
        """Chains at x [B, *event] with E and ∇E (1 evaluation); velocities drawn at the first
        step."""
        return _init(energy_fn, x)

    def step(self, energy_fn: nn.Module, state: Any, generator: torch.Generator
             ) -> tuple[KineticState, KineticInfo]:
        state = self.prepare(energy_fn, state)
        return run_kernel(self, energy_fn, state, self.draws(state, generator))

    def prepare(self, energy_fn: nn.Module, state: Any) -> KineticState:
        """A KineticState with E and ∇E (evaluated where missing; velocity kept or None)."""
        return _prepare(energy_fn, state)

    def draws(self, state: KineticState, generator: torch.Generator) -> KineticDraws:
        """v ~ N(0, I) where the state has none, then the O step's ξ."""
        v = _first_velocity(state, generator)
        return KineticDraws(v, standard_normal_like(state.x, generator))

    def kernel(self, energy: EnergyCalls, state: KineticState, draws: KineticDraws
               ) -> tuple[KineticState, KineticInfo]:
        """One BAOAB step (1 gradient evaluation)."""
        x, grad = state.x, state.grad
        v = draws.velocity if state.velocity is None else state.velocity
        h = self.step_size
        c, noise = _ou_coefficients(self.friction, h)
        v = add_scaled(v, grad, -0.5 * h)  # B: v − h/2 ∇E(x)
        x = add_scaled(x, v, 0.5 * h)  # A: x + h/2 v
        v = add_scaled_(v.mul_(c), draws.xi, noise)  # O: c v + √(1 − c²) ξ (exact OU step)
        x = add_scaled_(x, v, 0.5 * h)  # A
        energy_new, grad = energy.energy_and_grad(x)
        v = add_scaled_traceable(v, grad, -0.5 * h)  # B (∇E straight from a backward)
        return KineticState(x, energy_new, grad, v), KineticInfo(energy_new)


@dataclass(frozen=True)
class AdjustedKineticLangevin:
    """Metropolis-adjusted underdamped Langevin (generalised HMC): OBABO with the MH test on
    ΔH of the BAB leapfrog step, the velocity negated on rejection (module docstring).

    step_size h > 0, friction γ > 0 (each O half uses c = exp(−γh/2)). StepSizeAdaptable
    towards ``target_accept`` (every rejection reverses the velocity, so a high rate keeps the
    momentum: 0.9). A |ΔH| above max_energy_error (or NaN) is flagged divergent (HMCInfo,
    HasDivergences). Cost: 1 gradient evaluation per transition.
    """

    step_size: float | Tensor = 0.1
    friction: float = 1.0
    target_accept: float = 0.9
    max_energy_error: float = 1000.0

    def __post_init__(self) -> None:
        check_positive("step_size", self.step_size)
        check_positive("friction", self.friction)
        check_unit_interval("target_accept", self.target_accept)
        check_positive("max_energy_error", self.max_energy_error)

    def init(self, energy_fn: nn.Module, x: Tensor) -> KineticState:
        """Chains at x [B, *event] with E and ∇E (1 evaluation); velocities drawn at the first
        step."""
        return _init(energy_fn, x)

    def step(self, energy_fn: nn.Module, state: Any, generator: torch.Generator
             ) -> tuple[KineticState, HMCInfo]:
        state = self.prepare(energy_fn, state)
        return run_kernel(self, energy_fn, state, self.draws(state, generator))

    def prepare(self, energy_fn: nn.Module, state: Any) -> KineticState:
        """A KineticState with E and ∇E (evaluated where missing; velocity kept or None)."""
        return _prepare(energy_fn, state)

    def draws(self, state: KineticState, generator: torch.Generator) -> AdjustedKineticDraws:
        """v where the state has none, ξ of the first O half, u of the test, ξ of the second."""
        x = state.x
        v = _first_velocity(state, generator)
        xi_in = standard_normal_like(x, generator)
        dtype = torch.promote_types(state.energy.dtype, x.dtype)  # that of log α
        u = torch.rand(x.shape[0], dtype=dtype, device=x.device, generator=generator)
        return AdjustedKineticDraws(v, xi_in, u, standard_normal_like(x, generator))

    def kernel(self, energy: EnergyCalls, state: KineticState, draws: AdjustedKineticDraws
               ) -> tuple[KineticState, HMCInfo]:
        """OBABO with the MH test on the BAB step (1 gradient evaluation)."""
        x, energy_x, grad = state.x, state.energy, state.grad
        v = draws.velocity if state.velocity is None else state.velocity
        h = self.step_size
        eps = h if isinstance(h, Tensor) else x.new_full((), h)
        eps = eps.to(dtype=x.dtype, device=x.device)
        c, noise = _ou_coefficients(self.friction, 0.5 * h)
        if isinstance(c, Tensor):
            c, noise = c.to(x.dtype), noise.to(x.dtype)
        v = add_scaled_(v * c, draws.xi_in, noise)  # O (half)
        x_new, v_new, energy_new, grad_new = leapfrog(
            energy.energy_and_grad, x, v, grad, eps, None, 1)  # BAB
        # log α = −ΔH = E(x) − E(x') + ½ (‖v‖² − ‖v'‖²)  [B]
        kinetic = v.square().addcmul_(v_new, v_new, value=-1.0)
        log_ratio = add_event_sum(energy_x - energy_new, kinetic, 0.5)
        is_accepted = torch.lt(draws.u, log_ratio.exp())  # u < α [B] (base.metropolis_test)
        is_divergent = torch.le(log_ratio.abs(), self.max_energy_error).logical_not_()
        x = select(is_accepted, x_new, x)
        v = select(is_accepted, v_new, v.neg())  # rejection: the velocity is reversed
        energy_x = torch.where(is_accepted, energy_new, energy_x)
        grad = select(is_accepted, grad_new, grad)
        v = add_scaled_(v.mul_(c), draws.xi_out, noise)  # O (half)
        b = x.shape[0]
        ones = torch.ones(b, dtype=torch.int64, device=x.device)
        info = HMCInfo(log_ratio, is_accepted, energy_x, is_divergent, eps.expand(b), ones, ones)
        return KineticState(x, energy_x, grad, v), info
