"""Diffusion recovery likelihood (Gao, Song, Poole, Wu & Kingma 2021), variance-exploding form.

Levels σ_0 < σ_1 < … < σ_{L−1}: the noise-conditional energy's ladder read upwards (σ_0 =
σ_min, E_θ(·, σ_0) its plain forward, models the data smoothed by σ_0). A level-t point is a
data point plus noise, x_t = x + σ_t ξ, and x_{t+1} = x_t + δ_t ξ' with δ_t² = σ_{t+1}² − σ_t².
Level t (t = 0..L−2) has the conditional EBM

    p_θ(x_t | x_{t+1}) = exp(−E_θ(x_t, σ_t) − ‖x_{t+1} − x_t‖² / (2 δ_t²)) / Z_θ(x_{t+1}, t),

which is exact when E_θ(·, σ_t) = −log(p_data ⊛ N(0, σ_t² I)) + c_t (Bayes' rule), so every
level is trained towards the smoothed data's energy, and level 0 towards the density claimed.
Each data point of a batch gets a level t ~ U{0..L−2}, or t = 0 with probability
``base_share`` and uniform over the others otherwise, and the recovery log-likelihood is
maximised by its MLE gradient, the conditional form of eq. 9:

    L(θ) = (1/B) Σ_b λ_t [E_θ(x_t⁺, σ_t) − E_θ(x_t⁻, σ_t)],

x_t⁺ the level-t point, x_t⁻ a draw of p_θ(· | x_{t+1}) by K short-run Langevin steps started
at x_{t+1} (the Gaussian term of the conditional has no θ, so it cancels from the loss):

    y' = y − η_t [∇_y E_θ(y, σ_t) + (y − x_{t+1}) / δ_t²] + √(2 η_t) ξ,   η_t = ε δ_t² s_t,

each kept with its Metropolis–Hastings probability (samplers/recovery.py: ε, K and MALA are
the sampler's). The step multipliers s_t = exp(log s_t) ≤ 1 live in the energy's
``log_step_scale`` (an AdaptedSteps energy) and are adapted after every update towards the
acceptance ``target_accept`` (ā_t the mean acceptance of the batch's level-t points):

    log s_t ← min(0, log s_t + ``adapt_rate``·(ā_t − target_accept)),

so a level whose learned energy is stiffer than ε δ_t² can follow (thin data: rings, spirals,
pinwheel, whose unadjusted training diverged at ε = 0.1) shrinks its own step, and the others
keep ε δ_t². They are saved with the energy, so resume is exact and the sampler walks with the
steps training reached. Shapes: a batch [B, *event]; σ_t, δ_t², λ_t
and the energies [B]; the loss 0-d. λ_t (``level_weight``) only balances the levels' scales
(any λ_t > 0 has the same optimum): ``one`` for energy=noise_level (E = MLP([x, σ]), whose
levels share one scale), ``sigma`` = σ_t/σ_0 for energy=noise_conditional (E = net/σ), to undo
its 1/σ. Neither λ_t nor the levels' shares move the optimum (every conditional is exact at
the truth); they set how much of the budget each conditional gets. The level-0 conditional
learns the shape of the density measured, which the others reach only through the network's
smoothness in σ: on eight_gaussians with uniform levels E_θ(·, σ_0) stayed a ring through the
modes after 1500 updates (KL 0.43), with ``base_share`` 0.7 and a gapped ladder (energy σ_1 =
0.4) it has the gaps (KL 0.066 and 0.041, seeds 0 and 1). The density measured is E_θ(·, σ_0),
and the conditionals fix it only locally (within about δ_t of the level's points): the
relative weight of separated modes is pinned at the levels whose noise connects them and
reaches σ_0 through the network's smoothness in σ, which energy=noise_level keeps and
energy=noise_conditional's 1/σ breaks (energies/noise_level.py).
Sampling walks the chain of conditionals from the noisiest level down to level 0 with the same
Langevin (sampler=recovery_langevin). Cost per update: K (+ 1 with MALA) gradient passes for the
negatives and one backward of the loss in θ, K + 2 with MALA (``gradients_per_update``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ebm_cli.energies.noise_conditional import NoiseConditional
from ebm_cli.samplers.recovery import (
    AdaptedSteps,
    RecoveryLangevin,
    ascending_ladder,
    level_log_scale,
)
from ebm_cli.trainers.optim import LRSchedule, NoSampleTrainer, ParameterUpdate

LEVEL_WEIGHTS = ("one", "sigma")


class DRLTrainer(NoSampleTrainer):
    """Diffusion recovery likelihood of a NoiseConditional energy (module docstring).

    energy_fn: a NoiseConditional energy (energy=noise_level or noise_conditional) whose
    ``sigmas`` is the ladder (L = energy.n_levels levels, L − 1 conditionals). sampler: a
    RecoveryLangevin (sampler=recovery_langevin); its ε and K draw the training negatives, so
    training and sampling share one Langevin. train_data: [N, *event] (only its shape is checked).
    optimizer: a partial taking the parameters. grad_clip: max gradient norm or None.
    lr_schedule: a partial taking the optimizer or None. level_weight: λ_t, ``one`` or
    ``sigma`` (module docstring). base_share: the probability of level 0 per point, in (0, 1),
    or None for uniform levels. target_accept: the acceptance in (0, 1) the per-level steps
    are adapted to (an AdaptedSteps energy with a MALA sampler), or None for fixed steps;
    adapt_rate: its gain, > 0 (module docstring). Negatives are drawn afresh at mixed
    levels every update and not kept (``negatives()`` is None, as for the other trainers
    whose draws are no model samples); the state to resume is the optimizer and step.
    """

    def __init__(
        self,
        energy_fn: nn.Module,
        train_data: Tensor,
        optimizer: Callable[..., torch.optim.Optimizer],
        sampler: Any = None,
        grad_clip: float | None = None,
        lr_schedule: LRSchedule | None = None,
        level_weight: str = "one",
        base_share: float | None = None,
        target_accept: float | None = 0.6,
        adapt_rate: float = 0.05,
    ) -> None:
        if not isinstance(energy_fn, NoiseConditional):
            raise ValueError(
                "trainer=drl needs a noise-conditional energy (sigmas and conditioned(x, σ)), "
                f"got {type(energy_fn).__name__}; use energy=noise_level")
        if not isinstance(sampler, RecoveryLangevin):
            raise ValueError(
                "trainer=drl draws its negatives with sampler=recovery_langevin, "
                f"got {type(sampler).__name__}")
        if train_data.ndim < 2:
            raise ValueError("train_data must have shape [N, *event]")
        if level_weight not in LEVEL_WEIGHTS:
            raise ValueError(f"trainer.level_weight must be one of {', '.join(LEVEL_WEIGHTS)}, "
                             f"got {level_weight!r}")
        if base_share is not None and not 0 < base_share < 1:
            raise ValueError(f"trainer.base_share must be in (0, 1) or null, got {base_share!r}")
        if target_accept is not None and not 0 < target_accept < 1:
            raise ValueError(
                f"trainer.target_accept must be in (0, 1) or null, got {target_accept!r}")
        if isinstance(adapt_rate, bool) or not isinstance(adapt_rate, (int, float)) \
                or not adapt_rate > 0:
            raise ValueError(f"trainer.adapt_rate must be > 0, got {adapt_rate!r}")
        self.target_accept = target_accept if sampler.metropolis else None
        self.adapt_rate = float(adapt_rate)
        self.level_weight = level_weight
        self.base_share = base_share
        self.energy_fn = energy_fn
        self.sampler = sampler
        self.update = ParameterUpdate(energy_fn.parameters(), optimizer, lr_schedule, grad_clip)
        self._step = 0
        self._updates = 0  # this process's updates and their gradient passes (the cost)
        self._passes = 0

    def _levels(self, n_cond: int, batch: int, generator: torch.Generator,
                device: torch.device) -> Tensor:
        """A level t ∈ {0..n_cond−1} per point [B]: uniform, or with ``base_share`` t = 0 with
        that probability and uniform over 1..n_cond−1 otherwise."""
        if self.base_share is None or n_cond == 1:
            return torch.randint(0, n_cond, (batch,), generator=generator, device=device)
        probs = torch.full((n_cond,), (1 - self.base_share) / (n_cond - 1), device=device)
        probs[0] = self.base_share
        return torch.multinomial(probs, batch, replacement=True, generator=generator)

    def _pairs(self, x: Tensor, generator: torch.Generator
               ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Levels and noisy pairs for a batch x [B, *event]: (t [B] int, σ_t [B], δ_t² [B],
        λ_t [B], x_t [B, *event], x_{t+1} [B, *event])."""
        sigmas = ascending_ladder(self.energy_fn, x)  # [L]
        level = self._levels(sigmas.shape[0] - 1, x.shape[0], generator, x.device)  # [B]
        sigma, sigma_next = sigmas[level], sigmas[level + 1]  # [B]
        delta2 = sigma_next**2 - sigma**2
        view = (-1,) + (1,) * (x.dim() - 1)
        x_t = x + sigma.view(view) * torch.randn(x.shape, generator=generator,
                                                 device=x.device, dtype=x.dtype)
        x_next = x_t + delta2.sqrt().view(view) * torch.randn(
            x.shape, generator=generator, device=x.device, dtype=x.dtype)
        weight = sigma / sigmas[0] if self.level_weight == "sigma" else torch.ones_like(sigma)
        return level, sigma, delta2, weight, x_t, x_next

    def _losses(self, batch: Tensor, generator: torch.Generator
                ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``losses`` plus the levels t [B] and the negatives' mean acceptance [B]."""
        level, sigma, delta2, weight, x_t, x_next = self._pairs(batch, generator)
        negatives, _, accept = self.sampler.conditional(
            self.energy_fn, x_next, sigma, delta2, generator,
            level_log_scale(self.energy_fn, level))
        pos = self.energy_fn.conditioned(x_t, sigma)  # [B]
        neg = self.energy_fn.conditioned(negatives, sigma)  # [B]
        return (weight * (pos - neg)).mean(), pos.detach(), neg.detach(), level, accept

    def losses(self, batch: Tensor, generator: torch.Generator
               ) -> tuple[Tensor, Tensor, Tensor]:
        """(loss 0-d differentiable in θ, E_θ(x_t⁺, σ_t) [B], E_θ(x_t⁻, σ_t) [B]) on a batch
        [B, *event]; K (+ 1 with MALA) gradient passes for the negatives."""
        return self._losses(batch, generator)[:3]

    def loss(self, batch: Tensor, generator: torch.Generator) -> Tensor:
        """The recovery-likelihood loss on a batch [B, *event] (0-d, differentiable in θ)."""
        return self.losses(batch, generator)[0]

    @torch.no_grad()
    def _adapt(self, level: Tensor, accept: Tensor) -> None:
        """log s_t ← min(0, log s_t + rate·(ā_t − target)) for the levels t present in the
        batch (level [B] int, accept [B]); a no-op without AdaptedSteps or a target."""
        if self.target_accept is None or not isinstance(self.energy_fn, AdaptedSteps):
            return
        log_scale = self.energy_fn.log_step_scale  # [L − 1]
        sums = torch.zeros_like(log_scale).index_add_(0, level, accept.to(log_scale.dtype))
        counts = torch.zeros_like(log_scale).index_add_(0, level, torch.ones_like(sums)[level])
        mean = sums / counts.clamp_min(1.0)
        move = self.adapt_rate * (mean - self.target_accept) * (counts > 0)
        log_scale.copy_((log_scale + move).clamp(max=0.0))

    def step(self, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """One update; returns loss, energy/data (mean E_θ(x_t⁺, σ_t)), energy/samples (mean
        E_θ(x_t⁻, σ_t)), accept (mean acceptance of the negatives' proposals), step_scale0
        (s_0, the lowest conditional's multiplier, with AdaptedSteps), grad_norm (and lr with
        a schedule)."""
        loss, pos, neg, level, accept = self._losses(batch, generator)
        update_stats = self.update(loss)
        self._adapt(level, accept)
        self._step += 1
        self._updates += 1
        self._passes += self.sampler.evals_per_level + 1
        out = {"loss": loss.detach(), "energy/data": pos.mean(), "energy/samples": neg.mean(),
               "accept": accept.mean(), **update_stats}
        if isinstance(self.energy_fn, AdaptedSteps):
            out["step_scale0"] = self.energy_fn.log_step_scale[0].exp()
        return out

    def gradients_per_update(self) -> float:
        """Mean gradient passes through E per update of this process: K Langevin steps (K + 1
        with MALA) over the batch plus the loss's backward in θ; 0 before the first update."""
        return self._passes / self._updates if self._updates else 0.0
