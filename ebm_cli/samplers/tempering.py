"""Parallel tempering (replica exchange) around any base sampler.

K replicas of each of the B chains run at temperatures 1 = T_0 < T_1 < … < T_{K−1}, replica k
targeting π_k(x) ∝ exp(−β_k E(x)), β_k = 1/T_k; the joint target is Π_k π_k. One transition:

  1. one step of the base sampler on all K·B replicas at once (one batched energy call on
     [K·B, *event]: the tempered energy β_k E), in per-temperature scaled coordinates
     y = x / s_k (below);
  2. an exchange between neighbouring temperatures (k, k+1) for the pairs k ≡ t (mod 2) (the
     deterministic even/odd scheme, Okabe et al. 2001; Syed et al. 2022, "non-reversible PT"),
     accepted per chain with probability min(1, α),
         log α = (β_k − β_{k+1}) (E(x_k) − E(x_{k+1})),
     which leaves Π_k π_k invariant (a Metropolis move on the pair's labels).

Per-temperature step sizes without touching the base sampler: replica k runs the base sampler
on ỹ ↦ β_k E(s_k y), whose law is that of x/s_k under π_k (a linear change of variables has a
constant Jacobian, so the chain in y is exact iff the base sampler is). A base step of size ε
on y is a step of size ε·s_k on x (RW-MH: proposal sd ε·s_k; MALA/ULA: η·s_k²; HMC: ε·s_k), so
hot replicas, whose modes are √T_k wider, get larger steps. s_k starts at √T_k (right for
Gaussian-like modes, and kept for a base without an acceptance to target, e.g. ULA).

Warm-up (``warmup``, the SelfAdapting protocol of samplers/base.py) adapts both:
  - the ladder: log T_{k+1} − log T_k = exp(ρ_k), ρ_k ← ρ_k + γ_t (ᾱ_k − α*), γ_t = (t+1)^−0.6,
    towards the swap rate α* = ``target_swap`` of every neighbouring pair (Miasojedow, Moulines
    & Vihola 2013), during the first 3/4 of the warm-up; T_0 = 1 always, the hottest moves
    (neighbours at most 1000× apart);
  - s_k = √T_k · r_k, log r_k by dual averaging (samplers/adaptation.py DualAveraging) per
    temperature towards the base's ``target_accept`` (when the base is StepSizeAdaptable),
    restarted from its average when the ladder freezes.
The adapted ladder and scales are fields of the returned (fixed) sampler.

The rest of the program sees ``TemperingState.x``: the T = 1 chains [B, *event]; the replicas
travel in ``TemperingState.replicas`` (the base sampler's own state over [K·B, *event]).
Cost per transition: K times the base sampler's, plus one energy evaluation of the K·B
replicas when the base leaves its energies unevaluated (ULA). No host synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ebm_cli.samplers.adaptation import DualAveraging
from ebm_cli.samplers.base import (
    HasDivergences,
    Info,
    Sampler,
    StepSizeAdaptable,
    Tempered,
    acceptance_probability,
    as_vector,
    chain_view,
    check_positive,
    check_unit_interval,
    declares,
    energy_only,
)

LADDER_GAIN_DECAY = 0.6  # γ_t = (t + 1)^−0.6: Robbins–Monro steps, Σγ = ∞, Σγ² < ∞
LADDER_SHARE = 0.75  # the ladder adapts during the first 3/4 of the warm-up, then freezes
# Neighbours at most 1000× apart in temperature (ρ_k ≤ log log 1000): where swaps stay easy at
# any gap (an energy flat far out) the ladder stops widening instead of overflowing.
MAX_LOG_GAP = math.log(math.log(1000.0))


# ---- what the rest of the program sees ----------------------------------------------------


class TemperingState(NamedTuple):
    """The T = 1 chains and, behind them, every replica.

    x [B, *event], energy [B] = E(x) (None only straight after ``init`` of a lazy base), grad
    [B, *event] = ∇E(x) or None: the cold chains, in the energy's own coordinates.
    replicas: the base sampler's state over the K·B replicas, replica-major (rows k·B … k·B +
    B − 1 are temperature k), in the scaled coordinates y = x / s_k of the tempered energy
    β_k E(s_k y). temperatures [K], scales [K]: the ladder the replicas are expressed in.
    parity: which neighbouring pairs the next exchange attempts (k ≡ parity mod 2).
    """

    x: Tensor
    energy: Tensor | None
    grad: Tensor | None
    replicas: Any
    temperatures: Tensor
    scales: Tensor
    parity: int = 0


@runtime_checkable
class Replicated(Protocol):
    """A sampler whose state holds more chains than the B that ``state.x`` shows (parallel
    tempering's hotter replicas). Where the program replaces the chains it sees (MLE's
    persistent chains and restarts, evaluation restarts) it keeps the others with ``restate``;
    checkpoints keep them with ``replicas`` / ``init_replicas``."""

    def replicas(self, state: Any) -> Tensor:
        """Every chain's position [K, B, *event] (row 0: state.x)."""
        ...

    def init_replicas(self, energy_fn: nn.Module, replicas: Tensor, parity: int = 0) -> Any:
        """A state from positions [K, B, *event] (row 0 becomes state.x); parity: where
        the exchanges of a deterministic schedule continue."""
        ...

    def restate(self, energy_fn: nn.Module, state: Any, x: Tensor) -> Any:
        """``state`` with its visible chains moved to x [B, *event], the others kept, every
        cached energy re-evaluated (the energy may have changed)."""
        ...


@runtime_checkable
class HasSwaps(Protocol):
    """An Info of a replica-exchange transition: swap_prob [K−1, B] = min(1, α) of exchanging
    the neighbours (k, k+1) of each chain (computed for every pair, attempted or not), and
    replica_accept_prob [K, B], the base move's acceptance at each temperature; temperatures
    [K], the ladder. ``sampler_stats`` logs their chain means per pair and per temperature."""

    @property
    def swap_prob(self) -> Tensor: ...

    @property
    def temperatures(self) -> Tensor: ...

    @property
    def replica_accept_prob(self) -> Tensor: ...


# ---- what a transition reports ---------------------------------------------------------------


class TemperingInfo(NamedTuple):
    """Per-chain diagnostics of one transition (an ``AcceptInfo`` that declares HasSwaps).

    base: the base sampler's Info over the K·B replicas (replica-major); swap_log_ratio
    [K−1, B] log α of exchanging (k, k+1), for every pair; swap_attempted [K−1] bool (the
    pairs of this step's parity); is_swapped [K−1, B] bool; cold_energy [B]: E at the T = 1
    chains' new state; temperatures [K]. accept_prob / is_accepted are the base move's at
    T = 1. The derived fields are computed when read.
    """

    base: Any
    swap_log_ratio: Tensor
    swap_attempted: Tensor
    is_swapped: Tensor
    cold_energy: Tensor
    temperatures: Tensor

    @property
    def accept_prob(self) -> Tensor:
        """The base move's min(1, α) at T = 1 [B]."""
        return self.base.accept_prob[: self.cold_energy.shape[0]]

    @property
    def is_accepted(self) -> Tensor:
        """The base move's acceptance at T = 1 [B] bool."""
        return self.base.is_accepted[: self.cold_energy.shape[0]]

    @property
    def swap_prob(self) -> Tensor:
        """min(1, α) of exchanging each neighbouring pair [K−1, B] (0 where α is NaN)."""
        return acceptance_probability(self.swap_log_ratio)

    @property
    def replica_accept_prob(self) -> Tensor:
        """The base move's min(1, α) per temperature and chain [K, B]."""
        return self.base.accept_prob.view(self.temperatures.shape[0], -1)


class TemperingFullInfo(TemperingInfo):
    """For a base whose Info is a full ``Info``: energy [B] (E at the T = 1 chains' new
    state), is_divergent [B] (the base move at T = 1), grad_evals [B] int64: the gradients
    spent on each chain, i.e. summed over its K replicas."""

    __slots__ = ()

    @property
    def energy(self) -> Tensor:
        return self.cold_energy

    @property
    def is_divergent(self) -> Tensor:
        return self.base.is_divergent[: self.cold_energy.shape[0]]

    @property
    def grad_evals(self) -> Tensor:
        return self.base.grad_evals.view(self.temperatures.shape[0], -1).sum(0)


class TemperingDivergenceInfo(TemperingFullInfo):
    """For a base that declares HasDivergences (HMC): energy_error ΔH [B] at T = 1 too."""

    __slots__ = ()

    @property
    def energy_error(self) -> Tensor:
        return self.base.energy_error[: self.cold_energy.shape[0]]


def _info_class(base_info: Any) -> type[TemperingInfo]:
    """The Info class that declares what the base's Info declares (decided once per class)."""
    if declares(base_info, HasDivergences) and declares(base_info, Info):
        return TemperingDivergenceInfo
    if declares(base_info, Info):
        return TemperingFullInfo
    return TemperingInfo


# ---- the tempered energy of the replicas ------------------------------------------------------


class ReplicaEnergy(nn.Module):
    """Ẽ(y) = β_k E(s_k y) [K·B] for y [K·B, *event], replica-major: one call of E on all
    replicas. betas, scales: [K] on y's dtype and device."""

    def __init__(self, energy_fn: nn.Module, betas: Tensor, scales: Tensor) -> None:
        super().__init__()
        self.energy_fn = energy_fn
        self.betas, self.scales = betas, scales

    def forward(self, y: Tensor) -> Tensor:
        k = self.betas.shape[0]
        rows = y.view(k, -1, *y.shape[1:])  # [K, B, *event]
        x = (rows * self.scales.view(k, *([1] * (rows.dim() - 1)))).view_as(y)  # s_k y
        energy = self.energy_fn(x).view(k, -1)  # E(x) [K, B]
        return (energy * self.betas.to(energy.dtype)[:, None]).view(-1)  # β_k E [K·B]


def _rows(v: Tensor, b: int, like: Tensor) -> Tensor:
    """Per-temperature values v [K] repeated per chain, shaped [K·B, 1, …] against like."""
    return chain_view(v.repeat_interleave(b), like)


def _pair_view(v: Tensor, like: Tensor) -> Tensor:
    """Values v [K, B] as [K, B, 1, …], broadcastable against like [K, B, *event]."""
    return v.view(*v.shape, *([1] * (like.dim() - 2)))


def _rescale(rep: Any, b: int, old: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor]) -> Any:
    """The replicas' base state re-expressed for a new ladder, no energy evaluated:
    y' = y·s/s', Ẽ' = Ẽ·β'/β, ∇_y'Ẽ' = ∇_yẼ·(s'β')/(sβ) (the positions x = s·y are kept;
    auxiliary fields such as velocities are kept: they are independent of y under the target).
    old/new: (temperatures [K], scales [K])."""
    (t_old, s_old), (t_new, s_new) = old, new
    y = rep.x
    out = {"x": y * _rows(s_old / s_new, b, y)}
    if rep.energy is not None:
        out["energy"] = rep.energy * (t_old / t_new).repeat_interleave(b).to(rep.energy.dtype)
    if rep.grad is not None:
        factor = (s_new * t_old) / (s_old * t_new)  # (s'β')/(sβ)
        out["grad"] = rep.grad * _rows(factor, b, rep.grad)
    return rep._replace(**out)


# ---- the sampler -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class ParallelTempering:
    """Replica exchange over K = ``n_temperatures`` temperatures around ``base`` (any sampler).

    max_temperature > 1: the hottest temperature of the initial geometric ladder
    T_k = max_temperature^(k/(K−1)). target_swap ∈ (0, 1): the swap rate between neighbours
    warm-up adapts the ladder towards (0.234: Atchadé, Roberts & Rosenthal 2011), moving the
    hottest temperature too; adapt_ladder false keeps the ladder and adapts the step scales
    only. temperatures: an explicit ladder [K] (1 first, increasing) instead of the geometric
    one (max_temperature is then unused); step_scales: s_k [K] > 0 multiplying the base's
    step per temperature (default √T_k). Warm-up sets both (tensors). The base must sample
    exp(−E) itself (temperature 1). Not StepSizeAdaptable (it adapts itself: SelfAdapting);
    Replicated. The base's own warm-up (e.g. HMC's mass matrix) does not run: each replica's
    step is tuned through s_k only.
    """

    base: Sampler
    n_temperatures: int = 8
    max_temperature: float = 100.0
    target_swap: float = 0.234
    adapt_ladder: bool = True
    temperatures: Sequence[float] | Tensor | None = None
    step_scales: Sequence[float] | Tensor | None = None

    def __post_init__(self) -> None:
        k = self.n_temperatures
        if isinstance(k, bool) or not isinstance(k, int) or k < 2:
            raise ValueError(f"sampler.n_temperatures must be an integer >= 2, got {k!r}")
        check_positive("max_temperature", self.max_temperature)
        if not isinstance(self.max_temperature, Tensor) and self.max_temperature <= 1:
            raise ValueError(
                f"sampler.max_temperature must be a number > 1, got {self.max_temperature!r}")
        check_unit_interval("target_swap", self.target_swap)
        if not isinstance(self.adapt_ladder, bool):
            raise ValueError(f"sampler.adapt_ladder must be true or false, got "
                             f"{self.adapt_ladder!r}")
        if isinstance(self.base, Tempered) and not isinstance(self.base.temperature, Tensor) \
                and self.base.temperature != 1:
            raise ValueError(
                "sampler.base must sample exp(-E) itself (temperature 1), got a base at "
                f"temperature {self.base.temperature:g}: the ladder sets the temperatures")
        for key in ("temperatures", "step_scales"):
            value = getattr(self, key)
            if value is None:
                continue
            v = as_vector(key, value)
            if v.ndim != 1 or v.numel() != k:
                raise ValueError(f"sampler.{key} must be a list of n_temperatures = {k} "
                                 f"numbers, got {value!r}")
            if not isinstance(value, Tensor):  # a config list: plain CPU values, checked here
                values = v.tolist()
                if key == "temperatures" and (values[0] != 1 or any(
                        b <= a for a, b in zip(values, values[1:]))):
                    raise ValueError(f"sampler.temperatures must start at 1 and increase, "
                                     f"got {value!r}")
                if key == "step_scales" and min(values) <= 0:
                    raise ValueError(f"sampler.step_scales must be > 0, got {value!r}")
            object.__setattr__(self, key, v)
        object.__setattr__(self, "_ladder_on", {})  # (dtype, device) -> (T [K], s [K])

    # ---- the ladder ---------------------------------------------------------------------
    def ladder(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(temperatures [K], step scales [K]) on like's dtype and device (converted once)."""
        key = (like.dtype, like.device)
        cached = self._ladder_on.get(key)
        if cached is None:
            temps = self.temperatures
            if temps is None:
                exponents = torch.arange(self.n_temperatures, dtype=torch.float64)
                temps = float(self.max_temperature) ** (exponents / (self.n_temperatures - 1))
            temps = temps.to(dtype=like.dtype, device=like.device)
            scales = temps.sqrt() if self.step_scales is None else self.step_scales
            cached = (temps, scales.to(dtype=like.dtype, device=like.device))
            self._ladder_on[key] = cached
        return cached

    # ---- Sampler ------------------------------------------------------------------------
    def init(self, energy_fn: nn.Module, x: Tensor) -> TemperingState:
        """Every replica of chain b starts at x_b: x [B, *event]."""
        return self.init_replicas(energy_fn, x.unsqueeze(0).expand(self.n_temperatures, *x.shape))

    def init_replicas(self, energy_fn: nn.Module, replicas: Tensor, parity: int = 0
                      ) -> TemperingState:
        """Chains at positions replicas [K, B, *event] (row k at temperature T_k); the next
        exchange attempts the pairs k ≡ parity (mod 2)."""
        k, b = replicas.shape[:2]
        if k != self.n_temperatures:
            raise ValueError(f"sampler.n_temperatures is {self.n_temperatures}, but the "
                             f"replicas given are {k}")
        temps, scales = self.ladder(replicas)
        y = (replicas / chain_view(scales, replicas)).reshape(k * b, *replicas.shape[2:])
        rep = self.base.init(ReplicaEnergy(energy_fn, temps.reciprocal(), scales), y)
        return _cold(rep, b, temps, scales, parity)

    def replicas(self, state: TemperingState) -> Tensor:
        """Every replica's position x = s_k y [K, B, *event] (row 0 = state.x)."""
        b = state.x.shape[0]
        y = state.replicas.x.view(-1, b, *state.x.shape[1:])
        return y * chain_view(state.scales, y)

    def restate(self, energy_fn: nn.Module, state: Any, x: Tensor) -> TemperingState:
        """state with its T = 1 chains moved to x [B, *event], the hotter replicas kept; every
        cached energy re-evaluated, the exchange schedule continued (a plain state from another
        sampler: ``init``)."""
        if not isinstance(state, TemperingState) or state.x.shape != x.shape:
            return self.init(energy_fn, x)
        reps = self.replicas(state)
        return self.init_replicas(energy_fn, torch.cat([x.unsqueeze(0), reps[1:]]), state.parity)

    def step(self, energy_fn: nn.Module, state: Any, generator: torch.Generator
             ) -> tuple[TemperingState, TemperingInfo]:
        """One base move of every replica, then one even/odd exchange (module docstring)."""
        return self._transition(energy_fn, state, generator, self.ladder(state.x))

    def _transition(self, energy_fn: nn.Module, state: Any, generator: torch.Generator,
                    ladder: tuple[Tensor, Tensor]) -> tuple[TemperingState, TemperingInfo]:
        """``step`` with the ladder (temperatures [K], scales [K]) given (warm-up's iterates)."""
        temps, scales = ladder
        if not isinstance(state, TemperingState) or state.temperatures.shape != temps.shape:
            state = self.init(energy_fn, state.x)  # a plain state, e.g. from another sampler
        b = state.x.shape[0]
        rep = state.replicas
        if state.temperatures is not temps or state.scales is not scales:  # a new ladder
            rep = _rescale(rep, b, (state.temperatures, state.scales), ladder)
        k = temps.shape[0]
        betas = temps.reciprocal()
        tempered = ReplicaEnergy(energy_fn, betas, scales)
        rep, base_info = self.base.step(tempered, rep, generator)  # all K·B replicas
        tempered_energy = rep.energy
        if tempered_energy is None:  # a lazy base (ULA): one forward for the exchange
            tempered_energy = energy_only(tempered, rep.x)
        energy = tempered_energy.view(k, b) / betas.to(tempered_energy.dtype)[:, None]  # E [K, B]
        # exchange (k, k+1): log α = (β_k − β_{k+1}) (E_k − E_{k+1})  [K−1, B]
        log_ratio = (betas[:-1] - betas[1:]).to(energy.dtype)[:, None] * (energy[:-1] - energy[1:])
        attempted = torch.arange(k - 1, device=temps.device).remainder(2) == state.parity
        u = torch.rand(log_ratio.shape, generator=generator, dtype=log_ratio.dtype,
                       device=log_ratio.device)
        swapped = torch.lt(u, log_ratio.exp()) & attempted[:, None]  # NaN α: rejected
        # src[k, b]: the rung whose position rung k takes (pairs are disjoint)
        step = swapped.to(torch.int64)  # [K−1, B]: rung k takes k+1's position and vice versa
        moves = torch.zeros((k, b), dtype=torch.int64, device=swapped.device)
        moves[:-1] += step
        moves[1:] -= step
        src = torch.arange(k, device=swapped.device)[:, None] + moves  # [K, B]
        chain = torch.arange(b, device=swapped.device)[None, :]
        s_src = scales[src]  # [K, B]
        y = rep.x.view(k, b, *rep.x.shape[1:])
        y_new = y[src, chain] * _pair_view(s_src / scales[:, None], y)  # s_src y_src / s_k
        energy_new = energy[src, chain]  # E [K, B]
        fields = {"x": y_new.view_as(rep.x),
                  "energy": (energy_new * betas.to(energy.dtype)[:, None]).view(-1)}
        if rep.grad is not None:
            g = rep.grad.view_as(y)
            factor = (scales[:, None] * betas[:, None]) / (s_src * betas[src])  # (sβ)_k/(sβ)_src
            fields["grad"] = (g[src, chain] * _pair_view(factor, g)).view_as(rep.grad)
        rep = rep._replace(**fields)
        new_state = _cold(rep, b, temps, scales, 1 - state.parity, energy_new[0])
        info = _info_class(base_info)(base_info, log_ratio, attempted, swapped, energy_new[0],
                                      temps)
        return new_state, info

    # ---- SelfAdapting -------------------------------------------------------------------
    def warmup(self, energy_fn: nn.Module, state: Any, generator: torch.Generator,
               n_steps: int) -> tuple[ParallelTempering, TemperingState]:
        """``n_steps`` transitions adapting the ladder (towards ``target_swap``, first 3/4)
        and the per-temperature step scales (towards the base's ``target_accept``); returns
        (the fixed, adapted sampler, last state). Pure tensor ops: no host synchronisation."""
        if not isinstance(state, TemperingState):
            state = self.init(energy_fn, state.x)
        if n_steps == 0:
            return self, state
        temps0, scales0 = self.ladder(state.x)
        f64 = dict(dtype=torch.float64, device=temps0.device)
        log_t = temps0.to(**f64).log()
        rho = (log_t[1:] - log_t[:-1]).log()  # ρ_k = log(log T_{k+1} − log T_k)  [K−1]
        ratio = (scales0.to(**f64) / temps0.to(**f64).sqrt())  # r_k = s_k / √T_k  [K]
        adapt_steps = isinstance(self.base, StepSizeAdaptable)
        dual = DualAveraging(self.base.target_accept) if adapt_steps else None
        duals = [dual.init(ratio[i]) for i in range(self.n_temperatures)] if dual else []
        ladder_end = int(LADDER_SHARE * n_steps) if self.adapt_ladder else 0

        def current(rho: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
            temps = torch.cat([rho.new_zeros(1), rho.exp().cumsum(0)]).exp()  # [K], T_0 = 1
            return temps.to(state.x.dtype), (temps.sqrt() * r).to(state.x.dtype)

        for t in range(n_steps):
            r = torch.stack([dual.current(d) for d in duals]) if dual else ratio
            state, info = self._transition(energy_fn, state, generator, current(rho, r))
            if t < ladder_end:  # Robbins–Monro on the log gaps: wider where swaps are easy
                rates = info.swap_prob.mean(1).to(torch.float64)  # [K−1]
                rho = rho + (t + 1) ** -LADDER_GAIN_DECAY * (rates - self.target_swap)
                rho = rho.clamp(max=MAX_LOG_GAP)
            if dual:
                accept = info.replica_accept_prob  # [K, B]
                duals = [dual.update(d, accept[i]) for i, d in enumerate(duals)]
                if t + 1 == ladder_end:  # the ladder is frozen: restart from the averages
                    duals = [dual.init(dual.final(d), shrink_factor=1.0) for d in duals]
        r = torch.stack([dual.final(d) for d in duals]) if dual else ratio
        temps, scales = current(rho, r)
        return replace(self, temperatures=temps, step_scales=scales), state


def _cold(rep: Any, b: int, temps: Tensor, scales: Tensor, parity: int,
          energy: Tensor | None = None) -> TemperingState:
    """The TemperingState whose visible chains are replica 0 of ``rep`` (T_0 = 1, so E = Ẽ):
    x = s_0 y, ∇ₓE = ∇_yẼ / s_0."""
    s0 = scales[0]
    x = rep.x[:b] * s0
    if energy is None and rep.energy is not None:
        energy = rep.energy[:b]
    grad = None if rep.grad is None else rep.grad[:b] / s0
    return TemperingState(x, energy, grad, rep, temps, scales, parity)
