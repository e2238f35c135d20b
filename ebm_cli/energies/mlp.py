"""A fully connected energy network E_θ: R^D -> R."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from ebm_cli.energies.activations import Activation, make_activation


class MLPEnergy(nn.Module):
    """E(x) = MLP(flatten(x)), x [B, *event] -> energy [B].

    ``depth`` hidden layers of ``width`` units, each followed by ``activation`` (a short name
    or any nn.Module, see energies/activations.py). Optional spectral normalisation of every
    linear layer bounds its Lipschitz constant (Miyato et al. 2018), which keeps MCMC-trained
    energies smooth. No batch normalisation: it would couple the chains of a batch.
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (2,),
        width: int = 128,
        depth: int = 3,
        activation: Activation = "silu",
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ValueError(f"energy.width and energy.depth must be >= 1, got {width}, {depth}")
        self.event_shape = tuple(event_shape)
        in_dim = math.prod(self.event_shape)
        dims = [in_dim] + [width] * depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [self._linear(a, b, spectral_norm), make_activation(activation)]
        layers.append(self._linear(dims[-1], 1, spectral_norm))
        self.net = nn.Sequential(*layers)

    @staticmethod
    def _linear(a: int, b: int, sn: bool) -> nn.Module:
        layer = nn.Linear(a, b)
        return nn.utils.parametrizations.spectral_norm(layer) if sn else layer

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).squeeze(-1)  # [B]


