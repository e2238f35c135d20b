"""Energy discrepancy: an MCMC-free, score-free loss for E_θ (Schröder et al., NeurIPS 2023).

With the Gaussian perturbation q(y | x) = N(y; x, t I), the energy discrepancy
ED_q(p_data, E_θ) = E_data[E_θ(x)] + E_data E_{y~q(·|x)} log ∫ q(y | x') exp(−E_θ(x')) dx'
is minimised (uniquely, up to a constant in E_θ) by E_θ = −log p_data. The inner integral is
estimated by M draws x'_j = y + √t ξ'_j (q is symmetric, so x' | y ~ q(· | y)), and the paper's
stabilised estimator (w > 0) adds w/M inside the logarithm, as if x itself were one more
negative of weight w, which bounds the loss below by log(w/M) and keeps its variance finite:

    L_{t,M,w}(θ) = (1/N) Σ_i log( w/M + (1/M) Σ_j exp(E_θ(x_i) − E_θ(x'_{i,j})) ),
    y_i = x_i + √t ξ_i,   x'_{i,j} = y_i + √t ξ'_{i,j},   ξ, ξ' ~ N(0, I).

Small t interpolates towards score matching, large t towards maximum likelihood with a
Gaussian-convolved proposal (the paper's §3); neither scores nor MCMC are needed: one forward
pass over B·(M + 1) points and one backward pass per update.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ebm_cli.trainers.optim import LRSchedule, NoSampleTrainer, ParameterUpdate


def energy_discrepancy_loss(
    energy_fn: nn.Module, x: Tensor, t: float, n_negatives: int, w: float,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """L_{t,M,w} on a batch x [B, *event] (module docstring), computed as a log-sum-exp.

    log(w/M + (1/M) Σ_j e^{d_j}) = logsumexp([d_1, …, d_M, log w]) − log M with
    d_j = E(x) − E(x'_j); w = 0 drops the stabiliser. Returns (loss 0-d, E(x) [B],
    E(x') [B, M], the share of each point's sum held by the w-term [B], zero when w = 0).
    """
    b, event = x.shape[0], x.shape[1:]
    sd = math.sqrt(t)
    xi = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    y = x + sd * xi  # [B, *event]
    xi_neg = torch.randn((b, n_negatives, *event), generator=generator, device=x.device,
                         dtype=x.dtype)
    x_neg = y.unsqueeze(1) + sd * xi_neg  # [B, M, *event]
    energy = energy_fn(torch.cat([x, x_neg.reshape(b * n_negatives, *event)]))  # one forward
    e_data, e_neg = energy[:b], energy[b:].view(b, n_negatives)
    terms = e_data.unsqueeze(1) - e_neg  # d_{i,j} [B, M]
    if w > 0:
        terms = torch.cat([terms, torch.full_like(terms[:, :1], math.log(w))], dim=1)
    log_sum = torch.logsumexp(terms, dim=1)  # [B]
    loss = (log_sum - math.log(n_negatives)).mean()
    if w > 0:
        w_share = torch.exp(terms[:, -1] - log_sum).detach()
    else:
        w_share = torch.zeros_like(log_sum).detach()
    return loss, e_data, e_neg, w_share


class EnergyDiscrepancyTrainer(NoSampleTrainer):
    """Minimise the stabilised energy discrepancy L_{t,M,w} (module docstring).

    energy_fn: E_θ, x [B, *event] -> [B]. train_data: [N, *event] (only its shape is checked).
    optimizer: a partial taking the parameters. t: variance of each Gaussian perturbation, in
    squared data units, > 0. n_negatives: M, contrastive points per data point, >= 1.
    w: stabiliser weight, >= 0 (0: the unstabilised estimator). sampler: accepted for the
    common construction and ignored (no MCMC). grad_clip: max gradient norm or None.
    lr_schedule: a partial taking the optimizer (a torch LR scheduler, per update) or None.
    Cost per update: energies of B·(M + 1) points, one backward pass, no ∇ₓE
    (``gradients_per_update`` 1: the M negatives are forward passes only).
    """

    def __init__(
        self,
        energy_fn: nn.Module,
        train_data: Tensor,
        optimizer: Callable[..., torch.optim.Optimizer],
        t: float = 1.0,
        n_negatives: int = 8,
        w: float = 1.0,
        sampler: Any = None,
        grad_clip: float | None = None,
        lr_schedule: LRSchedule | None = None,
    ) -> None:
        if not t > 0:
            raise ValueError(f"trainer.t must be > 0, got {t}")
        if n_negatives < 1:
            raise ValueError(f"trainer.n_negatives must be >= 1, got {n_negatives}")
        if not w >= 0:
            raise ValueError(f"trainer.w must be >= 0, got {w}")
        if train_data.ndim < 2:
            raise ValueError("train_data must have shape [N, *event]")
        self.energy_fn = energy_fn
        self.t, self.n_negatives, self.w = float(t), n_negatives, float(w)
        self.update = ParameterUpdate(energy_fn.parameters(), optimizer, lr_schedule, grad_clip)
        self._step = 0

    def loss(self, batch: Tensor, generator: torch.Generator) -> Tensor:
        """L_{t,M,w} on a batch [B, *event] (0-d, differentiable in θ)."""
        return energy_discrepancy_loss(self.energy_fn, batch, self.t, self.n_negatives, self.w,
                                       generator)[0]

    def step(self, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """One update; returns loss, energy/data, energy/negatives, ed/w_share (mean share of
        the w-term in each point's sum: near 1, the negatives all lie far above the data) and
        grad_norm (and lr with a schedule)."""
        loss, e_data, e_neg, w_share = energy_discrepancy_loss(
            self.energy_fn, batch, self.t, self.n_negatives, self.w, generator)
        update_stats = self.update(loss)
        self._step += 1
        return {
            "loss": loss.detach(),
            "energy/data": e_data.detach().mean(),
            "energy/negatives": e_neg.detach().mean(),
            "ed/w_share": w_share.mean(),
            **update_stats,
        }

    def gradients_per_update(self) -> float:
        """Gradient passes through E_θ per update: 1 (the θ-backward), 0 before the first."""
        return 1.0 if self._step > 0 else 0.0
