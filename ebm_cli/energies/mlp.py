"""A fully connected energy network E_θ: R^D -> R."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

ACTIVATIONS = ("silu", "elu", "tanh", "relu", "softplus", "gelu", "leaky_relu")


def make_activation(name: str) -> nn.Module:
    """The nn activation module called ``name`` (one of ACTIVATIONS)."""
    modules = {
        "silu": nn.SiLU,
        "elu": nn.ELU,
        "tanh": nn.Tanh,
        "relu": nn.ReLU,
        "softplus": nn.Softplus,
        "gelu": nn.GELU,
        "leaky_relu": lambda: nn.LeakyReLU(0.2),
    }
    if name not in modules:
        raise ValueError(f"energy.activation={name!r} is not one of {', '.join(ACTIVATIONS)}")
    return modules[name]()


class MLPEnergy(nn.Module):
    """E(x) = MLP(flatten(x)), x [B, *event] -> energy [B].

    ``depth`` hidden layers of ``width`` units. Optional spectral normalisation of every linear
    layer bounds its Lipschitz constant (Miyato et al. 2018), which keeps MCMC-trained energies
    smooth. No batch normalisation: it would couple the chains of a batch.
    """

    def __init__(
        self,
        event_shape: Sequence[int] = (2,),
        width: int = 128,
        depth: int = 3,
        activation: str = "silu",
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


