"""A noise-conditional energy E_θ(x, σ) over a geometric σ ladder (Song & Ermon 2019).

E_θ(·, σ) models the data smoothed by N(0, σ²I): −∇ₓE_θ(x, σ) ≈ ∇ₓ log (p_data ⊛ N(0, σ²I))(x).
The network sees (flatten(x), log σ) and its output is divided by σ, so that the score
s_θ = −∇ₓE/σ carries the 1/σ scale of the true smoothed score by construction (the
s_θ(x)/σ parametrisation of Song & Ermon 2020, "Improved techniques", in energy form).
``forward(x)`` alone is E_θ(x, σ_min): an ordinary energy of the least smoothed density, so
quadrature, plots and every sampler treat the model like any other energy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ebm_cli.energies.activations import Activation, make_activation


def geometric_ladder(sigma_max: float, sigma_min: float, n_levels: int) -> Tensor:
    """The ladder [L], descending: σ_i = σ_max·(σ_min/σ_max)^((i−1)/(L−1)), i = 1..L."""
    if not sigma_max > sigma_min > 0:
        raise ValueError(
            f"energy.sigma_max must be > energy.sigma_min > 0, got {sigma_max}, {sigma_min}")
    if n_levels < 2:
        raise ValueError(f"energy.n_levels must be >= 2, got {n_levels}")
    exponents = torch.linspace(0.0, 1.0, n_levels, dtype=torch.float64)
    return (sigma_max * (sigma_min / sigma_max) ** exponents).float()


@runtime_checkable
class NoiseConditional(Protocol):
    """An energy conditioned on the noise level: ``sigmas`` the ladder [L] (descending) and
    ``conditioned(x, sigma)`` = E(x, σ) [B] for x [B, *event] and σ [B] (one level per point)."""

    sigmas: Tensor

    def conditioned(self, x: Tensor, sigma: Tensor) -> Tensor: ...


class NoiseConditionalEnergy(nn.Module):
    """E_θ(x, σ) = MLP([flatten(x), log σ]) / σ, x [B, *event], σ [B] -> [B].

    sigma_max, sigma_min, n_levels: the geometric ladder (``sigmas``, descending, a buffer so it
    moves with the module and is saved in its state_dict). width, depth, activation: the MLP
    (``depth`` hidden layers of ``width`` units). forward(x) = E_θ(x, σ_min).
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (2,),
        sigma_max: float = 3.0,
        sigma_min: float = 0.05,
        n_levels: int = 10,
        width: int = 128,
        depth: int = 3,
        activation: Activation = "silu",
    ) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"energy.width and energy.depth must be >= 1, got {width}, {depth}")
        self.event_shape = tuple(event_shape)
        self.register_buffer("sigmas", geometric_ladder(sigma_max, sigma_min, n_levels))
        dims = [math.prod(self.event_shape) + 1] + [width] * depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), make_activation(activation)]
        layers.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*layers)

    def conditioned(self, x: Tensor, sigma: Tensor) -> Tensor:
        """E_θ(x, σ) [B] for x [B, *event] and σ [B] (or a 0-d σ for every point)."""
        sigma = sigma.to(x.dtype).expand(x.shape[0])
        h = torch.cat([x.flatten(1), sigma.log().unsqueeze(1)], dim=1)  # [B, D + 1]
        return self.net(h).squeeze(-1) / sigma

    def forward(self, x: Tensor) -> Tensor:
        """E_θ(x, σ_min) [B]: the model of the least smoothed data."""
        return self.conditioned(x, self.sigmas[-1])
