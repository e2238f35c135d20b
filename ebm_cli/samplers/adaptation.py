"""Warm-up adaptation: dual averaging of the step size and a diagonal mass matrix for HMC.

Adaptation happens during warm-up only. ``warmup`` returns a new, fixed sampler
(dataclasses.replace), so the chain run afterwards is a homogeneous Markov chain (seed eq. 13)
with the target as its stationary distribution.

``StepSizeAdaptation`` is the one step-size mechanism of the package: ``warmup`` here (Stan's
windows), MLE training's warm-up (trainers/mle.py, restarts at 1/2, 3/4, 7/8 of it) and AIS
between temperatures (evaluation/ais.py, no restarts, never frozen) all run it. What a sampler
must declare to be adapted is ``StepSizeAdaptable`` (and ``MassAdaptable``) in samplers/base.py.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypeVar

import torch
from torch import Tensor, nn

from ebm_cli.samplers.base import (
    ChainState,
    MassAdaptable,
    Sampler,
    SelfAdapting,
    StepSizeAdaptable,
    check_positive,
    check_unit_interval,
)

S = TypeVar("S", bound=StepSizeAdaptable)

# Stan's default warm-up windows (Stan Reference Manual, "HMC algorithm parameters"): a fast
# initial buffer (step size only), slow windows doubling from BASE_WINDOW that each end with a
# new mass estimate and a restart of dual averaging, and a fast terminal buffer (step size only).
INIT_BUFFER, BASE_WINDOW, TERM_BUFFER = 75, 25, 50


class DAState(NamedTuple):
    """Dual-averaging state, all 0-d float64 tensors (Hoffman & Gelman 2014, Algorithm 5)."""

    count: Tensor  # t, number of updates so far
    log_step_size: Tensor  # log ε_t, the iterate used for sampling
    log_step_size_avg: Tensor  # log ε̄_t, the weighted average kept after warm-up
    h_bar: Tensor  # H̄_t, running mean of (δ − α)
    mu: Tensor  # μ = log(shrink_factor · ε₀), the point the iterates shrink towards


@dataclass(frozen=True)
class DualAveraging:
    """Nesterov dual averaging on log ε towards mean acceptance ``target_accept`` (δ).

    H̄_t = (1 − 1/(t+t0)) H̄_{t−1} + (δ − α_t)/(t+t0);  log ε_t = μ − √t/γ · H̄_t;
    log ε̄_t = t^−κ log ε_t + (1 − t^−κ) log ε̄_{t−1}  (Hoffman & Gelman 2014, §3.2, Alg. 5).
    α_t is the chain mean of accept_prob [B]. Pure tensor ops: no host synchronisation.
    """

    target_accept: float
    gamma: float = 0.05
    t0: float = 10.0
    kappa: float = 0.75

    def __post_init__(self) -> None:
        check_unit_interval("target_accept", self.target_accept)
        check_positive("gamma", self.gamma)
        if isinstance(self.t0, bool) or not isinstance(self.t0, (int, float)) or self.t0 < 0:
            raise ValueError(f"sampler.t0 must be a number >= 0, got {self.t0!r}")
        if not (isinstance(self.kappa, (int, float)) and 0.5 < self.kappa <= 1):
            raise ValueError(f"sampler.kappa must be in (0.5, 1], got {self.kappa!r}")

    def init(
        self,
        step_size: float | Tensor,
        device: torch.device | None = None,
        shrink_factor: float = 10.0,
    ) -> DAState:
        """Start at ε₀ = step_size (a number or 0-d tensor) on ``device``.

        The iterates shrink towards μ = log(shrink_factor · ε₀). H&G's 10 favours larger steps
        from a cold start; a restart from an already adapted ε̄ uses 1, because the pull
        towards μ biases the mean acceptance by ≈ γ·(μ − log ε*)/√t, which averaging over
        many chains makes visible (0.8 − 0.007 after 300 steps with shrink 10, measured).
        """
        if isinstance(step_size, Tensor):
            device = step_size.device if device is None else device
        log_eps = torch.as_tensor(step_size, dtype=torch.float64, device=device).log()
        zero = torch.zeros((), dtype=torch.float64, device=device)
        return DAState(zero, log_eps, log_eps, zero, log_eps + math.log(shrink_factor))

    def update(self, state: DAState, accept_prob: Tensor) -> DAState:
        """One dual-averaging step with α = mean over chains of accept_prob [B]."""
        alpha = accept_prob.mean().to(state.h_bar)
        t = state.count + 1
        w = 1.0 / (t + self.t0)
        h_bar = (1 - w) * state.h_bar + w * (self.target_accept - alpha)
        log_eps = state.mu - t.sqrt() / self.gamma * h_bar
        weight = t.pow(-self.kappa)
        log_avg = weight * log_eps + (1 - weight) * state.log_step_size_avg
        return DAState(t, log_eps, log_avg, h_bar, state.mu)

    def current(self, state: DAState) -> Tensor:
        """ε_t (0-d), the step size to sample with during adaptation."""
        return state.log_step_size.exp()

    def final(self, state: DAState) -> Tensor:
        """ε̄_t (0-d), the averaged step size to keep after warm-up."""
        return state.log_step_size_avg.exp()


class AdaptationState(NamedTuple):
    """Where a step-size adaptation stands: ``count`` transitions so far (a Python int, so a
    restart is decided without reading the device) and the dual-averaging state."""

    count: int
    dual: DAState


@dataclass(frozen=True)
class StepSizeAdaptation:
    """Dual averaging (``DualAveraging``) of a StepSizeAdaptable sampler's step size, per
    transition, restarting from its average ε̄ after the transitions counted in ``restarts``.

    init(sampler) -> state; tuned(sampler, state): the sampler with ε_t for the next transition
    (``dataclasses.replace``, the sampler is never mutated); update(state, accept_prob [B])
    after each transition; final(sampler, state): the sampler with ε̄, fixed from then on.
    A restart sets ε₀ = ε̄ and μ = log(restart_shrink · ε̄) (see DualAveraging.init): 1 after a
    window of the same target (``warmup``); MLE keeps the cold-start 10 it has always used
    (trainers/mle.py RESTART_SHRINK). Pure tensor ops: no host synchronisation.
    """

    target_accept: float
    restarts: Collection[int] = ()
    restart_shrink: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "_dual", DualAveraging(self.target_accept))
        object.__setattr__(self, "restarts", frozenset(self.restarts))
        check_positive("restart_shrink", self.restart_shrink)

    def init(self, sampler: StepSizeAdaptable, device: torch.device | None = None,
             ) -> AdaptationState:
        """Start at ε₀ = the sampler's step size, on ``device`` (a tensor's own by default)."""
        return AdaptationState(0, self._dual.init(sampler.step_size, device=device))

    def step_size(self, state: AdaptationState) -> Tensor:
        """ε_t (0-d float64), the step size of the next transition."""
        return self._dual.current(state.dual)

    def tuned(self, sampler: S, state: AdaptationState) -> S:
        """The sampler for the next transition: step_size = ε_t (0-d float64 tensor)."""
        return replace(sampler, step_size=self._dual.current(state.dual))

    def update(self, state: AdaptationState, accept_prob: Tensor) -> AdaptationState:
        """After one transition with acceptance probabilities accept_prob [B]."""
        dual = self._dual.update(state.dual, accept_prob)
        count = state.count + 1
        if count in self.restarts:  # restart from ε̄, μ = log(restart_shrink · ε̄)
            dual = self._dual.init(self._dual.final(dual), shrink_factor=self.restart_shrink)
        return AdaptationState(count, dual)

    def final(self, sampler: S, state: AdaptationState) -> S:
        """The adapted sampler: step_size = ε̄ (0-d float64 tensor), to keep fixed."""
        return replace(sampler, step_size=self._dual.final(state.dual))


def adaptation_windows(n_steps: int) -> list[tuple[int, int]]:
    """Slow windows [start, end) of warm-up steps (mass estimate, DA restart), Stan's schedule.

    Buffers 75/25/50 when they fit, else 15 % / 75 % / 10 % of n_steps; each window doubles the
    last and the final one stretches to the terminal buffer. Fewer than 20 steps: no windows.
    """
    if n_steps < 20:
        return []
    init, base, term = INIT_BUFFER, BASE_WINDOW, TERM_BUFFER
    if init + base + term > n_steps:
        init, term = int(0.15 * n_steps), int(0.1 * n_steps)
        base = n_steps - init - term
    windows, start, size, end_slow = [], init, base, n_steps - term
    while start < end_slow:
        end = start + size
        if end + 2 * size > end_slow:  # the next window would not fit: stretch this one
            end = end_slow
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


class _Moments:
    """Per-coordinate mean/variance over chains and steps, shifted sums in float64."""

    def __init__(self, x: Tensor) -> None:
        flat = x.detach().flatten(1).double()  # [B, D]
        self.shift = flat.mean(0)  # keeps the sums small: no catastrophic cancellation
        self.s1 = torch.zeros_like(self.shift)
        self.s2 = torch.zeros_like(self.shift)
        self.n = 0  # draws so far, a Python int (no sync)

    def add(self, x: Tensor) -> None:
        d = x.detach().flatten(1).double() - self.shift  # [B, D]
        self.s1 += d.sum(0)
        self.s2 += d.square().sum(0)
        self.n += d.shape[0]

    def variance(self) -> Tensor:
        """Unbiased variance [D], shrunk towards 1e-3 like Stan (weight 5/(n+5))."""
        n = self.n
        mean = self.s1 / n
        var = (self.s2 / n - mean.square()) * (n / (n - 1))
        return (n / (n + 5.0)) * var + 1e-3 * (5.0 / (n + 5.0))


def warmup(
    sampler: Sampler,
    energy_fn: nn.Module,
    state: ChainState,
    generator: torch.Generator,
    n_steps: int,
) -> tuple[Any, ChainState]:
    """Run ``n_steps`` warm-up transitions and return (adapted sampler, last state).

    A StepSizeAdaptable sampler gets its ``step_size`` tuned by dual averaging (for
    RandomWalkMH the proposal scale) over Stan's windows (``adaptation_windows``): at the end
    of each slow window dual averaging restarts from its averaged ε̄ with μ = log ε̄ (see
    DualAveraging.init), and a sampler that is also MassAdaptable (HMC) first gets a new
    diagonal inverse mass = the variance of the window's draws across chains and time.
    Other samplers (Langevin, IndependenceMH, a user's without the declaration) are only run
    (burn-in). Host-sync free: the step size stays a 0-d tensor on the chains' device.
    """
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
        raise ValueError(f"sampler warm-up n_steps must be an integer >= 0, got {n_steps!r}")
    if isinstance(sampler, SelfAdapting):  # it adapts itself (samplers/base.py)
        return sampler.warmup(energy_fn, state, generator, n_steps)
    if not isinstance(sampler, StepSizeAdaptable):
        for _ in range(n_steps):
            state, _ = sampler.step(energy_fn, state, generator)
        return sampler, state
    if n_steps == 0:
        return sampler, state
    adapt_mass = isinstance(sampler, MassAdaptable)
    windows = adaptation_windows(n_steps)
    starts, ends = {a for a, _ in windows}, {b for _, b in windows}
    adaptation = StepSizeAdaptation(sampler.target_accept, restarts=ends, restart_shrink=1.0)
    adapt_state = adaptation.init(sampler, device=state.x.device)
    moments = None
    for t in range(n_steps):
        if adapt_mass and t in starts:
            moments = _Moments(state.x)
        state, info = adaptation.tuned(sampler, adapt_state).step(energy_fn, state, generator)
        adapt_state = adaptation.update(adapt_state, info.accept_prob)  # restarts after a window
        if moments is not None:
            moments.add(state.x)
            if t + 1 in ends:  # slow window done: new M⁻¹ = Var[x]  [D]
                sampler = replace(sampler, inv_mass=moments.variance().to(state.x.dtype))
                moments = None
    return adaptation.final(sampler, adapt_state), state
