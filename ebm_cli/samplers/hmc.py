"""Hamiltonian Monte Carlo with a diagonal, dense or low-rank mass matrix (seed §2.1.3, eqs. 16–20).

One transition for B chains at once:
  1. draw momenta p ~ N(0, M), M⁻¹ = inv_mass (samplers/mass.py)          (seed §2.1.3, step 1)
  2. L leapfrog steps of size ε from (x, p) to (x', p')                    (eq. 20, integrators.py)
  3. accept with min(1, exp(−ΔH)), H(x, p) = E(x) + ½ pᵀM⁻¹p                 (Metropolis correction)
Cost: exactly L gradient evaluations (the gradient at x is cached in ChainState; the one at x' is
the last leapfrog gradient and is cached if accepted). Source: Neal (2011), "MCMC using
Hamiltonian dynamics", §5.2–5.4 (jitter of ε and L). The trajectory length εL is adapted in
warm-up by ChEES (Hoffman, Radul & Sountsov 2021; samplers/adaptation.py) through ``transition``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ebm_cli.samplers.base import (
    ChainState,
    Trajectory,
    acceptance_probability,
    add_event_sum,
    chain_view,
    check_positive,
    check_unit_interval,
    energy_and_grad,
    select,
    standard_normal_like,
)
from ebm_cli.samplers.compiled import EagerEnergy, EnergyCalls, run_kernel
from ebm_cli.samplers.integrators import leapfrog
from ebm_cli.samplers.mass import (
    DiagMetric,
    InverseMass,
    Metric,
    check_inverse_mass,
    check_mass_kind,
    metric,
)


class HMCDraws(NamedTuple):
    """The random numbers of one HMC transition, in the order drawn: z = ξ ~ N(0, I)
    [B, *event] (p = A⁻ᵀξ), jitter u ~ U[0, 1) [B] of ε (None without jitter), fraction
    u ~ U(f, 1] (f = length_floor) of the trajectory, L_t = ⌈u·L⌉ (or ⌈u·T/ε⌉ in a ChEES
    transition): 0-d, shared by the chains (``shared_n_leapfrog``), or [B] per chain (None
    without jitter_n_leapfrog), u ~ U[0, 1) [B] of the Metropolis test."""

    z: Tensor
    jitter: Tensor | None
    fraction: Tensor | None
    u: Tensor


class HMCInfo(NamedTuple):
    """Per-chain [B] diagnostics of one HMC transition (an ``Info`` that declares
    ``HasDivergences``); ``accept_prob``, ``is_nan`` and ``energy_error`` are derived from
    log α = −ΔH when read (see base.metropolis_test)."""

    log_accept_ratio: Tensor  # log α = −ΔH; NaN counts as a rejection
    is_accepted: Tensor  # bool
    energy: Tensor  # E at the new state
    is_divergent: Tensor  # bool: |ΔH| > max_energy_error, or NaN
    step_size: Tensor  # ε used by each chain (after jitter)
    n_leapfrog: Tensor  # int64: leapfrog steps of each chain's trajectory
    grad_evals: Tensor  # int64: gradient evaluations spent on each chain (= L)

    @property
    def accept_prob(self) -> Tensor:
        """min(1, exp(−ΔH)) [B], 0 where ΔH is NaN."""
        return acceptance_probability(self.log_accept_ratio)

    @property
    def is_nan(self) -> Tensor:
        """[B] bool: ΔH was NaN (a counted rejection)."""
        return torch.isnan(self.log_accept_ratio)

    @property
    def energy_error(self) -> Tensor:
        """ΔH = H(x', p') − H(x, p) [B]."""
        return self.log_accept_ratio.neg()


@dataclass(frozen=True, eq=False)
class HMC:
    """HMC with L = ``n_leapfrog`` leapfrog steps of size ε = ``step_size``.

    StepSizeAdaptable (towards ``target_accept``), MassAdaptable and TrajectoryAdaptable.
    inv_mass: None (identity), the diagonal of M⁻¹ as a list/tensor [D] over the flattened
    event, a list of D lists (a dense M⁻¹) or a DenseInverseMass / LowRankInverseMass
    (samplers/mass.py). ``mass`` is what warm-up estimates from the chains' within-chain
    covariance: diag, dense, lowrank (``mass_rank`` eigen-directions plus a diagonal) or fixed
    (keep inv_mass). jitter ∈ [0, 1): each chain draws its own ε uniformly in ε·(1 ± jitter) per
    transition. jitter_n_leapfrog (default on) runs ⌈u·L⌉ leapfrog steps per transition,
    u ~ U(f, 1], f = ``length_floor`` (0 gives 1..L; 0.5 with L = 10 gives 6..10). None (the
    default): ½ once warm-up tunes the length by ChEES (adaptation.CHEES_LENGTH_FLOOR: its
    jittered criterion then has one clear maximum, and the shortest trajectories move least for
    their cost), 0 with the configured L (e.g. MLE's negatives, whose warm-up tunes ε only:
    there 1..L reached the same held-out KL as 6..10 for 25 % fewer gradients). With
    ``shared_n_leapfrog`` (default) all chains share that draw L_t,
    as ChEES-HMC jitters (Hoffman, Radul & Sountsov 2021): on CPU, eagerly, the transition runs
    exactly L_t steps (L_t gradients: ≈ ¾L on average with the floor ½, ≈ ½L from 0); inside
    a compiled graph or on CUDA, where reading L_t would synchronise with the device, it runs
    the L batched steps with every chain frozen (step 0) after L_t: the same result, L
    gradients. Without it each chain draws its own L_b and is frozen after it; all chains pay
    L gradients.
    adapt_trajectory (default on): warm-up sets L = ⌈T/ε⌉ from the ChEES-adapted trajectory
    length T (the longest of the jittered ones), at most ``max_leapfrog``.
    A transition with |ΔH| > max_energy_error (or NaN ΔH) is flagged divergent.
    Tensor values of step_size/inv_mass (set by adaptation) are not value-checked: that would
    synchronise with the device. (eq=False: tensor fields make the generated __eq__ ambiguous.)
    """

    step_size: float | Tensor = 0.1
    n_leapfrog: int = 10
    target_accept: float = 0.8
    inv_mass: Sequence[float] | InverseMass | None = None
    jitter: float = 0.0
    jitter_n_leapfrog: bool = True
    shared_n_leapfrog: bool = True
    length_floor: float | None = None
    max_energy_error: float = 1000.0
    mass: str = "diag"
    mass_rank: int = 8
    adapt_trajectory: bool = True
    max_leapfrog: int = 256

    def __post_init__(self) -> None:
        check_positive("step_size", self.step_size)
        for key in ("n_leapfrog", "max_leapfrog"):
            n = getattr(self, key)
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"sampler.{key} must be an integer >= 1, got {n!r}")
        check_unit_interval("target_accept", self.target_accept)
        object.__setattr__(self, "inv_mass", check_inverse_mass(self.inv_mass))
        check_unit_interval("jitter", self.jitter, allow_zero=True)
        if self.length_floor is not None:
            check_unit_interval("length_floor", self.length_floor, allow_zero=True)
        for key in ("jitter_n_leapfrog", "shared_n_leapfrog", "adapt_trajectory"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"sampler.{key} must be true or false, got {getattr(self, key)!r}")
        check_positive("max_energy_error", self.max_energy_error)
        check_mass_kind(self.mass, self.mass_rank)
        object.__setattr__(self, "_mass_on", {})  # (dtype, device, event) -> Metric

    def _metric(self, x: Tensor) -> Metric | None:
        """The Metric of inv_mass on x's dtype/device/event (None: identity), converted once per
        dtype/device/event, so a config's CPU inv_mass is not copied to the GPU every step."""
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
    ) -> tuple[ChainState, HMCInfo]:
        state = self.prepare(energy_fn, state)
        return run_kernel(self, energy_fn, state, self.draws(state, generator))

    def prepare(self, energy_fn: nn.Module, state: ChainState) -> ChainState:
        """A state from a gradient-free sampler gets E and ∇E (one extra evaluation)."""
        return self.init(energy_fn, state.x) if state.grad is None else state

    def draws(self, state: ChainState, generator: torch.Generator) -> HMCDraws:
        """The step's random numbers in the order it draws them: ξ, the jitter of ε, the
        trajectory's fraction u (of L, or of ChEES's T in a warm-up ``transition``), u."""
        x = state.x
        b = x.shape[0]
        z = standard_normal_like(x, generator)  # ξ
        jitter = x.new_empty(b).uniform_(generator=generator) if self.jitter != 0 else None
        fraction = None
        if self.jitter_n_leapfrog:  # U(f, 1]: one for all chains, or one each (_transition)
            shape = () if self.shared_n_leapfrog else (b,)
            floor = 0.0 if self.length_floor is None else self.length_floor
            fraction = 1.0 - x.new_empty(shape).uniform_(generator=generator).mul_(1.0 - floor)
        assert state.energy is not None
        dtype = torch.promote_types(state.energy.dtype, x.dtype)  # that of log α
        u = torch.rand(b, dtype=dtype, device=x.device, generator=generator)
        return HMCDraws(z, jitter, fraction, u)

    def transition(
        self,
        energy_fn: nn.Module,
        state: ChainState,
        generator: torch.Generator,
        trajectory_length: Tensor | None = None,
    ) -> tuple[ChainState, HMCInfo, Trajectory]:
        """``step``, also returning the proposal's Trajectory (what ChEES adapts T from); eager.

        trajectory_length T (0-d tensor, warm-up only): each chain runs L_b = ⌈u·T/ε_b⌉
        steps with the draws' fraction u ~ U(length_floor, 1], shared by the chains (then ε_b
        is the unjittered ε) or u_b per chain (u = 1 without jitter_n_leapfrog), clamped to
        1..n_leapfrog (the batched count, a Python int). None: L_t = ⌈u·L⌉, or L.
        """
        state = self.prepare(energy_fn, state)
        draws = self.draws(state, generator)
        return self._transition(EagerEnergy(energy_fn), state, draws, trajectory_length)

    def kernel(self, energy: EnergyCalls, state: ChainState, draws: HMCDraws
               ) -> tuple[ChainState, HMCInfo]:
        """The pure transition: momenta, L leapfrog steps (L gradients), the Metropolis test."""
        new_state, info, _ = self._transition(energy, state, draws, None)
        return new_state, info

    def _transition(self, energy: EnergyCalls, state: ChainState, draws: HMCDraws,
                    trajectory_length: Tensor | None) -> tuple[ChainState, HMCInfo, Trajectory]:
        x = state.x
        b, n_steps = x.shape[0], self.n_leapfrog
        z = draws.z  # ξ
        mass = self._metric(x)
        p = z if mass is None else mass.momentum(z)  # p ~ N(0, M)
        eps = self._step_sizes(x, draws.jitter)  # 0-d, or [B, 1, …] with jitter
        n_active = None  # each chain's L_b (or one L_t for all), None: every chain runs L
        if trajectory_length is not None or draws.fraction is not None:
            u = x.new_ones(b) if draws.fraction is None else draws.fraction
            if trajectory_length is None:  # L_t = ⌈u·L⌉
                n_active = torch.ceil(u * n_steps)
            else:  # ⌈u·T/ε⌉: a shared u with the unjittered ε, else each chain's ε_b
                per_chain = self._step_sizes(x, None) if u.ndim == 0 or not eps.ndim \
                    else eps.reshape(-1)
                n_active = torch.ceil(u * trajectory_length.to(x.dtype) / per_chain)
            n_active = n_active.clamp_(1, n_steps).long()
        if n_active is not None and n_active.ndim == 0:  # L_t shared by the chains
            if x.device.type == "cpu" and not torch.compiler.is_compiling():
                n_steps, n_active = int(n_active), None  # exactly L_t steps: no device to wait
            else:  # no host read: L batched steps, all chains frozen after L_t
                n_active = n_active.expand(b)
        inv_mass = mass.inv if isinstance(mass, DiagMetric) else (
            None if mass is None else mass.velocity)
        x_new, p_new, energy_new, grad_new = leapfrog(
            energy.energy_and_grad, x, p, state.grad, eps, inv_mass, n_steps, n_active
        )  # eq. 20, n_steps gradients
        # log α = −ΔH = E(x) − E(x') − ½ (p'ᵀM⁻¹p' − pᵀM⁻¹p), with pᵀM⁻¹p = ‖ξ‖²  [B]
        scaled = p_new if mass is None else mass.whiten(p_new)  # Aᵀp', ‖Aᵀp'‖² = p'ᵀM⁻¹p'
        kinetic_terms = z.square().addcmul_(scaled, scaled, value=-1.0)  # [B, *event]
        log_ratio = add_event_sum(state.energy - energy_new, kinetic_terms, 0.5)
        is_accepted = torch.lt(draws.u, log_ratio.exp())  # u < exp(−ΔH) [B] (metropolis_test)
        # |ΔH| > max_energy_error, or NaN: "not (|ΔH| <= max)" counts NaN in one comparison
        is_divergent = torch.le(log_ratio.abs(), self.max_energy_error).logical_not_()
        new_state = ChainState(
            select(is_accepted, x_new, x),
            torch.where(is_accepted, energy_new, state.energy),
            select(is_accepted, grad_new, state.grad),
        )
        grad_evals = torch.full((b,), n_steps, dtype=torch.int64, device=x.device)
        step_size = eps.expand(b) if eps.ndim == 0 else eps.view(b)
        n_leapfrog = grad_evals if n_active is None else n_active  # steps each chain took
        info = HMCInfo(
            log_accept_ratio=log_ratio,
            is_accepted=is_accepted,
            energy=new_state.energy,
            is_divergent=is_divergent,
            step_size=step_size,
            n_leapfrog=n_leapfrog,
            grad_evals=grad_evals,
        )
        velocity = p_new if mass is None else mass.velocity(p_new)  # M⁻¹p' = dx/dt at the end
        return new_state, info, Trajectory(x_new, velocity, step_size * n_leapfrog)

    def _step_sizes(self, x: Tensor, u: Tensor | None) -> Tensor:
        """ε as a 0-d tensor, or per chain ε·(1 + jitter·(2u − 1)) for the draws u ~ U[0, 1)
        [B] (``jitter`` > 0): [B, 1, …]."""
        eps = self.step_size
        if not isinstance(eps, Tensor):
            eps = x.new_full((), eps)
        eps = eps.to(dtype=x.dtype, device=x.device)
        if u is None:
            return eps
        factor = u.mul(2.0 * self.jitter).add_(1.0 - self.jitter)  # U[1 − j, 1 + j)
        return chain_view(factor, x) * eps

