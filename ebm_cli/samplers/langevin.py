"""Langevin samplers: unadjusted (ULA, SGLD as EBM training uses it) and adjusted (MALA).

Both discretise the Langevin diffusion dx = −∇E(x) dt + √2 dW with the Euler–Maruyama step

    x' = x − η ∇E(x) + σ ξ,  ξ ~ N(0, I),  η = step_size,  σ = √(2η).

ULA keeps every x' (biased by O(η); on N(0, s²) its stationary variance is s²/(1 − η/(2s²))).
MALA accepts x' with the Metropolis–Hastings ratio of the asymmetric Gaussian proposal
q(x'|x) = N(x − η∇E(x), 2η I), which makes it exact (Roberts & Tweedie 1996); with an inverse
mass M⁻¹ = AAᵀ (samplers/mass.py) the proposal is preconditioned, N(x − ηM⁻¹∇E(x), 2ηM⁻¹).
Song & Kingma (2021, §3) use ULA with η and σ set separately for EBM training. Cost: 1 gradient
evaluation per transition for both. MALA needs ∇E at the proposal for its Hastings ratio and
caches it in ChainState; ULA evaluates E and ∇E lazily at the start of each step and leaves the
new state unevaluated, so k steps after θ changed cost k gradients, not k + 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ebm_cli.samplers.base import (
    ChainState,
    add_event_sum,
    add_scaled,
    add_scaled_,
    chain_view,
    check_positive,
    check_unit_interval,
    energy_and_grad,
    select,
    standard_normal_like,
    sum_squares,
)
from ebm_cli.samplers.compiled import (
    EnergyCalls,
    add_scaled_traceable,
    run_kernel,
    sequential_draws,
)
from ebm_cli.samplers.mass import (
    InverseMass,
    Metric,
    check_inverse_mass,
    check_mass_kind,
    metric,
)
from ebm_cli.samplers.mh import MHDraws, MHInfo, accept_uniforms


class ULAInfo(NamedTuple):
    """Per-chain [B] diagnostics of one unadjusted Langevin transition (an ``Info``).

    ULA evaluates lazily, so the energy it knows is that of the state it moved *from* (the
    documented exception to "E at the new state"). Every move is accepted and none is flagged
    divergent (there is no Hamiltonian error to bound); the constant fields are built only
    when read.
    """

    energy: Tensor  # E(x) at the step's starting state [B]

    @property
    def accept_prob(self) -> Tensor:
        """1 for every chain [B]."""
        return torch.ones_like(self.energy)

    @property
    def is_accepted(self) -> Tensor:
        """True for every chain [B] bool."""
        return torch.ones_like(self.energy, dtype=torch.bool)

    @property
    def is_nan(self) -> Tensor:
        """[B] bool: the energy at the starting state is NaN."""
        return torch.isnan(self.energy)

    @property
    def is_divergent(self) -> Tensor:
        """False for every chain [B] bool."""
        return torch.zeros_like(self.energy, dtype=torch.bool)

    @property
    def grad_evals(self) -> Tensor:
        """Gradient evaluations per chain and transition (1) [B] int64."""
        return torch.ones_like(self.energy, dtype=torch.int64)


class MALAInfo(MHInfo):
    """Per-chain [B] diagnostics of one MALA transition: those of a Metropolis–Hastings step
    (``accept_prob``, ``is_nan``, ``is_divergent`` derived when read), with ``grad_evals`` 1."""

    __slots__ = ()

    @property
    def grad_evals(self) -> Tensor:
        """Gradient evaluations per chain and transition (1) [B] int64."""
        return torch.ones_like(self.energy, dtype=torch.int64)


def _sqrt(v: float | Tensor) -> float | Tensor:
    return v.sqrt() if isinstance(v, Tensor) else math.sqrt(v)


@dataclass(frozen=True)
class Langevin:
    """Unadjusted Langevin / SGLD: x' = x − η g + σ ξ, with g = ∇E(x) (optionally clipped).

    step_size η > 0; noise_scale σ > 0 or None for σ = √(2η) (temperature 1, the diffusion of
    p ∝ exp(−E)); set separately, as EBM training often does, the chain targets roughly
    exp(−E/T) with T = σ²/(2η) (``temperature``). grad_clip: None, or a bound c > 0 on each
    chain's Euclidean gradient norm over the whole event, g ← g · min(1, c/‖g‖) (the direction
    is kept). No Metropolis correction: biased by O(η); nothing to target, so it is not
    StepSizeAdaptable and ``adaptation.warmup`` only runs it. Cost: 1 gradient evaluation per
    transition, made at its start (lazy): ``init`` evaluates nothing and a step returns x'
    with energy and grad None, because x' is where a trainer's θ update happens before the
    next step.
    """

    step_size: float | Tensor = 0.003  # configs/sampler/langevin.yaml: 0.01 diverged on thin rings
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
        """Chains at x [B, *event], not evaluated: the first step evaluates E and ∇E at x."""
        return ChainState(x, None, None)

    def step(
        self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator
    ) -> tuple[ChainState, ULAInfo]:
        return run_kernel(self, energy_fn, state, self.draws(state, generator))

    def prepare(self, energy_fn: nn.Module, state: ChainState) -> ChainState:
        """Nothing: the kernel's one gradient evaluation is at its start (lazy)."""
        return state

    def draws(self, state: ChainState, generator: torch.Generator) -> tuple[Tensor]:
        """ξ ~ N(0, I) [B, *event]."""
        return (standard_normal_like(state.x, generator),)

    def draws_ahead(self, state: ChainState, generator: torch.Generator, k: int
                    ) -> list[tuple[Tensor]]:
        """The draws of k steps, in order (DrawsAhead: they read only x's shape)."""
        return sequential_draws(self, state, generator, k)

    def kernel(self, energy: EnergyCalls, state: ChainState, draws: tuple[Tensor]
               ) -> tuple[ChainState, ULAInfo]:
        """x' = x − η g + σ ξ, g = ∇E(x) (clipped), evaluated here when the state lacks it."""
        x = state.x
        if state.grad is None:  # lazy: the step's one gradient evaluation, at its start
            energy_x, grad = energy.energy_and_grad(x)  # [B], [B, *event]
        else:  # a state from MALA/HMC with its gradient cached
            energy_x, grad = state.energy, state.grad
        eta = self.step_size
        sigma = _sqrt(2 * eta) if self.noise_scale is None else self.noise_scale
        if self.grad_clip is not None:
            norm = sum_squares(grad).sqrt_()  # ‖g‖ per chain [B]
            factor = self.grad_clip / norm.clamp_(min=self.grad_clip)  # min(1, c/‖g‖)
            grad = grad * chain_view(factor, grad)
        (noise,) = draws
        drift = add_scaled_traceable(x, grad, -eta)  # x − η g (g straight from a backward)
        x_new = add_scaled_(drift, noise, sigma)  # x − η g + σ ξ
        return ChainState(x_new, None, None), ULAInfo(energy_x)  # x' evaluated by the next step


@dataclass(frozen=True, eq=False)
class MALA:
    """Metropolis-adjusted Langevin: the ULA proposal with σ = √(2η), then MH with the Hastings
    ratio of q(x'|x) = N(x − η∇E(x), 2ηI):

        log α = E(x) − E(x') − ‖x − x' + η∇E(x')‖²/(4η) + ‖x' − x + η∇E(x)‖²/(4η),

    computed in the expanded form E(x) − E(x') + ½ (√(2η) ξ − η/2 (g + g'))·(g + g'), with
    g = ∇E(x), g' = ∇E(x'). With an inverse mass M⁻¹ = AAᵀ (``inv_mass``: None, a diagonal [D],
    a DenseInverseMass or LowRankInverseMass) the proposal is x' = x − ηM⁻¹g + √(2η) Aξ, i.e.
    the same step in whitened coordinates, and the ratio is the same formula with g + g'
    replaced by w = Aᵀ(g + g'):  log α = E(x) − E(x') + √(η/2) (ξ − √(η/8) w)·w.
    StepSizeAdaptable: ``target_accept`` 0.574 is the optimal rate in high dimension (Roberts &
    Rosenthal 1998). MassAdaptable: warm-up estimates a ``mass`` (diag, dense, lowrank with
    ``mass_rank`` directions; fixed keeps inv_mass) from the within-chain covariance.
    Cost: 1 gradient evaluation per transition. (eq=False: tensor fields.)
    """

    step_size: float | Tensor = 0.05
    target_accept: float = 0.574
    inv_mass: Sequence[float] | InverseMass | None = None
    mass: str = "diag"
    mass_rank: int = 8

    def __post_init__(self) -> None:
        check_positive("step_size", self.step_size)
        check_unit_interval("target_accept", self.target_accept)
        object.__setattr__(self, "inv_mass", check_inverse_mass(self.inv_mass))
        check_mass_kind(self.mass, self.mass_rank)
        object.__setattr__(self, "_mass_on", {})  # (dtype, device, event) -> Metric

    def _metric(self, x: Tensor) -> Metric | None:
        """The Metric of inv_mass on x's dtype/device/event (None: identity), cached."""
        if self.inv_mass is None:
            return None
        key = (x.dtype, x.device, x.shape[1:])
        found = self._mass_on.get(key)
        if found is None:
            found = self._mass_on[key] = metric(self.inv_mass, x)
        return found

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        """Chains at x [B, *event] with energy [B] and gradient [B, *event] (1 evaluation)."""
        self._metric(x)  # refuse a wrong length before any work
        energy, grad = energy_and_grad(energy_fn, x)
        return ChainState(x, energy, grad)

    def step(
        self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator
    ) -> tuple[ChainState, MALAInfo]:
        state = self.prepare(energy_fn, state)
        return run_kernel(self, energy_fn, state, self.draws(state, generator))

    def prepare(self, energy_fn: nn.Module, state: ChainState) -> ChainState:
        """A state from a gradient-free or lazy sampler gets E and ∇E (1 evaluation)."""
        return self.init(energy_fn, state.x) if state.grad is None else state

    def draws(self, state: ChainState, generator: torch.Generator) -> MHDraws:
        """ξ ~ N(0, I) [B, *event], then the Metropolis u [B]."""
        return MHDraws(standard_normal_like(state.x, generator), accept_uniforms(state, generator))

    def draws_ahead(self, state: ChainState, generator: torch.Generator, k: int
                    ) -> list[MHDraws]:
        """The draws of k steps, in order (DrawsAhead: they read x's and E's shapes only)."""
        return sequential_draws(self, state, generator, k)

    def kernel(self, energy: EnergyCalls, state: ChainState, draws: MHDraws
               ) -> tuple[ChainState, MALAInfo]:
        """The proposal, its E and ∇E (the one evaluation), the Hastings ratio and the test."""
        x, grad, eta = state.x, state.grad, self.step_size
        noise = draws.noise  # ξ
        mass = self._metric(x)
        if mass is None:
            x_prop = add_scaled_(add_scaled(x, grad, -eta), noise, _sqrt(2 * eta))  # x−ηg+√(2η)ξ
        else:  # x + A(√(2η) ξ − η Aᵀg) = x − η M⁻¹g + √(2η) Aξ
            white = mass.whiten(grad)  # Aᵀg
            step = add_scaled_traceable(noise * _sqrt(2 * eta), white, -eta)  # white: an mm
            x_prop = x + mass.scale(step)
        energy_prop, grad_prop = energy.energy_and_grad(x_prop)
        # log q(x|x') − log q(x'|x) = ½ d·(g + g') + (η/4)(‖g‖² − ‖g'‖²) with d = x' − x
        # = −η g + √(2η) ξ, i.e. ½ w·(g + g') with w = √(2η) ξ − (η/2)(g + g')
        # = √(2η) (ξ − √(η/8) (g + g')): one inner product, no cancellation of two O(D) terms
        # (with a mass: g + g' -> Aᵀ(g + g'), the same algebra in whitened coordinates)
        g_sum = grad + grad_prop if mass is None else white + mass.whiten(grad_prop)
        terms = add_scaled(noise, g_sum, -_sqrt(eta / 8)).mul_(g_sum)  # [B, *event]
        log_ratio = add_event_sum(state.energy - energy_prop, terms, _sqrt(eta / 2))  # log α [B]
        is_accepted = torch.lt(draws.u, log_ratio.exp())  # u < α  [B] (base.metropolis_test)
        energy_new = torch.where(is_accepted, energy_prop, state.energy)  # [B]
        new_state = ChainState(
            select(is_accepted, x_prop, x), energy_new, select(is_accepted, grad_prop, grad)
        )
        return new_state, MALAInfo(log_ratio, is_accepted, energy_new)
