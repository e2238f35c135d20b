"""The sampler protocol shared by every MCMC method.

A sampler is a frozen dataclass of hyperparameters. Chains are batched: ``x`` has shape
[B, *event] and the energy E(x) has shape [B]. The energy function is an argument of every
call, so the same sampler serves while a trainer changes θ. Randomness comes from an explicit
``torch.Generator``. No sampler logs, plots or synchronises with the host.

Capabilities are declared, not probed (house rule 9): what an Info reports (AcceptInfo, Info,
HasDivergences) and what a sampler can have adapted (StepSizeAdaptable, MassAdaptable,
TrajectoryAdaptable) or how it is tempered (Tempered) are Protocols here, checked with
``isinstance`` (``declares`` for an Info), never with a test for an attribute's name in the
code that uses them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


class ChainState(NamedTuple):
    """Current position of B chains with its cached energy and gradient.

    x: [B, *event]; energy: [B] = E(x); grad: [B, *event] = ∇ₓE(x), or None for samplers that
    never need it (random-walk MH), so a step never recomputes what it already knows.
    None also means "not evaluated at x yet": unadjusted Langevin leaves both energy and grad
    None after its move (it evaluates them lazily at the start of its next step, so a trainer
    that changes θ between updates never pays for a gradient it throws away). Every step
    accepts such a state and evaluates what it needs; ``evaluated`` fills it in for a caller.
    """

    x: Tensor
    energy: Tensor | None
    grad: Tensor | None = None


# ---- what a transition reports: the Info protocols ------------------------------------------
# An Info is a NamedTuple (or dataclass) of per-chain [B] tensors. Fields nobody reads must cost
# nothing per step, so the samplers of this package derive most of theirs as properties, computed
# only when read (MHInfo.accept_prob, HMCInfo.energy_error, ULAInfo.is_accepted, …).


@runtime_checkable
class AcceptInfo(Protocol):
    """The least a sampler's Info gives: what every trainer and ``sampler_stats`` read.

    accept_prob [B]: min(1, α), finite (0 where α is NaN or the proposal's energy non-finite);
    is_accepted [B] bool. A user's sampler whose Info has only these two works everywhere.
    """

    @property
    def accept_prob(self) -> Tensor: ...

    @property
    def is_accepted(self) -> Tensor: ...


@runtime_checkable
class Info(AcceptInfo, Protocol):
    """The common fields every sampler of this package fills (BlackJAX-style), per chain [B]:

    accept_prob, is_accepted (AcceptInfo); energy: E at the new state (unadjusted Langevin, which
    evaluates lazily, gives E at the state it moved from: see ULAInfo); is_divergent bool (False
    where a sampler cannot diverge); grad_evals int64: gradient evaluations per chain in this
    transition (0 for RW-MH and independence MH, 1 for MALA and ULA, L for HMC). The shell
    counts gradients only for an Info that declares all of them (checked with ``declares``).
    """

    @property
    def energy(self) -> Tensor: ...

    @property
    def is_divergent(self) -> Tensor: ...

    @property
    def grad_evals(self) -> Tensor: ...


@runtime_checkable
class HasDivergences(Protocol):
    """An Info whose sampler integrates a Hamiltonian and reports its error (HMC), per chain [B]:

    energy_error ΔH = H(x', p') − H(x, p) (may be ±inf or NaN on a divergent transition);
    is_divergent bool (|ΔH| beyond the sampler's bound, or NaN). ``sampler_stats`` logs the
    divergent fraction and the mean |ΔH| over the other chains for an Info that declares this.
    """

    @property
    def is_divergent(self) -> Tensor: ...

    @property
    def energy_error(self) -> Tensor: ...


_DECLARED: dict[tuple[type, type], bool] = {}


def declares(info: object, protocol: type) -> bool:
    """``isinstance(info, protocol)`` for an Info and one of the protocols above, decided once
    per Info class.

    An isinstance check against a runtime_checkable Protocol with data members only tests that
    each member is present; on Python < 3.12 it does so by reading each one, which *evaluates* a
    lazy property (28 µs measured for HasDivergences on an HMCInfo), i.e. per-step tensor work. The
    fields of an Info are those of its class (a NamedTuple or dataclass), so the answer for the
    first Info of a class holds for every later one.
    """
    key = (type(info), protocol)
    known = _DECLARED.get(key)
    if known is None:
        known = _DECLARED[key] = isinstance(info, protocol)
    return known


# ---- samplers and what they can do: declared, never probed (house rule 9) ----------------------


class Sampler(Protocol):
    """What every sampler provides (see samplers/mh.py, hmc.py, langevin.py)."""

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        """Start chains at x [B, *event]."""
        ...

    def step(
        self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator
    ) -> tuple[ChainState, AcceptInfo]:
        """One transition of every chain; returns the new state and an Info of [B] tensors."""
        ...


@runtime_checkable
class StepSizeAdaptable(Sampler, Protocol):
    """A sampler whose step size warm-up tunes by dual averaging towards its acceptance target.

    The declaration: a frozen dataclass with the fields ``step_size`` (a number, or the 0-d
    tensor that adaptation sets) and ``target_accept`` δ ∈ (0, 1); adaptation makes new
    samplers with ``dataclasses.replace(sampler, step_size=ε)`` (samplers/adaptation.py), so
    ``step_size`` must be a dataclass field. RandomWalkMH (its proposal scale), MALA and HMC
    declare it; Langevin (no Metropolis test, nothing to target) and IndependenceMH do not.
    ``isinstance`` against this protocol tests only that the members are present: having a
    ``target_accept`` field *is* the declaration, documented here, not a guess from a name.
    """

    step_size: float | Tensor
    target_accept: float


@runtime_checkable
class MassAdaptable(Sampler, Protocol):
    """A sampler that takes an inverse mass matrix ``inv_mass`` (HMC, MALA): None (identity), a
    diagonal [D], a DenseInverseMass (full M⁻¹ and its Cholesky factor) or a LowRankInverseMass
    (diagonal plus ``mass_rank`` eigen-directions), see samplers/mass.py. ``mass`` names what
    warm-up estimates from the chains' within-chain covariance (diag, dense, lowrank, or fixed:
    keep inv_mass), set with ``dataclasses.replace``. Adapted only in a sampler that is also
    StepSizeAdaptable (inside Stan's windows). As for StepSizeAdaptable, ``isinstance`` tests
    that the fields are present: the declaration.
    """

    inv_mass: object
    mass: str
    mass_rank: int


class Trajectory(NamedTuple):
    """The end of each chain's integrated trajectory, before the accept/reject (what ChEES reads):
    x [B, *event] the proposal, velocity [B, *event] = M⁻¹p there, length [B] = ε_b·L_b."""

    x: Tensor
    velocity: Tensor
    length: Tensor


@runtime_checkable
class TrajectoryAdaptable(StepSizeAdaptable, Protocol):
    """A sampler whose trajectory length warm-up tunes (HMC, by ChEES in samplers/adaptation.py).

    Fields: ``n_leapfrog`` L (a Python int: the batched step count), ``max_leapfrog``,
    ``adapt_trajectory`` (whether warm-up tunes it), ``jitter_n_leapfrog`` and ``length_floor``
    (the jitter's shortest fraction of L; None: warm-up's ChEES sets its own); ``transition``
    is ``step`` with a per-chain trajectory length T (0-d tensor) and the Trajectory returned.
    """

    n_leapfrog: int
    max_leapfrog: int
    adapt_trajectory: bool
    jitter_n_leapfrog: bool
    length_floor: float | None

    def transition(
        self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator,
        trajectory_length: Tensor | None = None,
    ) -> tuple[ChainState, AcceptInfo, Trajectory]: ...


@runtime_checkable
class SelfAdapting(Sampler, Protocol):
    """A sampler that runs its own warm-up (e.g. parallel tempering: its temperature ladder and
    each replica's step size). ``adaptation.warmup`` hands such a sampler the whole warm-up and
    takes back (adapted sampler, last state), a fixed sampler from then on.
    """

    def warmup(
        self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator, n_steps: int
    ) -> tuple[Sampler, ChainState]: ...


def energy_only(energy_fn: nn.Module, x: Tensor) -> Tensor:
    """E(x) [B] for x [B, *event], without building a graph through θ."""
    with torch.no_grad():
        return energy_fn(x)


def energy_and_grad(energy_fn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """E(x) [B] and ∇ₓE(x) [B, *event], both detached.

    Chains are independent, so ∇ₓ Σ_b E(x_b) gives every chain's own gradient in one backward
    pass. Parameter gradients are not accumulated (autograd.grad only w.r.t. x). The grad-mode
    context is entered only when grad mode is off, and the gradient of autograd.grad without
    create_graph already carries no graph: both would be per-call overhead (HMC: L per step).
    """
    if not torch.is_grad_enabled():
        with torch.enable_grad():
            return energy_and_grad(energy_fn, x)
    x = x.detach().requires_grad_(True)
    energy = energy_fn(x)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    return energy.detach(), grad


def evaluated(energy_fn: nn.Module, state: ChainState) -> ChainState:
    """``state`` with E(x) [B] filled in where a lazy step (ULA) left it None (1 forward)."""
    if state.energy is not None:
        return state
    return ChainState(state.x, energy_only(energy_fn, state.x), state.grad)


def metropolis_accept(
    log_ratio: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Metropolis–Hastings test on log α = log_ratio [B].

    Returns (accept_prob [B], is_accepted [B] bool, is_nan [B] bool). A NaN ratio is a
    rejection and is reported, never clamped into an acceptance (house rule 4).
    Accept iff u < min(1, exp(log α)) with u ~ U[0, 1), the same event as log u < log α; the
    NaN ratio gets accept_prob 0, so u < 0 rejects it (and the chain mean stays finite).
    """
    is_nan = torch.isnan(log_ratio)
    accept_prob = log_ratio.clamp(max=0.0).exp_().nan_to_num_(nan=0.0)  # min(1, α) [B]
    u = torch.empty_like(log_ratio).uniform_(generator=generator)  # U[0, 1)  [B]
    is_accepted = u < accept_prob
    return accept_prob, is_accepted, is_nan


def metropolis_test(log_ratio: Tensor, generator: torch.Generator) -> Tensor:
    """Metropolis–Hastings test on log α = log_ratio [B]: is_accepted [B] = u < exp(log α).

    u ~ U[0, 1) from ``generator``. Since u < 1, this is the event u < min(1, α) of
    ``metropolis_accept``, decided identically from the same draws, in 4 small ops instead of 8:
    min(1, α) and the NaN flag are left to ``acceptance_probability`` and ``torch.isnan``,
    computed only when an Info is read. A NaN log α gives exp = NaN and u < NaN is False: a
    rejection, counted by the Info's ``is_nan``.
    """
    u = torch.rand_like(log_ratio, generator=generator)  # [B], = empty_like(…).uniform_(…)
    return torch.lt(u, log_ratio.exp())


def acceptance_probability(log_ratio: Tensor) -> Tensor:
    """min(1, exp(log α)) [B], and 0 where log α is NaN (a rejection, house rule 4)."""
    return log_ratio.clamp(max=0.0).exp_().nan_to_num_(nan=0.0)


def select(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Per-chain where: mask [B] broadcast over the event dims of new/old [B, *event].

    For an event of exactly 8 bytes (2-D float32 chains, the toy problems) the rows are
    selected as one int64 each: a bitwise copy, so exact, and it avoids broadcasting the mask
    over a 2-wide inner dimension (measured 7 µs against 12 µs at B = 1024, 1 thread).
    Inside a compiled graph it is the plain where, which the compiler fuses with what made
    new/old (the int64 view pins a row-major layout: 20 % slower compiled HMC steps).
    """
    if not torch.compiler.is_compiling() and new.dim() == 2 and new.dtype == old.dtype \
            and new.shape[1] * new.element_size() == 8 and new.is_contiguous() \
            and old.is_contiguous():
        rows = torch.where(mask[:, None], new.view(torch.int64), old.view(torch.int64))  # [B, 1]
        return rows.view(new.dtype)  # [B, 2]
    return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)


def standard_normal_like(x: Tensor, generator: torch.Generator) -> Tensor:
    """ξ ~ N(0, I) with x's shape, dtype and device, drawn from ``generator``.

    randn_like (the same draws as empty_like(…).normal_(…)) measured 10 µs against 28 µs for
    torch.randn(shape, …) at [1024, 2] on one thread: the factory call's argument handling is
    a large part of so small an op.
    """
    return torch.randn_like(x, generator=generator, memory_format=torch.contiguous_format)


def add_scaled(x: Tensor, v: Tensor, a: float | Tensor) -> Tensor:
    """x + a·v as a new tensor in one kernel; a is a number or a 0-d/broadcastable tensor."""
    if isinstance(a, Tensor):
        return torch.addcmul(x, v, a)
    return torch.add(x, v, alpha=a)


def add_scaled_(out: Tensor, v: Tensor, a: float | Tensor) -> Tensor:
    """out += a·v in place in one kernel; returns out."""
    if isinstance(a, Tensor):
        return out.addcmul_(v, a)
    return out.add_(v, alpha=a)


def chain_view(values: Tensor, like: Tensor) -> Tensor:
    """Per-chain values [B] as [B, 1, …, 1], broadcastable against like [B, *event]."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def event_sum(t: Tensor) -> Tensor:
    """Σ over the event of t [B, *event] -> [B].

    Measured (1 CPU thread, B=1024): a matrix-vector product with a cached vector of ones beats
    torch's inner reduction for small events (6 µs vs 12 µs at D=2).
    """
    flat = t.flatten(1)  # [B, D]
    if flat.shape[1] <= 32:
        return torch.mv(flat, _ones(flat.shape[1], flat.dtype, flat.device))
    return flat.sum(1)


def add_event_sum(d: Tensor, t: Tensor, alpha: float | Tensor = 1.0) -> Tensor:
    """d + alpha · Σ_event t as a new [B] tensor, for d [B] and t [B, *event].

    One kernel for small events: addmv(d, t [B, D], ones [D]) fuses the reduction and the add
    (when d and t share a dtype: an energy may be float64 over float32 chains, e.g. AIS).
    """
    flat = t.flatten(1)  # [B, D]
    if flat.shape[1] <= 32 and not isinstance(alpha, Tensor) and d.dtype == flat.dtype:
        return torch.addmv(d, flat, _ones(flat.shape[1], flat.dtype, flat.device), alpha=alpha)
    return add_scaled(d, event_sum(t), alpha)


def sum_squares(v: Tensor) -> Tensor:
    """Σ over the event of v² for v [B, *event] -> [B] (the norm kernel for D > 32)."""
    if math.prod(v.shape[1:]) <= 32:
        return event_sum(v.square())
    return torch.linalg.vector_norm(v.flatten(1), dim=1).square_()


@functools.lru_cache(maxsize=32)
def _ones(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A constant vector of n ones (cached: allocating it cost as much as the product)."""
    return torch.ones(n, dtype=dtype, device=device)


def check_positive(key: str, value: float | Tensor) -> None:
    """Refuse a hyperparameter that is not a finite number > 0 (one line naming sampler.<key>).

    A tensor value (a step size set by adaptation) is checked for shape only: reading its value
    would synchronise with the device on every warm-up step.
    """
    if isinstance(value, Tensor):
        if value.ndim != 0 or not value.is_floating_point():
            raise ValueError(
                f"sampler.{key} must be a number > 0 or a 0-d float tensor, "
                f"got a tensor of shape {tuple(value.shape)} and dtype {value.dtype}"
            )
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"sampler.{key} must be a number > 0, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"sampler.{key} must be a finite number > 0, got {value!r}")


def check_unit_interval(key: str, value: float, *, allow_zero: bool = False) -> None:
    """Refuse a value outside (0, 1) (or [0, 1) with allow_zero), naming sampler.<key>."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    low_ok = ok and (value >= 0 if allow_zero else value > 0)
    if not (low_ok and value < 1):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"sampler.{key} must be in {interval}, got {value!r}")


def as_vector(key: str, value: float | Sequence[float] | Tensor) -> Tensor:
    """A hyperparameter given as a number, a list (e.g. a Hydra ListConfig) or a tensor ->
    a 0-d or [D] float tensor over the flattened event (numbers and lists get the default dtype).
    """
    if isinstance(value, Tensor):
        if value.ndim > 1 or not value.is_floating_point():
            raise ValueError(
                f"sampler.{key} must be a number or a 1-d float tensor over the flattened event, "
                f"got shape {tuple(value.shape)} and dtype {value.dtype}"
            )
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        values = [float(value)]
        scalar = True
    elif isinstance(value, (str, bytes)):
        raise ValueError(f"sampler.{key} must be a number or a list of numbers, got {value!r}")
    else:
        try:
            values = [float(v) for v in value]
        except (TypeError, ValueError):
            raise ValueError(
                f"sampler.{key} must be a number or a list of numbers, got {value!r}"
            ) from None
        scalar = False
    if not values or not all(math.isfinite(v) for v in values):
        raise ValueError(f"sampler.{key} must be finite numbers, got {value!r}")
    out = torch.tensor(values, dtype=torch.get_default_dtype())
    return out[0] if scalar else out


def event_vector(v: Tensor, x: Tensor, key: str) -> Tensor:
    """A 0-d or [D] hyperparameter tensor on x's dtype/device, shaped like the event [*event]."""
    v = v.to(dtype=x.dtype, device=x.device)
    if v.ndim == 0:
        return v
    if v.numel() != math.prod(x.shape[1:]):
        raise ValueError(
            f"sampler.{key} has {v.numel()} entries but the event {tuple(x.shape[1:])} has "
            f"{math.prod(x.shape[1:])} coordinates"
        )
    return v.view(x.shape[1:])


@runtime_checkable
class Tempered(Protocol):
    """A sampler whose stationary law is exp(−E/T) rather than exp(−E) (Langevin with its
    noise σ ≠ √(2η): T = σ²/(2η)); the run reports T and says when it is not 1."""

    @property
    def temperature(self) -> float: ...
