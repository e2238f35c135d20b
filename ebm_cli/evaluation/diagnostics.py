"""MCMC diagnostics of batched chains: ESS, R-hat, Monte Carlo standard errors, moment errors.

ESS and R-hat come from ``arviz_stats.base.array_stats``: rank-normalised bulk and tail ESS and
split R-hat (Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021), and nested R-hat over
superchains, on split chains (Margossian, Hoffman, Sountsov, Riou-Durand, Vehtari & Gelman
2024). The verdict drawn from them is in evaluation/convergence.py. Traces are [T, B, *event]:
draws × chains, as a run loop stacks ChainState.x over steps. These functions read tensors back
to the host: call them at evaluation time, not inside a sampler step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor


def _array_stats() -> Any:
    """arviz_stats' array functions, imported on first use: the import pulls in scipy (≈ 1.7 s
    of CPU), which every ``ebm-train`` start, ``--help`` and refused input would pay otherwise."""
    from arviz_stats.base import array_stats

    return array_stats


def as_draws(trace: Tensor | np.ndarray) -> np.ndarray:
    """[T, B, *event] -> float64 numpy [T, B, D] (D = flattened event, 1 for a scalar trace)."""
    if isinstance(trace, Tensor):
        trace = trace.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(trace, dtype=np.float64)
    if a.ndim < 2:
        raise ValueError(f"a trace must be [draws, chains, *event], got shape {a.shape}")
    return a.reshape(a.shape[0], a.shape[1], -1)


def chain_diagnostics(trace: Tensor | np.ndarray) -> dict[str, float | np.ndarray]:
    """Bulk ESS and rank-normalised split R-hat per coordinate of a trace [T, B, *event].

    Returns ess_bulk [D] (numpy), ess_bulk_min, rhat [D] (numpy) and rhat_max.
    """
    a = as_draws(trace)
    ess = np.asarray(_array_stats().ess(a, chain_axis=1, draw_axis=0, method="bulk"))
    rhat = np.asarray(_array_stats().rhat(a, chain_axis=1, draw_axis=0, method="rank"))
    return {
        "ess_bulk": ess,
        "ess_bulk_min": float(ess.min()),
        "rhat": rhat,
        "rhat_max": float(rhat.max()),
    }


def ess_mean(trace: Tensor | np.ndarray) -> np.ndarray:
    """ESS for the mean of each coordinate of a trace [T, B, *event] -> [D] (no rank
    normalisation: the ESS that sets the Monte Carlo error of an average, e.g. of an indicator).
    """
    a = as_draws(trace)
    return np.asarray(_array_stats().ess(a, chain_axis=1, draw_axis=0, method="mean"))


def ess_tail(trace: Tensor | np.ndarray, prob: float = 0.05) -> np.ndarray:
    """Tail ESS of each coordinate of a trace [T, B, *event] -> [D]: the smaller of the ESS of
    the ``prob`` and ``1 − prob`` quantiles, i.e. of the indicators 1{x ≤ q} (Vehtari et al.
    2021; 5 % / 95 % by default). Low when the chains explore the tails poorly even where the
    bulk ESS is high (heavy tails, a funnel's neck).
    """
    a = as_draws(trace)
    lo, hi = sorted((prob, 1.0 - prob))
    return np.asarray(_array_stats().ess(a, chain_axis=1, draw_axis=0, method="tail",
                                         prob=(lo, hi)))


def superchain_ids(n_chains: int, n_superchains: int) -> np.ndarray:
    """Superchain of each chain [n_chains] (int): K = n_superchains blocks of M = n_chains // K
    consecutive chains; the n_chains − K·M chains left over get −1 (left out of nested R-hat)."""
    if not 2 <= n_superchains <= n_chains:
        raise ValueError(f"nested R-hat needs 2 <= superchains <= chains, got {n_superchains} "
                         f"superchains of {n_chains} chains")
    m = n_chains // n_superchains
    ids = np.full(n_chains, -1, dtype=np.int64)
    ids[: m * n_superchains] = np.arange(m * n_superchains) // m
    return ids


def nested_rhat(trace: Tensor | np.ndarray, n_superchains: int) -> np.ndarray:
    """Nested R-hat of each coordinate of a trace [T, B, *event] -> [D].

    The chains are grouped into K superchains of M consecutive chains (``superchain_ids``).
    With chain means x̄_{km}, superchain means x̄_k, within-chain variances s²_{km}:
    B̂_ν = Var_k(x̄_k), Ŵ_ν = mean_k[Var_m(x̄_{km}) + mean_m s²_{km}], R̂_ν = √(1 + B̂_ν / Ŵ_ν)
    (Margossian et al. 2024, eqs. 6–8), on the draws of split chains (arviz
    ``rhat_nested(method="split")``), not rank-normalised, as the paper defines it: the
    rank-normalised version costs 16× as much (9 s against 0.6 s for 256 chains × 500 draws ×
    100 coordinates), and the convergence rule's rank-normalised R-hat covers heavy tails.
    R̂_ν − 1 ≈ 1/(2·ESS of one superchain) at stationarity, however short each chain is, so it
    suits many short chains; but the between-chain spread inside a superchain counts as
    within-superchain variance: with independently started chains, chains stuck apart raise
    R̂_ν² − 1 ≈ B̂_ν/Ŵ_ν ≈ (B/M)/(W + B) by at most ~1/M (M chains per superchain, B and W the
    between- and within-chain variances) however far apart they are (tests/test_diagnostics.py).
    """
    a = as_draws(trace)
    ids = superchain_ids(a.shape[1], n_superchains)
    keep = ids >= 0
    return np.asarray(_array_stats().rhat_nested(
        a[:, keep], superchain_ids=ids[keep], chain_axis=1, draw_axis=0, method="split"))


def mcse_mean(trace: Tensor | np.ndarray) -> np.ndarray:
    """Monte Carlo standard error of the mean of each coordinate, sd/√ESS_mean -> [D].

    ESS here is the (non-rank-normalised) ESS for the mean, the one that sets the error of
    an average (arviz ``mcse(method="mean")``).
    """
    a = as_draws(trace)
    return np.asarray(_array_stats().mcse(a, chain_axis=1, draw_axis=0, method="mean"))


def mean_cov_error(
    samples: Tensor | np.ndarray, mean: Tensor | np.ndarray, cov: Tensor | np.ndarray
) -> dict[str, float]:
    """Largest absolute errors of the sample mean and covariance against the truth.

    samples [N, *event] (flattened to [N, D]), mean [D], cov [D, D] -> {"mean_error",
    "cov_error"} as floats (max over coordinates / entries).
    """
    def to_np(v: Tensor | np.ndarray) -> np.ndarray:
        if isinstance(v, Tensor):
            v = v.detach().to("cpu", torch.float64).numpy()
        return np.asarray(v, dtype=np.float64)

    x = to_np(samples)
    x = x.reshape(x.shape[0], -1)
    mu, sigma = to_np(mean).reshape(-1), to_np(cov)
    sigma = sigma.reshape(mu.size, mu.size)
    x_mean = x.mean(0)
    x_cov = np.cov(x, rowvar=False).reshape(mu.size, mu.size)
    return {
        "mean_error": float(np.abs(x_mean - mu).max()),
        "cov_error": float(np.abs(x_cov - sigma).max()),
    }
