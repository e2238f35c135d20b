"""The trainer protocol: what ``run.py`` needs from every way of fitting E_θ."""

from __future__ import annotations

from typing import Any, Protocol

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
