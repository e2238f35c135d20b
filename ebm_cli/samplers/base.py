"""The sampler protocol shared by every MCMC method.

A sampler is a frozen dataclass of hyperparameters. Chains are batched: ``x`` has shape
[B, *event] and the energy E(x) has shape [B]. The energy function is an argument of every
call, so the same sampler serves while a trainer changes θ. Randomness comes from an explicit
``torch.Generator``. No sampler logs, plots or synchronises with the host.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn


class ChainState(NamedTuple):
    """Current position of B chains with its cached energy and gradient.

    x: [B, *event]; energy: [B] = E(x); grad: [B, *event] = ∇ₓE(x), or None for samplers that
    never need it (random-walk MH), so a step never recomputes what it already knows.
    """

    x: Tensor
    energy: Tensor
    grad: Tensor | None = None


class Sampler(Protocol):
    """What every sampler provides (see samplers/mh.py, hmc.py, langevin.py)."""

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        """Start chains at x [B, *event]."""
        ...

    def step(
        self, energy_fn: nn.Module, state: ChainState, generator: torch.Generator
    ) -> tuple[ChainState, NamedTuple]:
        """One transition of every chain; returns the new state and an Info of [B] tensors."""
        ...


def energy_only(energy_fn: nn.Module, x: Tensor) -> Tensor:
    """E(x) [B] for x [B, *event], without building a graph through θ."""
    with torch.no_grad():
        return energy_fn(x)


def energy_and_grad(energy_fn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """E(x) [B] and ∇ₓE(x) [B, *event], both detached.

    Chains are independent, so ∇ₓ Σ_b E(x_b) gives every chain's own gradient in one backward
    pass. Parameter gradients are not accumulated (autograd.grad only w.r.t. x).
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        energy = energy_fn(x)
        (grad,) = torch.autograd.grad(energy.sum(), x)
    return energy.detach(), grad.detach()


def metropolis_accept(
    log_ratio: Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """Metropolis–Hastings test on log α = log_ratio [B].

    Returns (accept_prob [B], is_accepted [B] bool, is_nan [B] bool). A NaN ratio is a
    rejection and is reported, never clamped into an acceptance (house rule 4).
    """
    is_nan = torch.isnan(log_ratio)
    log_ratio = torch.where(is_nan, torch.full_like(log_ratio, -torch.inf), log_ratio)
    accept_prob = torch.exp(torch.clamp(log_ratio, max=0.0))  # min(1, exp(log α))
    u = torch.rand(log_ratio.shape, generator=generator, device=log_ratio.device, dtype=log_ratio.dtype)
    is_accepted = torch.log(u) < log_ratio
    return accept_prob, is_accepted, is_nan


def select(mask: Tensor, new: Tensor, old: Tensor) -> Tensor:
    """Per-chain where: mask [B] broadcast over the event dims of new/old [B, *event]."""
    return torch.where(mask.view(-1, *([1] * (new.dim() - 1))), new, old)
