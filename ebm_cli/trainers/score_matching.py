"""Score-matching training: fit ∇ₓ log p_θ = −∇ₓE_θ to the data's score (Song & Kingma §3).

No MCMC and no Z_θ. Score matching cannot see the relative weight of well-separated modes
(the score is local), so on multi-modal data the mode masses may come out wrong even when each
mode's shape is right.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ebm_cli.samplers.base import energy_and_grad
from ebm_cli.trainers.losses import PROJECTIONS, SCORE_MATCHING_METHODS
from ebm_cli.trainers.optim import LRSchedule, NoSampleTrainer, ParameterUpdate

METHODS = SCORE_MATCHING_METHODS  # trainer.method -> its loss (trainers/losses.py)


class ScoreMatchingTrainer(NoSampleTrainer):
    """Score matching: ``exact`` (Hyvärinen), ``sliced`` (random projections) or ``denoising``,
    each a pure loss of trainers/losses.py chosen by name (SCORE_MATCHING_METHODS).

    energy_fn: E_θ, x [B, *event] -> [B]. train_data: [N, *event] (only its event shape is
    checked). optimizer: a partial taking the parameters. sigma: noise level of denoising SM
    (in data units). n_projections / projection: sliced SM's projections per point and their
    law (``rademacher`` or ``gaussian``); variance_reduction: use ½‖∇E‖² for ½(vᵀ∇E)²
    (SSM-VR). sampler: accepted for the common construction and ignored (no MCMC here).
    grad_clip: max gradient norm or None. lr_schedule: a partial taking the optimizer (a torch
    LR scheduler, stepped once per update) or None.
    Cost (``gradients_per_update``, per data point): the method's (SCORE_MATCHING_METHODS:
    exact D + 2, sliced 2P + 1, denoising 2) + 1 for the health statistics (∇ₓE on the clean
    batch for ``score_norm``): exact D + 3, sliced 2P + 2, denoising 3.
    """

    def __init__(
        self,
        energy_fn: nn.Module,
        train_data: Tensor,
        optimizer: Callable[..., torch.optim.Optimizer],
        method: str = "exact",
        sigma: float = 0.1,
        n_projections: int = 1,
        projection: str = "rademacher",
        variance_reduction: bool = False,
        sampler: Any = None,
        grad_clip: float | None = None,
        lr_schedule: LRSchedule | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"trainer.method must be one of {', '.join(METHODS)}, got {method!r}")
        if not sigma > 0:
            raise ValueError(f"trainer.sigma must be > 0, got {sigma}")
        if n_projections < 1:
            raise ValueError(f"trainer.n_projections must be >= 1, got {n_projections}")
        if projection not in PROJECTIONS:
            raise ValueError(
                f"trainer.projection must be one of {', '.join(PROJECTIONS)}, got {projection!r}"
            )
        if train_data.ndim < 2:
            raise ValueError("train_data must have shape [N, *event]")
        if method == "exact" and train_data.ndim > 2:  # images [N, C, H, W]
            raise ValueError(
                "trainer.method=exact needs one backward pass per pixel for the Hessian trace; "
                "for image data use trainer.method=sliced or trainer.method=denoising"
            )
        self.update = ParameterUpdate(energy_fn.parameters(), optimizer, lr_schedule, grad_clip)
        self.energy_fn = energy_fn
        self.method, self.sigma = method, sigma
        self.n_projections, self.projection = n_projections, projection
        self.variance_reduction = variance_reduction
        self._loss = METHODS[method].loss
        settings = {"sigma": sigma, "n_projections": n_projections, "projection": projection,
                    "variance_reduction": variance_reduction}
        self._settings = {name: settings[name] for name in METHODS[method].settings}
        d = math.prod(train_data.shape[1:])
        self._gradients = METHODS[method].gradients(d, **self._settings) + 1  # + the health ∇E
        self._step = 0

    def loss(self, batch: Tensor, generator: torch.Generator) -> Tensor:
        """The chosen score-matching loss on a batch [B, *event] (0-d, differentiable in θ)."""
        return self._loss(self.energy_fn, batch, generator=generator, **self._settings)

    def step(self, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """One update; returns loss, score_norm (mean ‖∇ₓE‖ on data), energy/data, grad_norm."""
        energy, grad = energy_and_grad(self.energy_fn, batch)  # health, at the θ of the loss
        loss = self.loss(batch, generator)
        update_stats = self.update(loss)  # grad_norm (and lr with a schedule)
        self._step += 1
        return {
            "loss": loss.detach(),
            "score_norm": grad.flatten(1).norm(dim=1).mean(),
            "energy/data": energy.mean(),
            **update_stats,
        }

    def gradients_per_update(self) -> float:
        """Gradient passes through E_θ per update, per data point (class docstring); fixed by
        the settings, 0 before the first update."""
        return float(self._gradients) if self._step > 0 else 0.0
