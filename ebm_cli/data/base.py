"""The dataset record every data builder returns."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ebm_cli.resources import SEED_MAX, SEED_MIN


def seeded_generator(seed: int, key: str = "data.seed") -> torch.Generator:
    """A CPU generator seeded with ``seed``; a one-line ValueError naming ``key`` when torch
    cannot take it (not an integer, or outside [SEED_MIN, SEED_MAX])."""
    try:
        value = operator.index(seed)  # ints and numpy integers, not floats or bools
    except TypeError:
        value = None
    if value is None or isinstance(seed, bool) or not SEED_MIN <= value <= SEED_MAX:
        raise ValueError(f"{key}={seed!r} is not allowed; it must be an integer in "
                         "[-2**63, 2**64 - 1] (torch's 64-bit seed range)")
    return torch.Generator().manual_seed(value)


@dataclass(frozen=True)
class Dataset:
    """Train/test tensors plus what is known about the true density.

    train: [N_train, *event]; test: [N_test, *event].
    log_prob: the true normalised log density x [B, *event] -> [B] (nats), where a closed form
        exists; then ``true_nll`` = −mean log_prob(test).
    entropy: the true differential entropy in nats when there is no closed-form density
        (estimated once by scripts/estimate_entropy.py), so ``kl`` = test_nll − entropy.
    bounds: (low, high) per dimension of a box holding the data with margin, [(lo, hi), ...],
        used for 2-D quadrature and plots.
    modes / mode_weights: for mixtures, the component means [K, *event] and weights [K], so the
        evaluation can compare the mass the model puts on each mode with the truth.
    """

    name: str
    train: Tensor
    test: Tensor
    bounds: tuple[tuple[float, float], ...]
    log_prob: Callable[[Tensor], Tensor] | None = None
    entropy: float | None = None
    transform: dict[str, Tensor] | None = None
    train_labels: Tensor | None = None
    levels: int | None = None
    modes: Tensor | None = None
    mode_weights: Tensor | None = None

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def dim(self) -> int:
        d = 1
        for s in self.event_shape:
            d *= s
        return d

    @property
    def is_image(self) -> bool:
        """Image data: the event is [C, H, W]."""
        return len(self.event_shape) == 3

    def to_original(self, x: Tensor) -> Tensor:
        """Model-space points x [B, *event] back in the data's original units (x·std + mean)."""
        if self.transform is None:
            return x
        mean = self.transform["mean"].to(device=x.device, dtype=x.dtype)
        std = self.transform["std"].to(device=x.device, dtype=x.dtype)
        return x * std + mean

    @property
    def log_scale(self) -> float:
        """Σ log std over the event (nats): NLL in original units = NLL in model units + this
        (the change of variables x_model = (x − mean)/std); 0 without a transform."""
        if self.transform is None:
            return 0.0
        return float(self.transform["std"].double().log().sum())
