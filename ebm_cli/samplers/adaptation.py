"""Warm-up adaptation: dual averaging of the step size, the mass matrix (HMC, MALA) and HMC's
trajectory length (ChEES).

Adaptation happens during warm-up only. ``warmup`` returns a new, fixed sampler
(dataclasses.replace), so the chain run afterwards is a homogeneous Markov chain (seed eq. 13)
with the target as its stationary distribution.

``StepSizeAdaptation`` is the one step-size mechanism of the package: ``warmup`` here (Stan's
windows), MLE training's warm-up (trainers/mle.py, restarts at 1/2, 3/4, 7/8 of it) and AIS
between temperatures (evaluation/ais.py, no restarts, never frozen) all run it. What a sampler
must declare to be adapted is ``StepSizeAdaptable`` (and ``MassAdaptable``,
``TrajectoryAdaptable``) in samplers/base.py.
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
    Trajectory,
    TrajectoryAdaptable,
    check_positive,
    check_unit_interval,
)
from ebm_cli.samplers.compiled import transient
from ebm_cli.samplers.mass import WithinChainMoments, marginal_std

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
        """The sampler for the next transition: step_size = ε_t (0-d float64 tensor); one
        transition's sampler, so compiled transitions run it eager (samplers/compiled.py)."""
        return transient(replace(sampler, step_size=self._dual.current(state.dual)))

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


def leapfrog_steps(trajectory_length: float, step_size: float, max_leapfrog: int) -> int:
    """L = ⌈T/ε⌉ in 1..max_leapfrog (a NaN or infinite ratio gives max_leapfrog)."""
    ratio = trajectory_length / step_size
    if not math.isfinite(ratio):
        return max_leapfrog
    return int(min(max(math.ceil(ratio - 1e-9), 1), max_leapfrog))


# u ~ U(½, 1] for a ChEES-tuned length: with it the jittered criterion has one clear maximum
# (on N(0, I) 0.92 at T = 2.01 against at most 0.60 beyond; from u = 0: 0.61 against 0.55)
CHEES_LENGTH_FLOOR = 0.5


class ChEESState(NamedTuple):
    """Where ChEES stands: the Adam iterate log T and its running average (0-d float64 tensors),
    Adam's second moment, and two Python-int counts (no sync)."""

    log_length: Tensor  # log T, the trajectory length sampled with during warm-up
    log_length_avg: Tensor  # log T̄, the weighted average kept after warm-up
    second_moment: Tensor  # Adam's v
    count: int  # Adam steps so far (bias correction)
    avg_count: int  # steps since the average last restarted


@dataclass(frozen=True)
class ChEES:
    """Trajectory length by maximising ChEES with Adam on log T (Hoffman, Radul & Sountsov 2021).

    ChEES = ¼ E[(‖x' − E x‖² − ‖x − E x‖²)²], the change in squared distance from the centre
    between a chain's state x and its proposal x' (before the accept/reject). Its gradient in
    log T, from chain b with trajectory length t_b (jittered: t_b = u_b·T, d t_b/d log T = t_b)
    and velocity v'_b = M⁻¹p' at the proposal:
        ĝ_b = t_b·(‖x'_b − x̄'‖² − ‖x_b − x̄‖²)·(x'_b − x̄')·v'_b,
    averaged with the acceptance probabilities α_b as weights (x̄' too), non-finite proposals
    dropped. x, x' and v' are measured in units of each coordinate's scale under the current
    mass, √diag(M⁻¹) (``scale``; warm-up's latest estimate): otherwise ‖x − x̄‖² is the widest
    coordinate's alone and T is tuned to it. On Rosenbrock (Var x₂ = 6 Var x₁) the unscaled
    criterion stopped at T = 1.4, the scaled one at 3.6, with 2.9× the ESS of x₁ per gradient
    (docs/samplers.md); on a Gaussian with an adapted mass the two agree. Adam without
    momentum (β₁ = 0, β₂ = ``beta2``, rate ``learning_rate``) ascends it; log T̄ = w log T +
    (1 − w) log T̄, w = n^−κ, is what warm-up keeps. Host-sync free.
    """

    learning_rate: float = 0.025
    beta2: float = 0.95
    kappa: float = 0.75

    def init(self, length: Tensor) -> ChEESState:
        """Start at T = length (0-d)."""
        log_t = length.double().log()
        return ChEESState(log_t, log_t, torch.zeros_like(log_t), 0, 0)

    def gradient(self, x: Tensor, trajectory: Trajectory, accept_prob: Tensor,
                 scale: Tensor | None = None) -> Tensor:
        """ĝ (0-d float64) from the states x [B, *event] a transition started from, with
        coordinates divided by ``scale`` [D] (None: as they are)."""
        x0 = x.detach().flatten(1).double()  # [B, D]
        xp = trajectory.x.detach().flatten(1).double()
        v = trajectory.velocity.detach().flatten(1).double()
        if scale is not None:  # dimensionless coordinates: x/s, and their velocity v/s
            s = scale.detach().double().to(x0.device)
            x0, xp, v = x0 / s, xp / s, v / s
        ok = torch.isfinite(xp).all(1) & torch.isfinite(v).all(1)  # [B]
        w = torch.where(ok, accept_prob.double(), 0.0)  # α_b, 0 for a non-finite proposal
        xp, v = xp.where(ok[:, None], 0.0), v.where(ok[:, None], 0.0)
        w_sum = w.sum().clamp_min(1e-300)
        c0 = x0 - x0.mean(0)
        cp = xp - (w[:, None] * xp).sum(0) / w_sum
        change = cp.square().sum(1) - c0.square().sum(1)  # [B]
        g = trajectory.length.double() * change * (cp * v).sum(1)  # [B]
        return ((w * g).sum() / w_sum).nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)

    def update(self, state: ChEESState, gradient: Tensor, low: Tensor, high: Tensor,
               ) -> ChEESState:
        """One Adam ascent step on log T, kept in [log low, log high] (0-d bounds on T)."""
        count, avg_count = state.count + 1, state.avg_count + 1
        v = self.beta2 * state.second_moment + (1 - self.beta2) * gradient.square()
        v_hat = v / (1 - self.beta2**count)
        log_t = state.log_length + self.learning_rate * gradient / (v_hat.sqrt() + 1e-30)
        log_t = torch.minimum(torch.maximum(log_t, low.double().log()), high.double().log())
        weight = avg_count**-self.kappa
        log_avg = weight * log_t + (1 - weight) * state.log_length_avg
        return ChEESState(log_t, log_avg, v, count, avg_count)

    def restart(self, state: ChEESState) -> ChEESState:
        """A new average from the current iterate (the mass matrix has just changed)."""
        return state._replace(log_length_avg=state.log_length, avg_count=0)


def _mass_estimate(sampler: MassAdaptable, moments: WithinChainMoments, x: Tensor) -> Any:
    return moments.estimate(sampler.mass, sampler.mass_rank, x.dtype)


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
    DualAveraging.init), and a sampler that is also MassAdaptable (HMC, MALA) first gets a new
    inverse mass of its ``mass`` kind from the window's within-chain covariance, averaged over
    chains (samplers/mass.py: diagonal, dense or low-rank). A TrajectoryAdaptable sampler with
    ``adapt_trajectory`` (HMC) has its trajectory length T tuned by ChEES on every transition
    up to the last slow window's end, where n_leapfrog = ⌈T̄/ε̄⌉ is fixed, so that the terminal
    buffer tunes ε for the kernel that runs afterwards. The batched step count (a Python int)
    is ⌈2T/ε⌉ ≤ max_leapfrog, read from the device once at each window's end. A jittered
    length with ``length_floor`` None gets CHEES_LENGTH_FLOOR for the warm-up and after it.
    Other samplers (Langevin, IndependenceMH, a user's without the declaration) are only run
    (burn-in). No other host synchronisation: the step size and T stay 0-d device tensors.
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
    adapt_mass = isinstance(sampler, MassAdaptable) and sampler.mass != "fixed"
    chees = ChEES() if isinstance(sampler, TrajectoryAdaptable) and sampler.adapt_trajectory \
        else None
    if chees is not None and sampler.length_floor is None:  # the floor ChEES's criterion needs
        sampler = replace(sampler, length_floor=CHEES_LENGTH_FLOOR)
    windows = adaptation_windows(n_steps)
    starts, ends = {a for a, _ in windows}, {b for _, b in windows}
    last_end = max(ends, default=-1)
    adaptation = StepSizeAdaptation(sampler.target_accept, restarts=ends, restart_shrink=1.0)
    adapt_state = adaptation.init(sampler, device=state.x.device)
    moments = None
    if chees is not None:
        cap = sampler.n_leapfrog  # batched steps until the first window's end
        eps0 = adaptation.step_size(adapt_state)
        chees_state = chees.init(eps0 * sampler.n_leapfrog)
        scale = marginal_std(sampler.inv_mass)  # ChEES's units, renewed with each mass
    for t in range(n_steps):
        if adapt_mass and t in starts:
            moments = WithinChainMoments(state.x, dense=sampler.mass != "diag")
        tuned = adaptation.tuned(sampler, adapt_state)
        if chees is None:
            state, info = tuned.step(energy_fn, state, generator)
        else:  # T in [ε, cap·ε]: every chain's ⌈u·T/ε⌉ fits the batched count
            eps = adaptation.step_size(adapt_state)
            tuned = replace(tuned, n_leapfrog=cap)
            x = state.x
            length = chees_state.log_length.exp()
            state, info, trajectory = tuned.transition(energy_fn, state, generator, length)
            grad = chees.gradient(x, trajectory, info.accept_prob, scale)
            chees_state = chees.update(chees_state, grad, eps, eps * cap)
        adapt_state = adaptation.update(adapt_state, info.accept_prob)  # restarts after a window
        if moments is not None:
            moments.add(state.x)
            if t + 1 in ends and moments.t >= 2:  # slow window done: a new M⁻¹
                sampler = replace(sampler, inv_mass=_mass_estimate(sampler, moments, state.x))
                scale = marginal_std(sampler.inv_mass)
                moments = None
        if chees is not None and t + 1 in ends:  # one read per window: the next batched count
            eps = float(adaptation.step_size(adapt_state))
            if t + 1 == last_end:  # fix L now from T̄ of the last window (read before any
                # restart: restarting first would set T̄ to the last iterate); the terminal
                # buffer tunes ε for the final kernel
                sampler = replace(sampler, n_leapfrog=leapfrog_steps(
                    float(chees_state.log_length_avg.exp()), eps, sampler.max_leapfrog))
                chees = None
            else:
                chees_state = chees.restart(chees_state)
                length = 2 * float(chees_state.log_length.exp())
                cap = max(leapfrog_steps(length, eps, sampler.max_leapfrog), 2)
    sampler = adaptation.final(sampler, adapt_state)
    if chees is not None:  # no windows (a short warm-up): L = ⌈T̄/ε̄⌉, the one read
        n_leapfrog = leapfrog_steps(float(chees_state.log_length_avg.exp()),
                                    float(sampler.step_size), sampler.max_leapfrog)
        sampler = replace(sampler, n_leapfrog=n_leapfrog)
    return sampler, state

