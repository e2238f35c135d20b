"""MMD, mode masses and the quadrature convergence check (ebm_cli/evaluation)."""

from __future__ import annotations

import math
import statistics

import torch
from torch import Tensor, nn

from ebm_cli.data.toy2d import gaussian_mixture_log_prob, two_gaussians
from ebm_cli.energies.mlp import MLPEnergy
from ebm_cli.evaluation.mmd import mmd
from ebm_cli.evaluation.modes import mode_masses, mode_weight_error, sample_mode_fractions
from ebm_cli.evaluation.quadrature import log_partition_converged
from ebm_cli.evaluation.summary import evaluate

torch.set_num_threads(1)

MEANS = torch.tensor([[-2.0, 0.0], [2.0, 0.0]])


class TrueEnergy(nn.Module):
    """E = −log p of a Gaussian mixture (normalised, so log Z = 0)."""

    def __init__(self, means: Tensor, std: float, weights: Tensor) -> None:
        super().__init__()
        self.means, self.std, self.weights = means, std, weights

    def forward(self, x: Tensor) -> Tensor:
        return -gaussian_mixture_log_prob(x, self.means, self.std, self.weights)


def _mixture(n: int, weights: Tensor, g: torch.Generator, std: float = 0.5) -> Tensor:
    k = torch.multinomial(weights, n, replacement=True, generator=g)
    return MEANS[k] + std * torch.randn(n, 2, generator=g)


def test_mmd_matches_a_direct_double_sum() -> None:
    # Unbiased MMD² (Gretton et al. 2012, eq. 3) written out term by term on a few points.
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 2, generator=g), torch.randn(4, 2, generator=g) + 0.5
    hs = [0.5, 2.0]

    def k(a: Tensor, b: Tensor) -> float:
        d2 = float(((a.double() - b.double()) ** 2).sum())
        return sum(math.exp(-d2 / (2 * h * h)) for h in hs)

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    assert abs(float(mmd(x, y, bandwidths=hs)) - (kxx + kyy - 2 * kxy)) < 1e-10


def test_mmd_is_zero_for_one_distribution_and_positive_for_a_single_gaussian() -> None:
    # Null spread from random splits of a pooled sample (a permutation test): the same
    # distribution must sit within 4 null sds of 0; a single Gaussian fitted to two_gaussians
    # (same mean and covariance) must be far outside it.
    g = torch.Generator().manual_seed(1)
    w = torch.tensor([0.5, 0.5])
    n = 500
    x, y = _mixture(n, w, g), _mixture(n, w, g)
    pooled = torch.cat([x, y])
    null = torch.stack([
        mmd(*pooled[torch.randperm(2 * n, generator=g)].split(n)) for _ in range(20)
    ])
    sd = float(null.std())
    same = float(mmd(x, y))
    cov = torch.cov(x.T)
    single = x.mean(0) + torch.randn(n, 2, generator=g) @ torch.linalg.cholesky(cov).T
    different = float(mmd(single, y))
    assert abs(same) < 4 * sd
    assert different > 20 * sd


def test_mmd_subsamples_reproducibly() -> None:
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(3000, 2, generator=g), torch.randn(2500, 2, generator=g)
    a = mmd(x, y, max_points=300)
    b = mmd(x, y, max_points=300)
    c = mmd(x, y, max_points=300, generator=torch.Generator().manual_seed(5))
    assert float(a) == float(b)
    assert float(a) != float(c)


def test_mode_masses_of_the_true_energy_match_the_weights() -> None:
    # Each component leaks Φ(−4) ≈ 3e-5 of its mass into the other cell (its mean is 4 sds
    # from the boundary x = 0) and the box cuts ≲ 1e-5; midpoint quadrature of a Gaussian at
    # spacing ≈ σ/6 is exact to far below that. Tolerance 1e-3 covers all three.
    ds = two_gaussians(weights=(0.3, 0.7))
    w = torch.tensor([0.3, 0.7])
    masses = mode_masses(TrueEnergy(MEANS, 0.5, w), MEANS, ds.bounds, n_grid=200)
    assert torch.allclose(masses, w.double(), atol=1e-3)
    assert float(mode_weight_error(masses, w)) < 1e-3


def test_sample_mode_fractions_match_the_weights() -> None:
    # Binomial sd √(w(1−w)/N) per mode; tolerance 4 sds.
    g = torch.Generator().manual_seed(3)
    w = torch.tensor([0.3, 0.7])
    n = 20000
    frac = sample_mode_fractions(_mixture(n, w, g), MEANS)
    assert torch.all((frac - w.double()).abs() < 4 * torch.sqrt(w * (1 - w) / n).double())


def test_log_partition_converges_at_the_default_grid() -> None:
    ds = two_gaussians()
    true = TrueEnergy(MEANS, 0.5, torch.tensor([0.5, 0.5]))
    assert float(log_partition_converged(true, ds.bounds)) < 1e-3
    torch.manual_seed(0)
    assert float(log_partition_converged(MLPEnergy((2,), 128, 3), ds.bounds)) < 1e-3


def test_kl_standard_error_matches_the_spread_over_test_sets() -> None:
    # A near model (mixture with std 0.55 and weights 0.45/0.55 for the data's 0.5, 0.5/0.5): its
    # KL varies with the test set, far less than its NLL does (the unpaired sd(E)/√N would give a
    # ratio ≈ 0.23 here, so the pairing is what this checks). Over R = 40 independent test sets
    # of N = 300, the sd of kl should equal the mean reported kl_se; the sd of an sd from R
    # normal draws has relative error ≈ 1/√(2(R−1)) ≈ 0.11, so 4 of those bound the ratio to
    # [0.55, 1.45].
    model = TrueEnergy(MEANS, 0.55, torch.tensor([0.45, 0.55]))
    kls, ses = [], []
    for seed in range(40):
        ds = two_gaussians(n_train=1, n_test=300, seed=seed)
        m = evaluate(model, ds, ds.test[:50], grid=60, mmd_points=50,
                     generator=torch.Generator().manual_seed(seed))
        kls.append(m["kl"])
        ses.append(m["kl_se"])
    ratio = statistics.stdev(kls) / statistics.mean(ses)
    assert 0.55 < ratio < 1.45, ratio
    # The true energy's paired differences are the constant log Z = 0 (quadrature error only).
    ds = two_gaussians(n_train=1, n_test=300)
    m = evaluate(TrueEnergy(MEANS, 0.5, torch.tensor([0.5, 0.5])), ds, ds.test[:50], grid=100,
                 mmd_points=50, generator=torch.Generator().manual_seed(0))
    assert abs(m["kl"]) < 1e-3 and m["kl_se"] < 1e-6 and m["test_nll_se"] > 0.01


def test_eval_restarts_weigh_modes_that_a_local_sampler_cannot_cross() -> None:
    """draw_samples with independence-MH restarts from a fitted Gaussian (eval.restarts): chains
    that all start in the left mode of a 0.3/0.7 mixture end in the right proportions; without
    restarts RW-MH (s = 0.3) cannot cross the 32-nat barrier between modes 8 apart."""
    from ebm_cli.energies.analytic import GaussianMixture
    from ebm_cli.evaluation.sampling import draw_samples
    from ebm_cli.samplers.mh import RandomWalkMH
    from ebm_cli.trainers.buffer import DataNoise

    energy = GaussianMixture(means=((-4.0, 0.0), (4.0, 0.0)), std=0.5, weights=(0.3, 0.7))
    g = torch.Generator().manual_seed(0)
    data = energy.sample(4000, g).float()
    n = 2000
    x0 = torch.tensor([-4.0, 0.0]) + 0.1 * torch.randn(n, 2, generator=g)
    fitted = DataNoise(data, "gaussian", 1.0, "eval.restarts")

    sampler = RandomWalkMH(step_size=0.3)
    stuck, _ = draw_samples(energy, sampler, x0, 0, 200, g)
    mixed, _ = draw_samples(energy, sampler, x0, 0, 200, g, fitted)
    assert (stuck[:, 0] > 0).float().mean() < 0.01
    # The restart chain is uniformly ergodic (p/q ≤ M ≈ 6.4 here, so ≤ 0.85^200 from the start
    # after 200 steps) and the chains are independent: the right-mode fraction is binomial,
    # sd √(0.21/2000) = 0.010; 0.045 is 4.4 sd.
    assert abs((mixed[:, 0] > 0).float().mean().item() - 0.7) < 0.045


def test_restart_chains_is_reinitialise_then_init_without_the_second_evaluation() -> None:
    """restart_chains on a state with current energies gives, for HMC (E and ∇E cached), RW-MH
    (E only) and ULA (nothing cached), the state that reinitialise then the sampler's init
    give from the same generator state: the same chains, energies and gradients (float64, so
    the batch composition of the evaluations moves nothing beyond 1e-12), the same draws used,
    and both proposals accepted and rejected (at least 20 % of the 512 chains each)."""
    from ebm_cli.energies.analytic import GaussianMixture
    from ebm_cli.samplers.hmc import HMC
    from ebm_cli.samplers.langevin import Langevin
    from ebm_cli.samplers.mh import RandomWalkMH
    from ebm_cli.trainers.buffer import DataNoise, reinitialise, restart_chains

    energy = GaussianMixture(means=((-2.0, 0.0), (2.0, 0.0)), std=0.5, weights=(0.3, 0.7))
    g = torch.Generator().manual_seed(1)
    noise = DataNoise(energy.sample(2000, g), "gaussian", 1.0, "eval.restarts")
    x = energy.sample(512, g) + 0.5 * torch.randn(512, 2, generator=g, dtype=torch.float64)
    for sampler in (HMC(step_size=0.2, n_leapfrog=3), RandomWalkMH(step_size=0.3),
                    Langevin(step_size=0.01)):
        state = sampler.init(energy, x)
        state, _ = sampler.step(energy, state, g)  # the cache as a step leaves it
        seed = g.get_state()
        fast = restart_chains(state, noise, 1.0, g, energy, sampler.init)
        after = g.get_state()
        g.set_state(seed)
        moved, restarted = reinitialise(state.x, noise, 1.0, g, energy)
        slow = sampler.init(energy, moved)
        assert torch.equal(g.get_state(), after)  # the same random numbers, no more
        assert 0.2 < restarted.double().mean().item() < 0.8
        assert torch.equal(fast.x, slow.x)
        for got, want in ((fast.energy, slow.energy), (fast.grad, slow.grad)):
            assert (got is None) == (want is None)
            if want is not None:
                assert got.shape == want.shape and (got - want).abs().max().item() <= 1e-12


def test_eval_chains_keep_a_thinned_trace_and_report_their_convergence() -> None:
    """draw_samples(trace=ChainTrace(...)): the first `chains` chains, ≤ max_dims evenly spaced
    coordinates, ⌈steps/max_draws⌉-thinned ending on the last step; eval_-prefixed verdict. HMC
    on a standard 5-D Gaussian from N(0, I) (already stationary) converges; RW-MH with tiny
    steps from a point 5 sd away does not, and R-hat says so."""
    from ebm_cli.energies.analytic import CorrelatedGaussian
    from ebm_cli.evaluation.sampling import ChainTrace, draw_samples
    from ebm_cli.samplers.hmc import HMC
    from ebm_cli.samplers.mh import RandomWalkMH

    g = torch.Generator().manual_seed(0)
    energy = CorrelatedGaussian(dim=5, correlation=0.0)
    trace = ChainTrace(chains=64, max_draws=120, max_dims=3)
    x0 = torch.randn(80, 5, generator=g)
    last, _ = draw_samples(energy, HMC(step_size=0.5, n_leapfrog=3), x0, 0, 240, g, trace=trace)
    assert len(trace.draws) == 120 and trace.draws[0].shape == (64, 3)  # every 2nd of 240
    assert torch.equal(trace.draws[-1], last[:64, [0, 2, 4]])
    m = trace.metrics()
    assert m["eval_converged"] == 1.0 and m["eval_divergences"] == 0.0
    assert m["eval_rhat_max"] < 1.01 and m["eval_superchains"] == 16.0

    stuck = ChainTrace(chains=64, max_draws=50)
    draw_samples(energy, RandomWalkMH(step_size=0.01), torch.full((64, 5), 5.0), 0, 50, g,
                 trace=stuck)
    m = stuck.metrics("eval_")
    assert m["eval_converged"] == 0.0 and m["eval_rhat_max"] > 1.01
    assert "eval_divergences" not in m  # RW-MH reports none
