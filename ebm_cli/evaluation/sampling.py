"""Draw model samples with a configured sampler, for evaluation and samples.npy."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ebm_cli.samplers.adaptation import warmup as run_warmup
from ebm_cli.samplers.base import Sampler


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
    generator: torch.Generator, restart: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Run chains from x0 [B, *event]: ``warmup`` adaptation steps, then ``steps`` fixed steps.

    ``restart`` (x [B, *event] -> x [B, *event]), when given, is applied before each fixed step:
    an extra move that must leave exp(−E) invariant (e.g. an independence-MH restart from a
    fitted Gaussian, trainers.buffer.reinitialise), after which the sampler's state is rebuilt.
    Returns (final states [B, *event], mean acceptance over the fixed steps, 0-d tensor).
    """
    state = sampler.init(energy_fn, x0)
    if warmup > 0:
        sampler, state = run_warmup(sampler, energy_fn, state, generator, warmup)
    accept = torch.zeros((), dtype=x0.dtype, device=x0.device)
    for _ in range(steps):
        if restart is not None:
            state = sampler.init(energy_fn, restart(state.x))
        state, info = sampler.step(energy_fn, state, generator)
        accept = accept + info.accept_prob.mean()
    return state.x, accept / max(steps, 1)
