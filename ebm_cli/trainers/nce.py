"""Noise-contrastive estimation: learn E_θ and log Z by telling data from noise (Song & Kingma §4).

A logistic classifier with logit G(x) = −E_θ(x) − log Z − log(ν q(x)) separates data from ν
times as many noise draws y ~ q (Gutmann & Hyvärinen 2010). log Z is a free parameter learned
with θ; at the optimum p_θ = p_data and log Z is the model's true log partition function, so
``learned_log_z`` can be compared with quadrature. NCE is only as good as q is close to the data.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ebm_cli.trainers.buffer import DataNoise
from ebm_cli.trainers.losses import nce_logit, nce_loss
from ebm_cli.trainers.optim import LRSchedule, ParameterUpdate


class NCETrainer:
    """NCE with noise q fitted to the training data and a learned log Z.

    energy_fn: E_θ, x [B, *event] -> [B]. train_data: [N, *event], to fit q. optimizer: a
    partial, called with the energy's parameters plus log Z. noise: ``gaussian`` (data mean and
    full covariance) or ``uniform`` (the data's bounding box; the model is unconstrained outside
    it). noise_scale: widens q. noise_ratio ν: noise draws per data point (⌈ν·B⌉ per batch).
    init_log_z: starting value of log Z. sampler: accepted and ignored. grad_clip: max norm.
    lr_schedule: a partial taking the optimizer (a torch LR scheduler, per update) or None.
    Cost (``gradients_per_update``): 1, the loss's θ-backward over data and noise (no ∇ₓE).
    """

    def __init__(
        self,
        energy_fn: nn.Module,
        train_data: Tensor,
        optimizer: Callable[..., torch.optim.Optimizer],
        noise: str = "gaussian",
        noise_scale: float = 1.0,
        noise_ratio: float = 1.0,
        init_log_z: float = 0.0,
        sampler: Any = None,
        grad_clip: float | None = None,
        lr_schedule: LRSchedule | None = None,
    ) -> None:
        if not noise_ratio > 0:
            raise ValueError(f"trainer.noise_ratio must be > 0, got {noise_ratio}")
        self.energy_fn = energy_fn
        self.noise = DataNoise(train_data, noise, noise_scale, "trainer.noise")
        self.noise_ratio = noise_ratio
        p = next(iter(energy_fn.parameters()), None)
        device = p.device if p is not None else train_data.device
        self.log_z = nn.Parameter(torch.tensor(float(init_log_z), device=device))  # learned log Z
        self.update = ParameterUpdate([*energy_fn.parameters(), self.log_z], optimizer,
                                      lr_schedule, grad_clip)
        self._step = 0

    @property
    def learned_log_z(self) -> Tensor:
        """The current log Z estimate (0-d, detached)."""
        return self.log_z.detach()

    def step(self, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """One update; returns loss, nce/accuracy, log_z, energy/data, energy/noise, grad_norm."""
        b = batch.shape[0]
        m = max(1, math.ceil(self.noise_ratio * b))  # ⌈ν·B⌉ noise draws
        y = self.noise.sample(m, generator).to(batch.device)  # [M, *event]
        energy = self.energy_fn(torch.cat([batch, y]))  # one forward, [B + M]
        log_q = self.noise.log_prob(torch.cat([batch, y]))  # [B + M]
        loss = nce_loss(energy[:b], energy[b:], log_q[:b], log_q[b:], self.log_z, self.noise_ratio)
        update_stats = self.update(loss)  # grad_norm (and lr with a schedule)
        self._step += 1

        with torch.no_grad():
            logit = nce_logit(energy.detach(), log_q, self.log_z, self.noise_ratio)  # [B + M]
            correct = torch.cat([logit[:b] > 0, logit[b:] <= 0]).float()  # data→1, noise→0
        return {
            "loss": loss.detach(),
            "nce/accuracy": correct.mean(),
            "log_z": self.learned_log_z.clone(),
            "energy/data": energy[:b].detach().mean(),
            "energy/noise": energy[b:].detach().mean(),
            **update_stats,
        }

    def gradients_per_update(self) -> float:
        """Gradient passes through E_θ per update: 1 (the θ-backward), 0 before the first."""
        return 1.0 if self._step > 0 else 0.0

    def negatives(self) -> Tensor | None:
        """NCE has no model samples; None (the noise draws are not model negatives)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Optimizer state, step counter and log Z (the caller saves the energy's weights)."""
        return {
            "step": self._step,
            "optimizer": self.update.state_dict(),
            "log_z": self.log_z.detach().clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._step = int(state["step"])
        with torch.no_grad():
            self.log_z.copy_(state["log_z"])
        self.update.load_state_dict(state["optimizer"], self._step)
