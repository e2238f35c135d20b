"""Draw model samples with a configured sampler, for evaluation and samples.npy, and keep a
thinned trace of some of those chains for their convergence diagnostics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ebm_cli.evaluation.convergence import convergence_metrics
from ebm_cli.samplers.adaptation import warmup as run_warmup
from ebm_cli.samplers.base import ChainState, HasDivergences, Sampler, declares
from ebm_cli.samplers.tempering import HasSwaps, Replicated
from ebm_cli.trainers.buffer import DataNoise, reinitialise, restart_chains


@dataclass
class ChainTrace:
    """What ``draw_samples`` keeps of its fixed steps for diagnostics: the first ``chains``
    chains, at most ``max_dims`` coordinates of the flattened event (evenly spaced, all when
    D ≤ max_dims), every ``thin``-th step so that at most ``max_draws`` draws are kept; the
    divergent transitions of all chains where the sampler's Info declares HasDivergences, and
    the swap rate of each neighbouring pair of temperatures where it declares HasSwaps.

    The cost is bounded by chains × max_draws × max_dims numbers, whatever the run's size.
    """

    chains: int = 256
    max_draws: int = 200
    max_dims: int = 32
    draws: list[Tensor] = field(default_factory=list)  # each [chains, dims]
    divergences: Tensor | None = None  # 0-d int64 total, None: the sampler reports none
    swap_sum: Tensor | None = None  # tempering: Σ over fixed steps of the pairs' swap rates [K−1]
    steps: int = 0  # fixed steps seen

    def thin(self, steps: int) -> int:
        """Keep every thin-th of ``steps`` fixed steps: ⌈steps / max_draws⌉."""
        return max(1, math.ceil(steps / self.max_draws))

    def record(self, x: Tensor) -> None:
        """Keep x [B, *event] of the first ``chains`` chains (a device copy, no host sync)."""
        flat = x[: self.chains].detach().flatten(1)
        d = flat.shape[1]
        if d > self.max_dims:
            idx = torch.linspace(0, d - 1, self.max_dims, device=flat.device).round().long()
            flat = flat[:, idx]
        self.draws.append(flat.clone())

    def metrics(self, prefix: str = "eval_") -> dict[str, float]:
        """``convergence_metrics`` of the kept draws [T, chains, dims] (evaluation/
        convergence.py) and the divergences, each key under ``prefix``; {} with < 2 chains."""
        if not self.draws or self.draws[0].shape[0] < 2:
            return {}
        out = convergence_metrics(torch.stack(self.draws))
        if self.divergences is not None:
            out["divergences"] = float(self.divergences)
        if self.swap_sum is not None:  # the same keys as a sampling run's (trainers/sampling.py)
            rates = (self.swap_sum / self.steps).tolist()
            out.update({f"swap_rate_{k}_{k + 1}": r for k, r in enumerate(rates)})
            out["swap_rate_min"] = min(rates)
        return {prefix + k: v for k, v in out.items()}

    def observe(self, info: object) -> None:
        """Count one fixed step's divergences and swap rates (device tensors, no host sync)."""
        self.steps += 1
        if declares(info, HasDivergences):
            n = info.is_divergent.sum()
            self.divergences = n if self.divergences is None else self.divergences + n
        if declares(info, HasSwaps):
            rates = info.swap_prob.double().mean(1)  # [K−1]
            self.swap_sum = rates if self.swap_sum is None else self.swap_sum + rates


def initial_points(
    n: int, bounds: tuple[tuple[float, float], ...] | None, data: Tensor,
    generator: torch.Generator,
) -> Tensor:
    """Chain starts [n, *event]: uniform over the 2-D box when given, else a Gaussian fitted
    (per coordinate) to the data."""
    if bounds is not None and data[0].numel() == 2:
        lo = torch.tensor([b[0] for b in bounds], dtype=data.dtype)
        hi = torch.tensor([b[1] for b in bounds], dtype=data.dtype)
        u = torch.rand(n, 2, generator=generator, dtype=data.dtype)
        return (lo + (hi - lo) * u).reshape(n, *data.shape[1:]).to(data.device)
    flat = data.flatten(1)
    mean, std = flat.mean(0), flat.std(0)
    z = torch.randn(n, flat.shape[1], generator=generator, dtype=data.dtype).to(data.device)
    return (mean + std * z).reshape(n, *data.shape[1:])


def draw_samples(
    energy_fn: nn.Module, sampler: Sampler, x0: Tensor, warmup: int, steps: int,
    generator: torch.Generator, restarts: DataNoise | None = None,
    trace: ChainTrace | None = None,
) -> tuple[Tensor, Tensor]:
    """Run chains from x0 [B, *event]: ``warmup`` adaptation steps, then ``steps`` fixed steps.

    ``restarts`` (a noise q, e.g. a Gaussian fitted to the data), when given: before each fixed
    step every chain proposes a restart y ~ q as an independence-MH move, which leaves exp(−E)
    invariant (trainers.buffer.reinitialise); then the sampler's state is rebuilt at the new
    points. A plain ChainState is rebuilt by ``restart_chains`` (E is fixed here, so its
    cached energies stay valid and only the proposals are evaluated), a Replicated sampler's
    (tempering) by ``restate`` (its hotter chains kept), any other state by ``init``.
    ``trace``, when given, keeps a thinned part of the fixed steps for diagnostics (ChainTrace).
    Returns (final states [B, *event], mean acceptance over the fixed steps, 0-d tensor).
    """
    state = sampler.init(energy_fn, x0)
    if warmup > 0:
        sampler, state = run_warmup(sampler, energy_fn, state, generator, warmup)
    accept = torch.zeros((), dtype=x0.dtype, device=x0.device)
    thin = trace.thin(steps) if trace is not None else 0
    for i in range(steps):
        if restarts is not None:
            state = _restarted(sampler, energy_fn, state, restarts, generator)
        state, info = sampler.step(energy_fn, state, generator)
        accept = accept + info.accept_prob.mean()
        if trace is not None:
            if (steps - 1 - i) % thin == 0:  # the last step is always kept
                trace.record(state.x)
            trace.observe(info)
    return state.x, accept / max(steps, 1)


def _restarted(sampler: Sampler, energy_fn: nn.Module, state: object, noise: DataNoise,
               generator: torch.Generator) -> object:
    """The sampler's state after every chain proposed a restart from ``noise`` (draw_samples)."""
    if type(state) is ChainState and not isinstance(sampler, Replicated):
        return restart_chains(state, noise, 1.0, generator, energy_fn, sampler.init)
    x = reinitialise(state.x, noise, 1.0, generator, energy_fn)[0]
    if isinstance(sampler, Replicated):  # tempering keeps its hotter chains
        return sampler.restate(energy_fn, state, x)
    return sampler.init(energy_fn, x)
