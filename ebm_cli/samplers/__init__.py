"""MCMC samplers over batched chains: x has shape [chains, *event_shape].

What a sampler and its Info may declare (StepSizeAdaptable, MassAdaptable, Tempered; AcceptInfo,
Info, HasDivergences) is in samplers/base.py, what parallel tempering adds (Replicated, HasSwaps)
in samplers/tempering.py; ``sampler_stats`` (samplers/stats.py) turns any sampler's Info into
the statistics a run logs.
"""

from ebm_cli.samplers.base import (
    AcceptInfo,
    ChainState,
    HasDivergences,
    Info,
    MassAdaptable,
    Sampler,
    StepSizeAdaptable,
    Tempered,
    energy_and_grad,
)
from ebm_cli.samplers.stats import sampler_stats
from ebm_cli.samplers.tempering import HasSwaps, Replicated

__all__ = [
    "AcceptInfo",
    "ChainState",
    "HasDivergences",
    "HasSwaps",
    "Info",
    "MassAdaptable",
    "Replicated",
    "Sampler",
    "StepSizeAdaptable",
    "Tempered",
    "energy_and_grad",
    "sampler_stats",
]
