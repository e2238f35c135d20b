"""The parameter update every trainer shares: backward, gradient norm (clipped if asked),
optimizer step, learning-rate schedule — and its checkpointed state."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

LRSchedule = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]
OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def clip_gradients(parameters: Iterable[nn.Parameter], grad_clip: float | None) -> Tensor:
    """Total L2 norm of the parameters' gradients (0-d), clipping them to ``grad_clip`` if set.

    No host sync: the clip coefficient is applied as a tensor (torch.nn.utils.clip_grad_norm_).
    """
    params = [p for p in parameters if p.grad is not None]
    if grad_clip is None:
        return torch.nn.utils.get_total_norm([p.grad for p in params])
    return torch.nn.utils.clip_grad_norm_(params, grad_clip)


class ParameterUpdate:
    """θ ← optimizer step on ∇_θ loss, for ``params``.

    optimizer: a partial taking the parameter list (Hydra's ``_partial_: true`` node).
    lr_schedule: None (constant lr) or a partial taking the optimizer (e.g.
    ``torch.optim.lr_scheduler.CosineAnnealingLR`` with ``T_max: ${..steps}``), stepped once
    per update. grad_clip: None or a bound > 0 on the gradients' total L2 norm.
    """

    def __init__(self, params: Iterable[nn.Parameter], optimizer: OptimizerFactory,
                 lr_schedule: LRSchedule | None = None, grad_clip: float | None = None) -> None:
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"trainer.grad_clip must be > 0 or null, got {grad_clip}")
        self.params = list(params)
        self.optimizer = optimizer(self.params)
        self.schedule = lr_schedule(self.optimizer) if lr_schedule is not None else None
        self.grad_clip = grad_clip

    def __call__(self, loss: Tensor) -> dict[str, Tensor]:
        """One update from the 0-d ``loss``; returns {"grad_norm"} (before clipping) and, with a
        schedule, {"lr"}: the next update's lr (0-d, on the host: made from a Python float)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stats = {"grad_norm": clip_gradients(self.params, self.grad_clip)}
        self.optimizer.step()
        if self.schedule is not None:
            self.schedule.step()
            stats["lr"] = torch.tensor(self.schedule.get_last_lr()[0])
        return stats

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state (its parameter groups hold the lr reached)."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any], step: int) -> None:
        """Restore the optimizer and continue the schedule from update ``step``. The schedule's
        own settings come from the config, so a resumed run with a larger trainer.steps
        stretches the rest of a cosine decay to the new end instead of restarting or reversing
        it; with the same settings it continues exactly."""
        self.optimizer.load_state_dict(state)
        if self.schedule is not None:
            self.schedule.last_epoch = step


class NoSampleTrainer:
    """The state and negatives of a trainer that draws no model samples (score matching, energy
    discrepancy, NCSN): ``_step`` and its ``update`` (a ParameterUpdate) are all it resumes from;
    the caller saves the energy's weights (and buffers, e.g. a noise ladder)."""

    _step: int
    update: ParameterUpdate

    def negatives(self) -> Tensor | None:
        """No model samples are drawn in training."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Optimizer state (with its lr schedule) and the step counter."""
        return {"step": self._step, "optimizer": self.update.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step = int(state["step"])
        self.update.load_state_dict(state["optimizer"], self._step)
