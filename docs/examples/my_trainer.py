"""A trainer of your own: contrastive divergence, CD-k (Hinton 2002).

Maximum likelihood needs ∇θ log p(x) = −∇θE(x) + E_{p_θ}[∇θE]. CD-k replaces the model
expectation by negatives from k steps of the configured sampler started at the data batch:

    loss = mean E(data) − mean E(negatives) + α · mean(E(data)² + E(negatives)²)

(the α term keeps energies of order one).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


class ContrastiveDivergence:
    """CD-k with Adam. ``energy_fn`` and ``sampler`` are runtime arguments: the runner passes
    them because this constructor declares them (``train_data`` is not asked for)."""

    def __init__(self, energy_fn: nn.Module, sampler: Any, k: int = 5, lr: float = 1e-3,
                 alpha: float = 0.01) -> None:
        if k < 1:
            raise ValueError(f"trainer.k must be >= 1, got {k}")
        self.energy_fn, self.sampler = energy_fn, sampler
        self.k, self.alpha = k, alpha
        self.optimizer = torch.optim.Adam(energy_fn.parameters(), lr=lr)
        self._negatives: Tensor | None = None

    def step(self, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """One update on a data batch [B, *event]; returns 0-d tensors (no ``.item()``)."""
        state = self.sampler.init(self.energy_fn, batch.detach())  # chains start at the data
        accept = torch.zeros((), device=batch.device)
        for _ in range(self.k):
            state, info = self.sampler.step(self.energy_fn, state, generator)
            accept = accept + info.accept_prob.mean()
        negatives = state.x.detach()  # [B, *event]
        self._negatives = negatives

        energy = self.energy_fn(torch.cat([batch, negatives]))  # one forward, [2B]
        e_data, e_neg = energy[: batch.shape[0]], energy[batch.shape[0]:]
        loss = (e_data.mean() - e_neg.mean()
                + self.alpha * (e_data.square().mean() + e_neg.square().mean()))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {
            "loss": loss.detach(),
            "energy/data": e_data.detach().mean(),
            "energy/samples": e_neg.detach().mean(),
            "sampler/acceptance_rate": accept / self.k,
        }

    def negatives(self) -> Tensor | None:
        """The last negatives [B, *event], for the sample plots."""
        return self._negatives

    def state_dict(self) -> dict[str, Any]:
        """What a resume needs besides the energy's weights (the runner saves those)."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
