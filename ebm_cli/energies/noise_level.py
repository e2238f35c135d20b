"""A noise-level energy E_θ(x, σ) = MLP([flatten(x), σ]) for diffusion recovery likelihood.

The same ladder, network and protocol (NoiseConditional) as energies/noise_conditional.py,
but the output is not divided by σ and the network sees σ itself, not log σ. A density model
needs this where a score model does not: the energy difference between two separated modes is
log(w_A/w_B) at every small σ (the weights of p_data ⊛ N(0, σ²I) do not change with σ), which
this form represents by one σ-independent offset, while E = net/σ needs an offset in net ∝ σ,
20-fold amplified at σ_min = 0.05. The recovery conditionals pin the offset only at the levels
whose noise connects the modes; the small-σ levels inherit it from them. Measured on
two_gaussians with trainer=drl, weights of the σ_min density at one setting (6 levels, 1500
updates, K = 15): net([x, log σ])/σ 0.05/0.95, net([x, log σ]) 0.37/0.63, net([x, σ]) (this
form) 0.53/0.47. ``forward(x)`` = E_θ(x, σ_min).

``sigma_1`` (optional) sets the level above σ_min: the ladder is then σ_min followed by the
geometric ladder from σ_1 up to σ_max (n_levels − 1 levels), so that the lowest recovery
conditional, whose Gaussian term has δ_0² = σ_1² − σ_min², reaches δ_0 ≈ σ_1 around its points
instead of σ_min·√(r² − 1) on a plain geometric ladder of ratio r (0.08 at 4 → 0.05 in 8).

``log_step_scale`` [L − 1] (a buffer, zeros at init, saved with the weights) holds the recovery
Langevin's per-conditional step multipliers log s_t (samplers/recovery.py ``AdaptedSteps``),
which trainer=drl adapts so that resuming and sampling use the steps training reached.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ebm_cli.energies.activations import Activation
from ebm_cli.energies.noise_conditional import NoiseConditionalEnergy, geometric_ladder


def gapped_ladder(sigma_max: float, sigma_1: float, sigma_min: float, n_levels: int) -> Tensor:
    """The ladder [L], descending: the geometric ladder of L − 1 levels from σ_max to σ_1, then
    σ_min (requires σ_max > σ_1 > σ_min > 0, L >= 3)."""
    if not sigma_max > sigma_1 > sigma_min > 0:
        raise ValueError("energy.sigma_1 must lie strictly between energy.sigma_min and "
                         f"energy.sigma_max, got {sigma_1} (sigma_min {sigma_min}, "
                         f"sigma_max {sigma_max})")
    if n_levels < 3:
        raise ValueError(f"energy.n_levels must be >= 3 with energy.sigma_1, got {n_levels}")
    upper = geometric_ladder(sigma_max, sigma_1, n_levels - 1)
    return torch.cat([upper, torch.tensor([sigma_min], dtype=upper.dtype)])


class NoiseLevelEnergy(NoiseConditionalEnergy):
    """E_θ(x, σ) = MLP([flatten(x), σ]), x [B, *event], σ [B] -> [B]; settings and ladder
    (``sigmas``, descending) as NoiseConditionalEnergy, with σ_1 (module docstring) or None
    for the plain geometric ladder; ``log_step_scale`` [L − 1] the recovery Langevin's step
    multipliers (module docstring). forward(x) = E_θ(x, σ_min)."""

    def __init__(
        self,
        event_shape: Sequence[int] = (2,),
        sigma_max: float = 3.0,
        sigma_min: float = 0.05,
        n_levels: int = 10,
        width: int = 128,
        depth: int = 3,
        activation: Activation = "silu",
        sigma_1: float | None = None,
    ) -> None:
        super().__init__(event_shape, sigma_max, sigma_min, n_levels, width, depth, activation)
        if sigma_1 is not None:
            self.sigmas = gapped_ladder(sigma_max, sigma_1, sigma_min, n_levels)
        self.register_buffer("log_step_scale", torch.zeros(n_levels - 1))

    def conditioned(self, x: Tensor, sigma: Tensor) -> Tensor:
        """E_θ(x, σ) [B] for x [B, *event] and σ [B] (or a 0-d σ for every point)."""
        sigma = sigma.to(x.dtype).expand(x.shape[0])
        h = torch.cat([x.flatten(1), sigma.unsqueeze(1)], dim=1)  # [B, D + 1]
        return self.net(h).squeeze(-1)
