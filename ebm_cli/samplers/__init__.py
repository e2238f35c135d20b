"""MCMC samplers over batched chains: x has shape [chains, *event_shape]."""

from ebm_cli.samplers.base import ChainState, Sampler, energy_and_grad

__all__ = ["ChainState", "Sampler", "energy_and_grad"]
