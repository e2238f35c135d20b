"""MCMC diagnostics of batched chains: ESS, R-hat, Monte Carlo standard errors, moment errors.

ESS and R-hat come from ``arviz_stats.base.array_stats`` (rank-normalised bulk ESS and split
R-hat of Vehtari, Gelman, Simpson, Carpenter & Bürkner 2021). Traces are [T, B, *event]:
draws × chains, as a run loop stacks ChainState.x over steps. These functions read tensors back
to the host: call them at evaluation time, not inside a sampler step.
"""

from __future__ import annotations

import numpy as np
import torch
from arviz_stats.base import array_stats
from torch import Tensor


def _as_draws(trace: Tensor | np.ndarray) -> np.ndarray:
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
    a = _as_draws(trace)
    ess = np.asarray(array_stats.ess(a, chain_axis=1, draw_axis=0, method="bulk"))
    rhat = np.asarray(array_stats.rhat(a, chain_axis=1, draw_axis=0, method="rank"))
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
    a = _as_draws(trace)
    return np.asarray(array_stats.ess(a, chain_axis=1, draw_axis=0, method="mean"))


def mcse_mean(trace: Tensor | np.ndarray) -> np.ndarray:
    """Monte Carlo standard error of the mean of each coordinate, sd/√ESS_mean -> [D].

    ESS here is the (non-rank-normalised) ESS for the mean, the one that sets the error of
    an average (arviz ``mcse(method="mean")``).
    """
    a = _as_draws(trace)
    return np.asarray(array_stats.mcse(a, chain_axis=1, draw_axis=0, method="mean"))


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
