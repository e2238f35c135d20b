"""The energy contract and the one optional extra an energy may declare.

An energy is any ``nn.Module`` whose ``forward(x: [B, *event]) -> [B]`` returns E(x) = −log p̃(x)
(lower is more likely). That is all a user's class needs. Optional, each declared, never probed:

- ``event_shape: tuple[int, ...]`` (:class:`HasEventShape`): the shape of one x. A sampling run
  (``trainer=none``) takes its dimension from it; no data set is involved.
- ``truth() -> Truth`` (:class:`KnowsTruth`): what the energy knows about its normalised density
  p = exp(−E)/Z — log Z, moments, exact samples, a plotting box. Sampling runs then report
  mean/covariance errors and an MMD to exact draws. A ``sample``/``mean``/``log_z`` attribute of a
  user's class means nothing to the runner unless ``truth()`` hands it over.
- Runtime constructor arguments — ``event_shape`` (the data's) — are passed only to constructors
  that declare a parameter of that name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

Box = tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Truth:
    """Exact facts of p = exp(−E)/Z; any of them may be unknown (None).

    log_z: log Z (nats); mean: E[x] [D]; cov: Cov[x] [D, D]; bounds: a box per dimension holding
    nearly all the mass (plots); sample(n, generator) -> [n, *event] exact draws on the
    generator's device.
    """

    log_z: float | None = None
    mean: Tensor | None = None
    cov: Tensor | None = None
    bounds: Box | None = None
    sample: Callable[[int, torch.Generator], Tensor] | None = None


@runtime_checkable
class HasEventShape(Protocol):
    """An energy that says the shape of one x."""

    event_shape: tuple[int, ...]


@runtime_checkable
class KnowsTruth(Protocol):
    """An energy that knows facts of its normalised density (see :class:`Truth`)."""

    def truth(self) -> Truth: ...


def truth_of(energy_fn: torch.nn.Module) -> Truth:
    """The energy's declared :class:`Truth`, or an empty one."""
    return energy_fn.truth() if isinstance(energy_fn, KnowsTruth) else Truth()
