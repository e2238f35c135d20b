"""A sampler of your own: random-walk Metropolis with a fixed proposal scale.

One transition of B chains at once (Metropolis et al. 1953):
  1. propose  x* = x + s ξ,  ξ ~ N(0, I)
  2. accept with probability α = min(1, exp(E(x) − E(x*)))   (the proposal is symmetric)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ebm_cli.samplers.base import ChainState


class MyInfo(NamedTuple):
    """Per-chain [B] diagnostics of one transition (the runner reads these two)."""

    accept_prob: Tensor  # min(1, α)
    is_accepted: Tensor  # bool


@dataclass(frozen=True)
class FixedScaleMetropolis:
    """x* = x + scale·ξ; no step-size adaptation (no ``target_accept``/``step_size`` fields)."""

    scale: float = 0.3

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"sampler.scale must be > 0, got {self.scale}")

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        """Chains at x [B, *event] with their energy [B] cached; no gradient needed."""
        with torch.no_grad():
            return ChainState(x, energy_fn(x), None)

    def step(self, energy_fn: nn.Module, state: ChainState,
             generator: torch.Generator) -> tuple[ChainState, MyInfo]:
        x, energy = state.x, state.energy
        with torch.no_grad():
            if energy is None:  # a state left unevaluated by another sampler
                energy = energy_fn(x)
            noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            x_prop = x + self.scale * noise  # x* = x + s ξ   [B, *event]
            energy_prop = energy_fn(x_prop)  # E(x*)   [B]
            log_alpha = energy - energy_prop  # log α = E(x) − E(x*)   [B]
            # min(1, α); a NaN log α is a rejection (probability 0), never an acceptance
            accept_prob = torch.exp(log_alpha.clamp(max=0.0)).nan_to_num(nan=0.0)
            u = torch.rand(accept_prob.shape, generator=generator, device=x.device,
                           dtype=x.dtype)
            is_accepted = u < accept_prob  # [B] bool
            keep = is_accepted.view(-1, *([1] * (x.dim() - 1)))  # [B, 1, …] for the event dims
            new_x = torch.where(keep, x_prop, x)
            new_energy = torch.where(is_accepted, energy_prop, energy)
        return ChainState(new_x, new_energy, None), MyInfo(accept_prob, is_accepted)
