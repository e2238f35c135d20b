"""``trainer=none``: run a sampler on a fixed energy, with no learning and no data.

The chains live in the energy's own space: their shape is the energy's ``event_shape`` (passed
by the run as a runtime argument), and their draws are the energy's, in its own units. Each
``step`` is one transition of every chain. The first step runs the sampler's warm-up
(step-size and, for HMC, mass adaptation) on the chains; after it the sampler is fixed, so the
recorded draws come from one valid Markov chain per chain.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from ebm_cli.energies.base import truth_of
from ebm_cli.evaluation.convergence import convergence_metrics
from ebm_cli.evaluation.diagnostics import mean_cov_error
from ebm_cli.samplers.adaptation import warmup as run_warmup
from ebm_cli.samplers.base import ChainState, HasDivergences, Info, Sampler, declares, evaluated
from ebm_cli.samplers.stats import sampler_stats
from ebm_cli.samplers.tempering import HasSwaps
from ebm_cli.trainers.buffer import is_package_state, state_from_dict, state_to_dict


class SamplingOnly:
    """Chains [n_chains, *event] started from N(init_loc, init_scale²I), no parameter updates."""

    def __init__(
        self,
        energy_fn: nn.Module,
        sampler: Sampler,
        event_shape: tuple[int, ...],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        n_chains: int = 1024,
        init_loc: float | list[float] = 0.0,
        init_scale: float = 1.0,
        warmup_steps: int = 200,
        trace_chains: int = 256,
    ) -> None:
        if n_chains < 2:
            raise ValueError(f"trainer.n_chains must be >= 2 (R-hat needs chains), got {n_chains}")
        if init_scale <= 0:
            raise ValueError(f"trainer.init_scale must be > 0, got {init_scale}")
        if warmup_steps < 0 or trace_chains < 2:
            raise ValueError("trainer.warmup_steps must be >= 0 and trainer.trace_chains >= 2")
        self.energy_fn = energy_fn
        self.sampler = sampler
        self.configured = sampler  # as configured; ``sampler`` becomes the adapted one
        self.event_shape = tuple(event_shape)
        self.dtype, self.device = dtype, torch.device(device)
        self.n_chains = n_chains
        self.init_loc = torch.as_tensor(init_loc, dtype=self.dtype).to(self.device)
        self.init_scale = init_scale
        self.warmup_steps = warmup_steps
        self.trace_chains = min(trace_chains, n_chains)
        self.state: ChainState | None = None
        self.trace: list[Tensor] = []
        self.start: Tensor | None = None
        self.accept_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.grad_evals = torch.zeros((), dtype=torch.float64, device=self.device)
        # divergent transitions (HMC), summed over chains and recorded steps
        self.divergences = torch.zeros((), dtype=torch.int64, device=self.device)
        self.has_divergences = False  # set once the sampler's Info declares HasDivergences
        self.swap_sum: Tensor | None = None  # Σ over recorded steps of the swap rates [K−1]
        self.temperatures: Tensor | None = None  # the ladder [K] of the recorded steps
        self.seconds = 0.0  # wall time of the recorded transitions (set by the run loop)

    def initial_points(self, generator: torch.Generator) -> Tensor:
        """Chain starts x₀ ~ N(init_loc, init_scale² I): [n_chains, *event]."""
        z = torch.randn(self.n_chains, *self.event_shape, generator=generator, dtype=self.dtype,
                        device=self.device)
        return self.init_loc + self.init_scale * z

    def _init(self, generator: torch.Generator, start: Tensor | None = None) -> None:
        self.start = self.initial_points(generator) if start is None else start  # [B, *event]
        state = self.sampler.init(self.energy_fn, self.start)
        if self.warmup_steps > 0:
            self.sampler, state = run_warmup(
                self.sampler, self.energy_fn, state, generator, self.warmup_steps
            )
        self.state = state

    def step(self, generator: torch.Generator) -> dict[str, Tensor]:
        """One transition of every chain (nothing is learned, no data is read).

        Statistics: ``sampler_stats`` (acceptance; divergences and mean |ΔH| where the Info
        declares HasDivergences) and ``energy/samples``. Gradients are counted where the Info
        declares the full ``Info`` (grad_evals), divergences where it declares HasDivergences.
        """
        if self.state is None:
            self._init(generator)
        assert self.state is not None
        self.state, info = self.sampler.step(self.energy_fn, self.state, generator)
        self.trace.append(self.state.x[: self.trace_chains].detach().clone())
        self.accept_sum += info.accept_prob.double().mean()
        full = declares(info, Info)
        if full:  # gradient evaluations per chain this transition
            self.grad_evals += info.grad_evals.double().mean()
        if declares(info, HasDivergences):  # HMC: a running total for ``diagnostics``
            self.divergences += info.is_divergent.sum()
            self.has_divergences = True
        if declares(info, HasSwaps):  # parallel tempering: swap rate per neighbouring pair
            rates = info.swap_prob.double().mean(1)  # [K−1]
            self.swap_sum = rates if self.swap_sum is None else self.swap_sum + rates
            self.temperatures = info.temperatures
        # Lazy ULA leaves the new state's energy unevaluated; its info holds the energy of the
        # state it started from (one step behind) at no extra cost. A user's lazy sampler
        # whose Info has no energy costs one forward pass here.
        energy = self.state.energy
        if energy is None:
            energy = info.energy if full else evaluated(self.energy_fn, self.state).energy
        return {**sampler_stats(info), "energy/samples": energy.mean()}

    def negatives(self) -> Tensor | None:
        return None if self.state is None else self.state.x

    def diagnostics(self) -> dict[str, float]:
        """The convergence verdict and its diagnostics (evaluation/convergence.py: rhat_max,
        nested_rhat_max, ess_bulk_min, ess_tail_min, ess_mean_min, superchains, converged),
        acceptance, gradients, divergences, ESS per second / per gradient and, where the
        energy knows its truth, mean/covariance errors."""
        if not self.trace:
            return {}
        # Diagnostics use the last half of the recorded draws: the first half may still be on
        # its way from the base distribution (e.g. with warmup_steps=0).
        n = len(self.trace)
        trace = torch.stack(self.trace[n // 2 :]).flatten(2)  # [T/2, chains, D]
        result = convergence_metrics(trace)
        result["acceptance_rate"] = float(self.accept_sum) / n
        result["grad_evals"] = float(self.grad_evals)  # per chain, after warm-up
        if self.has_divergences:  # HMC: divergent transitions of all chains, after warm-up
            result["divergences"] = int(self.divergences)
        # ESS of the diagnosed draws per unit of the work that produced them: the last half of
        # the steps, on the trace_chains chains that were kept (of n_chains that ran).
        used = (n - n // 2) / n
        ess = result.get("ess_bulk_min")  # absent when too few draws to judge
        if ess is not None and self.seconds > 0:
            seconds = self.seconds * used * self.trace_chains / self.n_chains
            result["ess_per_second"] = ess / seconds
        if ess is not None and result["grad_evals"] > 0:
            result["ess_per_grad_eval"] = ess / (
                result["grad_evals"] * used * self.trace_chains)
        truth = truth_of(self.energy_fn)
        mean, cov = truth.mean, truth.cov
        if mean is not None and cov is not None:
            err = mean_cov_error(trace.flatten(0, 1), mean, cov)  # all recorded draws
            result.update({k: float(v) for k, v in err.items()})
        result.update(self.swap_metrics())  # parallel tempering's swap rates, else nothing
        return result

    def swap_metrics(self) -> dict[str, float]:
        """Parallel tempering: the mean swap rate of each neighbouring pair (k, k+1) over the
        recorded steps (``swap_rate_k_k+1``), their minimum and the hottest temperature; {} for
        other samplers."""
        if self.swap_sum is None or not self.trace:
            return {}
        rates = (self.swap_sum / len(self.trace)).tolist()
        out = {f"swap_rate_{k}_{k + 1}": r for k, r in enumerate(rates)}
        out["swap_rate_min"] = min(rates)
        if self.temperatures is not None:
            out["temperature_max"] = float(self.temperatures[-1])
        return out

    def trace_array(self) -> Tensor:
        """The recorded draws [T, trace_chains, *event]."""
        return torch.stack(self.trace)

    def chain_sets(self) -> dict[str, tuple[Tensor, Tensor]]:
        """{sampler name: (starts [B, *event], trace [T, trace_chains, *event])} for figures."""
        assert self.start is not None
        return {type(self.sampler).__name__: (self.start, self.trace_array())}

    def state_dict(self) -> dict[str, Any]:
        """The chains x [B, *event]; for the package's samplers their whole state (velocities,
        tempering's replicas) and what warm-up adapted (the sampler's fields of plain types
        that differ from the configured ones: step size, mass, ladder), so a resumed run
        continues with the adapted sampler."""
        out: dict[str, Any] = {"x": None if self.state is None else self.state.x}
        if self.state is not None and is_package_state(self.state):
            out["sampler_state"] = state_to_dict(self.state)
        if dataclasses.is_dataclass(self.sampler) and self.configured is not self.sampler:
            adapted = {
                f.name: getattr(self.sampler, f.name) for f in dataclasses.fields(self.sampler)}
            out["sampler_fields"] = {
                k: v for k, v in adapted.items()
                if isinstance(v, (Tensor, int, float, bool, tuple))
                and v is not getattr(self.configured, k)}
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("sampler_fields"):  # the adapted sampler (warm-up does not run again)
            self.sampler = dataclasses.replace(self.sampler, **state["sampler_fields"])
        if state.get("sampler_state") is not None:
            self.state = state_from_dict(state["sampler_state"])
        elif state.get("x") is not None:
            self.state = self.sampler.init(self.energy_fn, state["x"])


class SamplerComparison:
    """Several samplers side by side on one energy, from the same starting points.

    ``sampler`` (the sampler group) runs next to each entry of ``samplers`` (name -> sampler,
    instantiated from the trainer config). Statistics and diagnostics carry the sampler's name.
    """

    def __init__(self, energy_fn: nn.Module, sampler: Sampler, event_shape: tuple[int, ...],
                 samplers: dict[str, Any], **kwargs: Any) -> None:
        if not samplers:
            raise ValueError("trainer.samplers must name at least one sampler to compare with")
        main = type(sampler).__name__
        self.runs = {main: SamplingOnly(energy_fn, sampler, event_shape, **kwargs)}
        for name, other in samplers.items():
            self.runs[name] = SamplingOnly(energy_fn, other, event_shape, **kwargs)
        self.energy_fn = energy_fn
        self.seconds = 0.0

    @property
    def start(self) -> Tensor | None:
        return next(iter(self.runs.values())).start

    def step(self, generator: torch.Generator) -> dict[str, Tensor]:
        if self.start is None:
            start = next(iter(self.runs.values())).initial_points(generator)
            for run in self.runs.values():
                run._init(generator, start)
        stats: dict[str, Tensor] = {}
        for name, run in self.runs.items():
            for key, value in run.step(generator).items():
                stats[key.replace("sampler/", f"{name}/")] = value
        first = next(iter(self.runs))
        stats["sampler/acceptance_rate"] = stats[f"{first}/acceptance_rate"]
        return stats

    def negatives(self) -> Tensor | None:
        return next(iter(self.runs.values())).negatives()

    def diagnostics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, run in self.runs.items():
            run.seconds = self.seconds / len(self.runs)  # the runs share the loop's time
            out.update({f"{name}/{k}": v for k, v in run.diagnostics().items()})
        return out

    def trace_array(self) -> Tensor:
        return next(iter(self.runs.values())).trace_array()

    def chain_sets(self) -> dict[str, tuple[Tensor, Tensor]]:
        return {k: v for run in self.runs.values() for k, v in run.chain_sets().items()}

    def state_dict(self) -> dict[str, Any]:
        return {name: run.state_dict() for name, run in self.runs.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, run in self.runs.items():
            run.load_state_dict(state[name])
