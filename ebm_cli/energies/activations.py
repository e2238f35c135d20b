"""The activation of the MLP and ConvNet energies: a short name, or any nn.Module by _target_.

``energy.activation`` takes one of the short names of ``ACTIVATIONS`` (the one table of them,
for the configs' convenience), or a Hydra node building any activation module, so a new one
needs no entry here (``_target_`` stays the registry, house rule 2):

    activation: {_target_: torch.nn.Mish}                                   # a module
    activation: {_target_: torch.nn.LeakyReLU, _partial_: true, negative_slope: 0.1}  # a factory

A module given as an instance is copied for every layer (a learnable activation such as PReLU
gets its own parameters per layer); a factory (a class or partial) is called once per layer.
A checkpoint stores plain values only (house rule 10), so ``energy=checkpoint`` can rebuild an
energy whose activation is a short name, not one given as a ``_target_`` node.
Smooth activations (SiLU, ELU, softplus, tanh) suit gradient-based samplers; ReLU's energy has
a piecewise-constant gradient.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

from torch import nn

# energy.activation short name -> the module class (or factory) it builds: the one table.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "leaky_relu": functools.partial(nn.LeakyReLU, 0.2),
}

# What energy.activation may be: a short name, a module, or a factory of modules.
Activation = str | nn.Module | Callable[[], nn.Module]


def make_activation(activation: Activation, key: str = "energy.activation") -> nn.Module:
    """A fresh activation module for one layer from a short name (ACTIVATIONS), a module
    (deep-copied) or a factory (called); anything else is refused naming ``key``."""
    if isinstance(activation, str):
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"{key}={activation!r} is not one of {', '.join(ACTIVATIONS)} "
                f"(or a _target_ node building a torch.nn.Module)"
            )
        return ACTIVATIONS[activation]()
    if isinstance(activation, nn.Module):
        return copy.deepcopy(activation)
    module = activation() if callable(activation) else None
    if not isinstance(module, nn.Module):
        raise ValueError(f"{key} must be one of {', '.join(ACTIVATIONS)} or build a "
                         f"torch.nn.Module, got {activation!r}")
    return module
