"""``trainer=none``: run a sampler on a fixed energy, with no learning.

Each ``step`` is one transition of every chain. The first step runs the sampler's warm-up
(step-size and, for HMC, mass adaptation) on the chains; after it the sampler is fixed, so the
recorded draws come from one valid Markov chain per chain.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ebm_cli.evaluation.diagnostics import chain_diagnostics, mean_cov_error
from ebm_cli.samplers.adaptation import warmup as run_warmup
from ebm_cli.samplers.base import ChainState, Sampler


class SamplingOnly:
    """Chains [n_chains, *event] started from N(init_loc, init_scale²I), no parameter updates."""

    def __init__(
        self,
        energy_fn: nn.Module,
        sampler: Sampler,
        train_data: Tensor,
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
        self.event_shape = tuple(train_data.shape[1:])
        self.dtype, self.device = train_data.dtype, train_data.device
        self.n_chains = n_chains
        self.init_loc = torch.as_tensor(init_loc, dtype=self.dtype).to(self.device)
        self.init_scale = init_scale
        self.warmup_steps = warmup_steps
        self.trace_chains = min(trace_chains, n_chains)
        self.state: ChainState | None = None
        self.trace: list[Tensor] = []
        self.start: Tensor | None = None

    def _init(self, generator: torch.Generator) -> None:
        z = torch.randn(self.n_chains, *self.event_shape, generator=generator, dtype=self.dtype)
        self.start = self.init_loc + self.init_scale * z.to(self.device)  # [B, *event]
        state = self.sampler.init(self.energy_fn, self.start)
        if self.warmup_steps > 0:
            self.sampler, state = run_warmup(
                self.sampler, self.energy_fn, state, generator, self.warmup_steps
            )
        self.state = state

    def step(self, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """One transition of every chain; ``batch`` is unused (nothing is learned)."""
        if self.state is None:
            self._init(generator)
        assert self.state is not None
        self.state, info = self.sampler.step(self.energy_fn, self.state, generator)
        self.trace.append(self.state.x[: self.trace_chains].detach().clone())
        stats = {
            "sampler/acceptance_rate": info.accept_prob.mean(),
            "energy/samples": self.state.energy.mean(),
        }
        for name in ("energy_error", "is_divergent"):
            if hasattr(info, name):
                stats[f"sampler/{name}"] = getattr(info, name).abs().double().mean()
        return stats

    def negatives(self) -> Tensor | None:
        return None if self.state is None else self.state.x

    def diagnostics(self) -> dict[str, float]:
        """ESS, R-hat and, where the energy knows its truth, mean/covariance errors."""
        if not self.trace:
            return {}
        trace = torch.stack(self.trace).flatten(2)  # [T, chains, D]
        out = chain_diagnostics(trace)
        result = {k: float(v) for k, v in out.items() if k in ("ess_bulk_min", "rhat_max")}
        mean, cov = getattr(self.energy_fn, "mean", None), getattr(self.energy_fn, "cov", None)
        if mean is not None and cov is not None and self.state is not None:
            err = mean_cov_error(self.state.x.flatten(1), mean, cov)
            result.update({k: float(v) for k, v in err.items()})
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"x": None if self.state is None else self.state.x}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("x") is not None:
            self.state = self.sampler.init(self.energy_fn, state["x"])
