"""What any sampler's transitions say about its health: 0-d statistics of an Info, no host sync.

One function for every caller (``trainer=none`` and MLE training alike) and every sampler, the
user's own included: an Info needs only ``accept_prob`` and ``is_accepted`` (AcceptInfo);
statistics that need more are logged where the Info declares them (HasDivergences, and
HasSwaps for parallel tempering: samplers/tempering.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ebm_cli.samplers.base import AcceptInfo, HasDivergences, declares
from ebm_cli.samplers.tempering import HasSwaps


def sampler_stats(info: AcceptInfo) -> dict[str, Tensor]:
    """0-d statistics of one transition of B chains:

    ``sampler/acceptance_rate`` = mean min(1, α) (finite: a NaN or non-finite α counts as 0);
    where the Info declares HasDivergences (HMC), ``divergence_stats`` as well; where it
    declares HasSwaps (parallel tempering), ``swap_stats``.
    """
    return transitions_stats([info])


def transitions_stats(infos: Sequence[AcceptInfo]) -> dict[str, Tensor]:
    """``sampler_stats`` of k transitions of one sampler, each statistic the mean over the k
    (MLE's k steps per update), from the fields stacked [k, ...]: a few ops whatever k (CD-40:
    40× fewer than one ``sampler_stats`` per transition)."""
    first = infos[0]

    def field(read: Callable[[Any], Tensor]) -> Tensor:  # [B, ...], or [k, B, ...] stacked
        return read(first) if len(infos) == 1 else torch.stack([read(i) for i in infos])

    stats = {"sampler/acceptance_rate": field(lambda i: i.accept_prob).mean()}
    if declares(first, HasDivergences):
        stats.update(divergence_stats(field(lambda i: i.energy_error),
                                      field(lambda i: i.is_divergent)))
    if declares(first, HasSwaps):
        stats.update(swap_stats(field(lambda i: i.swap_prob),
                                field(lambda i: i.replica_accept_prob)))
    return stats


def swap_rate_key(k: int) -> str:
    """The statistic of the exchange between temperatures k and k+1 (0 is T = 1)."""
    return f"sampler/swap_rate/{k}_{k + 1}"


def swap_stats(swap_prob: Tensor, replica_accept_prob: Tensor) -> dict[str, Tensor]:
    """Per neighbouring pair (k, k+1) the chain mean of the exchange's min(1, α), from
    swap_prob [K−1, B] (``swap_rate_key``), and per temperature k the base move's mean
    acceptance, from replica_accept_prob [K, B] (``sampler/replica_acceptance/k``); 0-d each.
    Stacked over transitions ([n, K−1, B], [n, K, B]): the means over the n as well.
    """
    rates = swap_prob.mean(-1).reshape(-1, swap_prob.shape[-2]).mean(0)  # [K−1]
    accept = replica_accept_prob.mean(-1).reshape(-1, replica_accept_prob.shape[-2]).mean(0)
    stats = {swap_rate_key(k): rates[k] for k in range(rates.shape[0])}
    stats.update({f"sampler/replica_acceptance/{k}": accept[k] for k in range(accept.shape[0])})
    return stats


def divergence_stats(energy_error: Tensor, is_divergent: Tensor) -> dict[str, Tensor]:
    """Mean |ΔH| over the non-divergent transitions and the divergent fraction (0-d float64).

    energy_error ΔH [B] and is_divergent [B] bool, or [k, B] for k transitions (then the mean
    over k of each transition's figures) (|ΔH| > max_energy_error, or NaN ΔH: a
    counted rejection, house rule 4). A divergent ΔH may be ±inf or NaN, which would make a
    mean over all chains non-finite and stop the run for a transition HMC rightly rejected;
    so the mean covers the other chains (|ΔH| ≤ max_energy_error: finite by construction, 0
    when every chain diverged) and the divergences are counted instead.
    """
    ok = is_divergent.logical_not()  # [(k,) B]
    n_ok = ok.sum(-1)
    abs_error = torch.where(ok, energy_error.abs(), 0.0).double().sum(-1)  # Σ_ok |ΔH|
    return {
        "sampler/abs_energy_error": (abs_error / n_ok.clamp(min=1)).mean(),
        "sampler/divergent_fraction": is_divergent.double().mean(),
    }
