"""The trainer protocol: what ``run.py`` needs from every way of fitting E_θ."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn


class Trainer(Protocol):
    """Built by Hydra as ``instantiate(cfg.trainer, energy_fn=..., sampler=..., train_data=...)``.

    ``step(batch, generator)`` does one update on a data batch [B, *event] and returns a dict of
    0-d tensors (``loss`` plus health quantities, e.g. ``energy/data``, ``energy/samples``,
    ``sampler/acceptance_rate``, ``grad_norm``). It never calls ``.item()``: the run loop decides
    when to read values back. ``state_dict``/``load_state_dict`` cover everything needed to resume
    (optimizer, chains, replay buffer, adapted sampler). ``negatives()`` returns the current
    model samples [N, *event] if the trainer keeps any (for plots), else None.
    """

    energy_fn: nn.Module

    def step(self, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def negatives(self) -> Tensor | None: ...


@runtime_checkable
class ChainRun(Protocol):
    """A sampling run (``trainer=none``): chains of a fixed energy, nothing learned, no data.

    Built with the runtime arguments it declares among ``energy_fn``, ``sampler``,
    ``event_shape`` (the energy's), ``dtype`` and ``device``; ``step(generator)`` is one
    transition of every chain. The run sets ``seconds`` (wall time of the recorded transitions)
    and evaluates the chains (ESS, R-hat, errors against the energy's truth), not a model.
    """

    def step(self, generator: torch.Generator) -> dict[str, Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    def negatives(self) -> Tensor | None: ...

    def diagnostics(self) -> dict[str, float]: ...

    def chain_sets(self) -> dict[str, tuple[Tensor, Tensor]]: ...

    def trace_array(self) -> Tensor: ...


@runtime_checkable
class StartsChains(Protocol):
    """A trainer whose chains start (and restart) from a noise distribution ``noise`` with
    ``sample(n, generator) -> [n, *event]``; for D > 2 evaluation chains start there too."""

    noise: Any


@runtime_checkable
class CountsGradients(Protocol):
    """A trainer that reports its cost: ``gradients_per_update()`` is the mean number of
    gradient passes through E_θ per update so far (float; 0 before the first update).

    x-gradients count per chain or data point: a pass over r copies of each point (r replicas,
    P projections) counts r. The loss's backward to θ counts 1, a double backward included.
    Energy evaluations without a gradient (MH, restart tests) count 0. So MLE costs
    s + k·g + kl_steps + 1 (s: the sampler's start gradient, k transitions of g gradients),
    NCE and energy discrepancy 1. It goes into metrics.json as ``gradients_per_update``, so
    trainers are compared at equal cost.
    """

    def gradients_per_update(self) -> float: ...


def is_chain_run(target: object) -> bool:
    """Is ``target`` (a trainer class) a sampling run rather than a trainer?"""
    return isinstance(target, type) and issubclass(target, ChainRun)
