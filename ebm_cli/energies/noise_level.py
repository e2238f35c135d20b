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
"""

from __future__ import annotations

import torch
from torch import Tensor

from ebm_cli.energies.noise_conditional import NoiseConditionalEnergy


class NoiseLevelEnergy(NoiseConditionalEnergy):
    """E_θ(x, σ) = MLP([flatten(x), σ]), x [B, *event], σ [B] -> [B]; settings and ladder
    (``sigmas``, descending) as NoiseConditionalEnergy. forward(x) = E_θ(x, σ_min)."""

    def conditioned(self, x: Tensor, sigma: Tensor) -> Tensor:
        """E_θ(x, σ) [B] for x [B, *event] and σ [B] (or a 0-d σ for every point)."""
        sigma = sigma.to(x.dtype).expand(x.shape[0])
        h = torch.cat([x.flatten(1), sigma.unsqueeze(1)], dim=1)  # [B, D + 1]
        return self.net(h).squeeze(-1)
