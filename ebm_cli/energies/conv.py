"""A small convolutional energy E_θ: [C, H, W] -> R for image data."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ebm_cli.energies.activations import Activation, make_activation


class ConvEnergy(nn.Module):
    """E(x) = w · flatten(CNN(x)) + b, x [B, C, H, W] -> energy [B].

    ``channels`` = (c₀, c₁, …): a 3×3 convolution C -> c₀ at full resolution, then one 3×3
    convolution of stride 2 per further entry (each halves H and W, rounding up), each followed
    by ``activation`` (a short name or any nn.Module, see energies/activations.py; smooth ones
    such as SiLU suit gradient-based samplers; Du & Mordatch 2019 and Nijkamp et al. 2019 use
    similar small ConvNets). Optional spectral normalisation of every layer (Miyato et al.
    2018) bounds the Lipschitz constant of E. No batch normalisation:
    it would couple the chains of a batch.

    ``base_scale`` s (None: off) adds ‖x‖²/(2s²), so exp(−E) = exp(−CNN(x))·N(x; 0, s²I) up to
    a constant: normalisable whatever the network learns (the CNN grows at most linearly, and
    its SiLU units saturate, so without it E can stay bounded far from the data and Z = ∞;
    measured on digits: MALA chains at T = 1 ran off to |x| ~ 10³ with E pinned at 1/(2α)).
    On standardised images s = 1 matches every pixel's variance, and the untrained model is
    close to that Gaussian, which is also where training chains and AIS start.
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (1, 8, 8),
        channels: Sequence[int] = (32, 64, 64),
        activation: Activation = "silu",
        spectral_norm: bool = False,
        base_scale: float | None = None,
    ) -> None:
        super().__init__()
        if base_scale is not None and not base_scale > 0:
            raise ValueError(f"energy.base_scale must be > 0 or null, got {base_scale}")
        self.base_scale = None if base_scale is None else float(base_scale)
        self.event_shape = tuple(int(s) for s in event_shape)
        if len(self.event_shape) != 3:
            raise ValueError(
                f"energy=conv needs image data of shape [C, H, W], got event shape "
                f"{self.event_shape}; use energy=mlp for vectors"
            )
        widths = [int(c) for c in channels]
        if not widths or min(widths) < 1:
            raise ValueError(f"energy.channels must be a non-empty list of integers >= 1, "
                             f"got {list(channels)}")
        c, h, w = self.event_shape
        layers: list[nn.Module] = []
        for i, out in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [self._sn(nn.Conv2d(c, out, 3, stride=stride, padding=1), spectral_norm),
                       make_activation(activation)]
            c = out
            if stride == 2:
                h, w = (h + 1) // 2, (w + 1) // 2  # floor((n + 2·1 − 3)/2) + 1
        self.features = nn.Sequential(*layers)
        self.head = self._sn(nn.Linear(c * h * w, 1), spectral_norm)

    @staticmethod
    def _sn(layer: nn.Module, sn: bool) -> nn.Module:
        return nn.utils.parametrizations.spectral_norm(layer) if sn else layer

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], *self.event_shape)  # [B, C, H, W]
        energy = self.head(torch.flatten(self.features(x), 1)).squeeze(-1)  # [B]
        if self.base_scale is not None:  # + ‖x‖²/(2s²), the N(0, s²I) base
            energy = energy + 0.5 * x.flatten(1).square().sum(1) / self.base_scale**2
        return energy
