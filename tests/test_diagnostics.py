"""ESS / R-hat / MCSE wrappers and moment errors (ebm_cli/evaluation/diagnostics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ebm_cli.evaluation.diagnostics import chain_diagnostics, ess_mean, mcse_mean, mean_cov_error


def ar1(t: int, b: int, d: int, phi: float, seed: int) -> np.ndarray:
    """Stationary AR(1) chains x' = φx + √(1−φ²) ξ, [T, B, D]; ESS = N(1−φ)/(1+φ)."""
    rng = np.random.default_rng(seed)
    x = np.empty((t, b, d))
    x[0] = rng.standard_normal((b, d))
    for i in range(1, t):
        x[i] = phi * x[i - 1] + math.sqrt(1 - phi**2) * rng.standard_normal((b, d))
    return x


def test_iid_draws_have_full_ess_and_unit_rhat() -> None:
    trace = torch.from_numpy(np.random.default_rng(0).standard_normal((200, 64, 2, 3)))
    out = chain_diagnostics(trace)
    assert out["ess_bulk"].shape == (6,)
    n = 200 * 64
    assert 0.85 * n < out["ess_bulk_min"] <= out["ess_bulk"].max() < 1.15 * n
    assert out["rhat_max"] < 1.01
    assert isinstance(out["ess_bulk_min"], float) and isinstance(out["rhat_max"], float)


def test_autocorrelated_chains_have_the_ar1_ess() -> None:
    """φ = 0.8: ESS = N·0.2/1.8 = N/9 (within the estimator's ~10 % spread)."""
    trace = ar1(400, 64, 1, 0.8, 1)
    expected = 400 * 64 / 9
    assert float(ess_mean(trace)[0]) == pytest.approx(expected, rel=0.15)
    assert chain_diagnostics(trace)["ess_bulk_min"] == pytest.approx(expected, rel=0.15)
    # MCSE of the mean of unit-variance draws = 1/√ESS
    assert float(mcse_mean(trace)[0]) == pytest.approx(1 / math.sqrt(expected), rel=0.1)


def test_chains_stuck_apart_have_large_rhat() -> None:
    trace = np.random.default_rng(2).standard_normal((100, 8, 1))
    trace[:, :4] += 3.0  # half the chains in another place
    assert chain_diagnostics(trace)["rhat_max"] > 1.5


def test_mean_cov_error_of_an_exact_sample() -> None:
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]], dtype=torch.float64)
    # sample mean 0; unbiased covariance diag(2/3, 8/3)
    out = mean_cov_error(x, torch.tensor([0.5, 0.0]), torch.diag(torch.tensor([1.0, 2.0])))
    assert out["mean_error"] == pytest.approx(0.5)
    assert out["cov_error"] == pytest.approx(8 / 3 - 2)


def test_mean_cov_error_flattens_events_and_accepts_numpy() -> None:
    rng = np.random.default_rng(3)
    x = rng.standard_normal((20000, 2, 2))
    out = mean_cov_error(x, np.zeros(4), np.eye(4))
    assert out["mean_error"] < 4 / math.sqrt(20000)  # 4 standard errors of a unit-variance mean
    assert out["cov_error"] < 4 * math.sqrt(2 / 20000)  # sd of a variance estimate √(2/N)


def test_a_trace_needs_draws_and_chains() -> None:
    with pytest.raises(ValueError, match=r"\[draws, chains, \*event\]"):
        chain_diagnostics(np.zeros(10))
