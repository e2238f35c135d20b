"""Two energies of your own, as worked examples for docs/extending.md.

An energy is any ``torch.nn.Module`` whose ``forward(x: [B, *event]) -> [B]`` returns
E(x) = −log p̃(x) (lower is more likely). Nothing else is required.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ebm_cli.energies.base import Truth


class QuadraticMLP(nn.Module):
    """A learnable energy: E(x) = ‖x‖² / (2 s²) + MLP(x).

    The quadratic term (a Gaussian "prior" of scale s = ``prior_scale``) keeps exp(−E)
    normalisable whatever the MLP does far from the data. ``event_shape`` is optional: because
    the constructor declares a parameter of that name, the runner passes the data's shape.
    """

    def __init__(self, event_shape: tuple[int, ...], width: int = 64,
                 prior_scale: float = 3.0) -> None:
        super().__init__()
        if not prior_scale > 0:  # refused in one line naming this class and the message
            raise ValueError(f"energy.prior_scale must be > 0, got {prior_scale}")
        d = math.prod(event_shape)
        self.prior_scale = prior_scale
        self.net = nn.Sequential(nn.Linear(d, width), nn.SiLU(), nn.Linear(width, width),
                                 nn.SiLU(), nn.Linear(width, 1))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)  # [B, D]
        quadratic = flat.square().sum(1) / (2 * self.prior_scale**2)  # ‖x‖²/(2s²)  [B]
        return quadratic + self.net(flat).squeeze(1)  # E(x)  [B]


class ShiftedGaussian(nn.Module):
    """A fixed energy that knows its truth: E(x) = ‖x − m‖² / (2σ²), m = (shift, …, shift).

    ``event_shape`` (an attribute) tells a sampling run (``trainer=none``) the shape of one x;
    ``truth()`` declares exact facts, so the run reports mean/covariance errors and an MMD to
    exact draws.
    """

    def __init__(self, dim: int = 2, shift: float = 1.0, sigma: float = 0.5) -> None:
        super().__init__()
        self.event_shape = (dim,)
        self.sigma = sigma
        self.register_buffer("m", torch.full((dim,), float(shift)))  # [D], follows .to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.m).square().sum(1) / (2 * self.sigma**2)  # [B]

    def truth(self) -> Truth:
        d = self.m.shape[0]
        # Z = ∫ exp(−E) dx = (2πσ²)^(D/2)
        log_z = 0.5 * d * math.log(2 * math.pi * self.sigma**2)
        half = 5 * self.sigma

        def sample(n: int, generator: torch.Generator) -> Tensor:  # exact draws [n, D]
            z = torch.randn(n, d, generator=generator, device=generator.device,
                            dtype=self.m.dtype)
            return self.m.to(z.device) + self.sigma * z

        return Truth(log_z=log_z, mean=self.m.clone(),
                     cov=self.sigma**2 * torch.eye(d, dtype=self.m.dtype, device=self.m.device),
                     bounds=tuple((float(v) - half, float(v) + half) for v in self.m),
                     sample=sample)
