"""ESS / R-hat / MCSE wrappers and moment errors (ebm_cli/evaluation/diagnostics.py), and the
convergence verdict and its words (ebm_cli/evaluation/convergence.py)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal, norm

from ebm_cli.evaluation.convergence import (
    RULE,
    convergence_metrics,
    convergence_notes,
    is_converged,
)
from ebm_cli.evaluation.diagnostics import (
    chain_diagnostics,
    ess_mean,
    ess_tail,
    mcse_mean,
    mean_cov_error,
    nested_rhat,
    superchain_ids,
)


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


def test_tail_ess_is_the_ess_of_the_5_percent_indicator() -> None:
    """AR(1), φ = 0.8: 1{x ≤ q₀.₀₅} has lag-k autocorrelation (Φ₂(q, q; φᵏ) − p²)/(p(1−p)),
    Φ₂ the standard bivariate normal CDF with correlation φᵏ, so tail ESS = N/τ with
    τ = 1 + 2 Σₖ ρₖ ≈ 4.21 — larger than the bulk ESS N/9, as indicators forget faster."""
    p, phi = 0.05, 0.8
    q = norm.ppf(p)
    rho = [(multivariate_normal(cov=[[1, phi**k], [phi**k, 1]]).cdf([q, q]) - p * p)
           / (p * (1 - p)) for k in range(1, 60)]
    tau = 1 + 2 * sum(rho)
    trace = ar1(400, 64, 1, phi, 4)
    assert float(ess_tail(trace)[0]) == pytest.approx(400 * 64 / tau, rel=0.15)
    assert float(ess_tail(trace)[0]) > 1.5 * float(ess_mean(trace)[0])


def test_superchains_are_blocks_of_consecutive_chains() -> None:
    assert superchain_ids(7, 3).tolist() == [0, 0, 1, 1, 2, 2, -1]
    with pytest.raises(ValueError, match="superchains"):
        superchain_ids(4, 5)


def test_nested_rhat_passes_many_short_mixed_chains_that_rhat_fails() -> None:
    """1024 stationary chains of 20 draws (φ = 0.5): each chain alone is too short for
    R-hat (≈ 1 + 1/10), but 16 superchains of 64 agree: nested R-hat ≈ 1 + τ/(2·64·20)."""
    trace = ar1(20, 1024, 1, 0.5, 5)
    assert chain_diagnostics(trace)["rhat_max"] > 1.05
    assert 1.0 <= float(nested_rhat(trace, 16)[0]) < 1.01


def test_nested_rhat_flags_superchains_stuck_in_different_modes() -> None:
    trace = ar1(20, 1024, 1, 0.5, 6)
    mode = np.where((np.arange(1024) // 64) % 2 == 0, 3.0, -3.0)  # superchain k: ±3
    trace += mode[None, :, None]
    assert float(nested_rhat(trace, 16)[0]) > 1.5


def test_nested_rhat_sees_independently_stuck_chains_only_through_1_over_m() -> None:
    """Why the rule keeps R-hat: chains each stuck in a random one of two modes, 64 per
    superchain, give a nested R-hat near 1 while R-hat is large."""
    trace = ar1(200, 1024, 1, 0.5, 7)
    trace += np.where(np.random.default_rng(8).random(1024) < 0.5, -6.0, 6.0)[None, :, None]
    assert chain_diagnostics(trace)["rhat_max"] > 1.5
    assert float(nested_rhat(trace, 16)[0]) < 1.01


def test_well_mixed_chains_converge_by_the_rule() -> None:
    m = convergence_metrics(ar1(200, 256, 2, 0.2, 9))
    assert m["converged"] == 1.0 and m["superchains"] == 16.0
    assert m["rhat_max"] < 1.01 and m["nested_rhat_max"] < 1.01
    assert min(m["ess_bulk_min"], m["ess_tail_min"]) >= 1600
    assert all(isinstance(v, float) for v in m.values())
    (note,) = convergence_notes(m)
    assert note.startswith("the chains have converged") and "R-hat" in note


def _stuck_unequal_mixture() -> np.ndarray:
    """The issue's failing case: a 0.25/0.75 mixture, modes 12 sd apart, every chain staying in
    the mode it started in (starts 50/50): the chains put ~0.5 in the big mode."""
    trace = ar1(500, 256, 2, 0.9, 10)
    trace[:, :, 0] += np.where(np.random.default_rng(11).random(256) < 0.5, -6.0, 6.0)
    return trace


def test_chains_stuck_in_an_unequal_mixture_fail_the_rule_on_rhat() -> None:
    m = convergence_metrics(_stuck_unequal_mixture())
    assert 300 < m["ess_bulk_min"] < 600  # an ESS that reads as a pass by the old 400 count
    assert m["rhat_max"] > 1.3
    assert m["converged"] == 0.0 and not is_converged(m)
    (note,) = convergence_notes(m)
    assert note.startswith("the chains have NOT converged")
    assert f"R-hat {m['rhat_max']:.4f} (needs < 1.01)" in note
    assert "bulk ESS" in note and "needs >= 1600" in note


def test_an_undefined_diagnostic_fails_the_rule() -> None:
    trace = ar1(100, 8, 2, 0.2, 12)
    trace[:, :, 1] = 0.5  # no chain ever moves in one coordinate: R-hat is undefined (NaN)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and computing it warns of nothing
        m = convergence_metrics(trace)
    assert math.isnan(m["rhat_max"]) and m["converged"] == 0.0
    assert "R-hat undefined (needs < 1.01)" in convergence_notes(m)[0]
    finite = {k: v for k, v in m.items() if not math.isnan(v)}  # as metrics.json keeps them
    assert not is_converged(finite)
    assert "nested R-hat undefined" in convergence_notes(finite)[0]


def test_too_few_draws_cannot_be_judged() -> None:
    m = convergence_metrics(np.zeros((3, 32, 2)))
    assert m == {"superchains": 16.0, "converged": 0.0}
    assert convergence_notes(m) == ["the chains cannot be judged: R-hat and ESS need at least 4 "
                                    "draws per chain; not converged by the rule"]


def test_notes_name_each_chain_set_with_divergences_and_swap_rates() -> None:
    good = {"rhat_max": 1.001, "nested_rhat_max": 1.0, "ess_bulk_min": 5000.0,
            "ess_tail_min": 4000.0, "superchains": 16.0, "converged": 1.0}
    bad = {**good, "ess_tail_min": 900.0, "converged": 0.0}
    metrics = {**good, "divergences": 3, "swap_rate_0_1": 0.3, "swap_rate_1_2": 0.02,
               "swap_rate_min": 0.02,
               **{f"eval_{k}": v for k, v in bad.items()}, "eval_divergences": 0}
    notes = convergence_notes(metrics)
    assert notes[0].startswith("the chains have converged")
    assert notes[1].startswith("the chains had 3 divergent transitions")
    assert notes[2] == ("the evaluation chains have NOT converged: tail ESS 900 (needs >= 1600 "
                        "= 100 × 16 superchains); what is computed from these chains' draws is not "
                        "reliable")
    assert notes[3] == "the evaluation chains had no divergent transitions after warm-up"
    assert notes[4].startswith("the chains: tempering swap rates 0.02–0.3 over 2 neighbouring "
                               "pairs (slowest swap_rate_1_2); below 0.05")
    assert len(notes) == 5
    assert convergence_notes({"test_nll": 1.0}) == []
    assert "R-hat < 1.01" in RULE


@pytest.mark.slow
def test_the_rule_on_real_chains_passes_an_easy_target_and_fails_a_stuck_mixture() -> None:
    """End to end through draw_samples: default-adapted MALA on a 2-D correlated Gaussian
    (ρ = 0.5) converges by the rule; RW-MH from N(0, I) on the 0.25/0.75 mixture with modes 12 sd
    apart never crosses, puts ~half its draws in each mode, and R-hat says so."""
    from ebm_cli.energies.analytic import CorrelatedGaussian, GaussianMixture
    from ebm_cli.evaluation.sampling import ChainTrace, draw_samples
    from ebm_cli.samplers.langevin import MALA
    from ebm_cli.samplers.mh import RandomWalkMH

    g = torch.Generator().manual_seed(0)
    easy = ChainTrace(chains=256, max_draws=400)
    draw_samples(CorrelatedGaussian(dim=2, correlation=0.5), MALA(),
                 torch.randn(256, 2, generator=g), 300, 800, g, trace=easy)
    m = easy.metrics()
    assert m["eval_converged"] == 1.0, convergence_notes(m)

    mixture = GaussianMixture(means=((-3.0, 0.0), (3.0, 0.0)), std=0.5, weights=(0.25, 0.75))
    stuck = ChainTrace(chains=256, max_draws=400)
    x, _ = draw_samples(mixture, RandomWalkMH(), torch.randn(256, 2, generator=g), 300, 800, g,
                        trace=stuck)
    m = stuck.metrics()
    assert abs(float((x[:, 0] > 0).float().mean()) - 0.5) < 0.15  # not 0.75: stuck where started
    assert m["eval_converged"] == 0.0 and m["eval_rhat_max"] > 1.3
    assert "R-hat" in convergence_notes(m)[0]
