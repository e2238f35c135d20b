"""benchmarks/bench_trajectory.py's truth-based ESS on Rosenbrock: the exact moments and the
across-chain estimator, checked against exact draws (where ESS is known) within Monte Carlo
error. float64, under a second."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType

import torch

from ebm_cli.energies.analytic import Rosenbrock

Z = 4.0


def bench() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_trajectory.py"
    spec = importlib.util.spec_from_file_location("bench_trajectory", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rosenbrock_moments_agree_with_the_energy_and_with_exact_draws() -> None:
    b = bench()
    energy = Rosenbrock(a=1.0, b=100.0, temperature=2.0)
    truth = b.rosenbrock_moments(energy)
    # x₁, x₂ against the energy's own closed form (energies/analytic.py)
    torch.testing.assert_close(truth.mean[:2], energy.mean)
    torch.testing.assert_close(truth.var[:2], energy.cov.diagonal())
    # all four against 10⁶ exact draws: mean and variance within Z standard errors
    f = b.rosenbrock_functions(energy.sample(1_000_000, torch.Generator().manual_seed(0)))
    n = f.shape[0]
    mean_se = f.std(0) / math.sqrt(n)
    assert ((f.mean(0) - truth.mean).abs() < Z * mean_se).all(), (f.mean(0), truth.mean)
    d2 = (f - f.mean(0)).square()
    var_se = d2.std(0) / math.sqrt(n)
    assert ((d2.mean(0) - truth.var).abs() < Z * var_se).all(), (d2.mean(0), truth.var)


def test_truth_ess_is_n_for_independent_draws_and_one_for_a_chain_that_never_moves() -> None:
    b = bench()
    energy = Rosenbrock(a=1.0, b=100.0, temperature=2.0)
    truth = b.rosenbrock_moments(energy)
    g = torch.Generator().manual_seed(1)
    chains, n = 4096, 16
    draws = energy.sample(chains * n, g).view(n, chains, 2)  # n i.i.d. exact draws per chain
    means = torch.stack([b.rosenbrock_functions(x) for x in draws]).mean(0)  # [C, 4]
    ess, rel_se = b.truth_ess(means, truth)
    assert ((ess / n - 1).abs() < Z * rel_se).all(), (ess, rel_se)
    # x₁'s chain means are exactly normal: rel SE ≈ √(2/C) (its own noise ≈ 0.03 of it)
    assert abs(float(rel_se[0]) / math.sqrt(2 / chains) - 1) < 0.1, rel_se
    stuck = b.rosenbrock_functions(draws[0])  # every draw equal to the chain's first
    ess, rel_se = b.truth_ess(stuck, truth)
    assert ((ess - 1).abs() < Z * rel_se).all(), (ess, rel_se)
