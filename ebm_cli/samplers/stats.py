"""What any sampler's transitions say about its health: 0-d statistics of an Info, no host sync.

One function for every caller (``trainer=none`` and MLE training alike) and every sampler, the
user's own included: an Info needs only ``accept_prob`` and ``is_accepted`` (AcceptInfo);
statistics that need more are logged where the Info declares them (HasDivergences, and
HasSwaps for parallel tempering: samplers/tempering.py).
"""

from __future__ import annotations

from collections.abc import Sequence

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
    stats = {"sampler/acceptance_rate": info.accept_prob.mean()}
    if declares(info, HasDivergences):
        stats.update(divergence_stats(info.energy_error, info.is_divergent))
    if declares(info, HasSwaps):
        stats.update(swap_stats(info.swap_prob, info.replica_accept_prob))
    return stats


def swap_rate_key(k: int) -> str:
    """The statistic of the exchange between temperatures k and k+1 (0 is T = 1)."""
    return f"sampler/swap_rate/{k}_{k + 1}"


def swap_stats(swap_prob: Tensor, replica_accept_prob: Tensor) -> dict[str, Tensor]:
    """Per neighbouring pair (k, k+1) the chain mean of the exchange's min(1, α), from
    swap_prob [K−1, B] (``swap_rate_key``), and per temperature k the base move's mean
    acceptance, from replica_accept_prob [K, B] (``sampler/replica_acceptance/k``); 0-d each.
    """
    rates = swap_prob.mean(1)  # [K−1]
    accept = replica_accept_prob.mean(1)  # [K]
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


def transitions_stats(infos: Sequence[AcceptInfo]) -> dict[str, Tensor]:
    """``sampler_stats`` of k transitions of one sampler, averaged key-wise (MLE's k steps per
    update): from the fields stacked [k, B], a few ops whatever k (CD-40: 40× fewer than one
    ``sampler_stats`` per transition); per transition where the Info declares HasSwaps."""
    first = infos[0]
    if len(infos) == 1 or declares(first, HasSwaps):
        return mean_stats([sampler_stats(info) for info in infos])
    stats = {"sampler/acceptance_rate": torch.stack([i.accept_prob for i in infos]).mean()}
    if declares(first, HasDivergences):
        stats.update(divergence_stats(torch.stack([i.energy_error for i in infos]),
                                      torch.stack([i.is_divergent for i in infos])))
    return stats


def mean_stats(stats: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Key-wise mean of the statistics of k transitions (e.g. MLE's k sampler steps per update)."""
    total = dict(stats[0])
    for more in stats[1:]:
        for key, value in more.items():
            total[key] = total[key] + value
    n = len(stats)
    return total if n == 1 else {key: value / n for key, value in total.items()}
