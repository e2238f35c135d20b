"""Noise-conditional score model: multi-σ denoising score matching (Song & Ermon 2019, eq. 5-6).

Over the energy's geometric ladder σ_1 > … > σ_L (energies/noise_conditional.py), each data
point gets a level i ~ U{1..L} and a perturbation x̃ = x + σ_i ξ, ξ ~ N(0, I), and

    L(θ) = (1/B) Σ_b ½ λ(σ_i) ‖s_θ(x̃_b, σ_i) + ξ_b/σ_i‖²,   λ(σ) = σ²,
         = (1/B) Σ_b ½ ‖σ_i ∇ₓE_θ(x̃_b, σ_i) − ξ_b‖²        (s_θ = −∇ₓE_θ),

whose minimiser is, at every level, the score of p_data ⊛ N(0, σ_i² I). λ(σ) = σ² makes every
level's term O(1) (Song & Ermon's choice). Samples come from annealed Langevin dynamics down the
same ladder (samplers/annealed.py); E_θ(·, σ_L), the energy's plain forward, is the density the
2-D quadrature measures (the data smoothed by σ_L, with the mode weights DSM can get wrong).
Cost per update: one forward and one double backward on B points (no MCMC).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ebm_cli.energies.noise_conditional import NoiseConditional
from ebm_cli.trainers.optim import LRSchedule, NoSampleTrainer, ParameterUpdate


def multi_sigma_dsm_loss(energy_fn: NoiseConditional, x: Tensor, generator: torch.Generator
                         ) -> tuple[Tensor, Tensor]:
    """The loss above on a batch x [B, *event]: (0-d loss, per-point terms [B] detached)."""
    sigmas = energy_fn.sigmas.to(device=x.device, dtype=x.dtype)  # [L]
    level = torch.randint(0, sigmas.shape[0], (x.shape[0],), generator=generator,
                          device=x.device)  # [B]
    sigma = sigmas[level]  # [B]
    xi = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    view = (-1,) + (1,) * (x.dim() - 1)
    x_noisy = (x + sigma.view(view) * xi).detach().requires_grad_(True)
    energy = energy_fn.conditioned(x_noisy, sigma)  # [B]
    (grad,) = torch.autograd.grad(energy.sum(), x_noisy, create_graph=True)  # ∇ₓE [B, *event]
    terms = 0.5 * ((sigma.view(view) * grad - xi) ** 2).flatten(1).sum(1)  # [B]
    return terms.mean(), terms.detach()


class NCSNTrainer(NoSampleTrainer):
    """Multi-σ denoising score matching of a NoiseConditional energy (module docstring).

    energy_fn: a NoiseConditional energy (e.g. energy=noise_conditional) whose ``sigmas`` is
    the ladder. train_data: [N, *event] (only its shape is checked). optimizer: a partial taking
    the parameters. sampler: accepted for the common construction and ignored (the evaluation
    samples with the configured sampler: sampler=annealed_langevin walks the ladder).
    grad_clip: max gradient norm or None. lr_schedule: a partial taking the optimizer or None.
    Cost (``gradients_per_update``): 2, ∇ₓE at the perturbed batch and the loss's θ-backward
    through it (a double backward); energy/data is a forward pass.
    """

    def __init__(
        self,
        energy_fn: nn.Module,
        train_data: Tensor,
        optimizer: Callable[..., torch.optim.Optimizer],
        sampler: Any = None,
        grad_clip: float | None = None,
        lr_schedule: LRSchedule | None = None,
    ) -> None:
        if not isinstance(energy_fn, NoiseConditional):
            raise ValueError(
                "trainer=ncsn needs a noise-conditional energy (sigmas and conditioned(x, σ)), "
                f"got {type(energy_fn).__name__}; use energy=noise_conditional")
        if train_data.ndim < 2:
            raise ValueError("train_data must have shape [N, *event]")
        self.energy_fn = energy_fn
        self.update = ParameterUpdate(energy_fn.parameters(), optimizer, lr_schedule, grad_clip)
        self._step = 0

    def loss(self, batch: Tensor, generator: torch.Generator) -> Tensor:
        """The multi-σ DSM loss on a batch [B, *event] (0-d, differentiable in θ)."""
        return multi_sigma_dsm_loss(self.energy_fn, batch, generator)[0]

    def step(self, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """One update; returns loss, energy/data (E(x, σ_L) on the clean batch) and grad_norm."""
        loss, _ = multi_sigma_dsm_loss(self.energy_fn, batch, generator)
        update_stats = self.update(loss)
        self._step += 1
        with torch.no_grad():
            energy = self.energy_fn(batch)
        return {"loss": loss.detach(), "energy/data": energy.mean(), **update_stats}

    def gradients_per_update(self) -> float:
        """Gradient passes through E_θ per update: 2 (class docstring), 0 before the first."""
        return 2.0 if self._step > 0 else 0.0
