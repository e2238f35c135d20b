"""Tests of the analytic energies (ebm_cli.energies.analytic)."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import pytest
import torch
from torch import distributions as D

from ebm_cli.data.toy2d import rosenbrock
from ebm_cli.energies import analytic
from ebm_cli.energies.analytic import (
    Banana,
    CorrelatedGaussian,
    Funnel,
    GaussianMixture,
    Ring,
    Rosenbrock,
)
from ebm_cli.evaluation.quadrature import grid_2d

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "mixture": lambda s=(2,): GaussianMixture(s),
    "mixture_unequal": lambda s=(2,): GaussianMixture(
        s, means=[[0.0, 3.0], [1.0, -1.0], [-2.0, 0.0]], std=[0.3, 0.8, 0.5], weights=[1, 2, 1]
    ),
    "rosenbrock": lambda s=(2,): Rosenbrock(s),
    "banana": lambda s=(2,): Banana(s),
    "banana_strong": lambda s=(2,): Banana(s, b=0.1),
    "funnel": lambda s=(2,): Funnel(s),
    "funnel_mild": lambda s=(2,): Funnel(s, scale=1.0),
    "ring": lambda s=(2,): Ring(s),
    "correlated": lambda s=(2,): CorrelatedGaussian(s),
    "correlated_shifted": lambda s=(2,): CorrelatedGaussian(
        s, correlation=-0.5, scales=[1.0, 3.0], mean=[1.0, 2.0]
    ),
}


def normalised_mass(energy, n: int) -> float:
    """∫_box exp(−E − log_z) dx by the midpoint rule on an n×n grid."""
    points, area = grid_2d(energy.bounds, n)
    with torch.no_grad():
        log_p = -energy(points) - energy.log_z
    return float(torch.logsumexp(log_p, 0).exp() * area)


@pytest.mark.parametrize("name", [c for c in CASES if not c.startswith("funnel")])
def test_normalised_density_integrates_to_one(name: str) -> None:
    energy = CASES[name]()
    coarse, fine = normalised_mass(energy, 400), normalised_mass(energy, 800)
    quad_err = abs(fine - coarse)
    assert quad_err < 1e-3
    # the bounds hold ≥ 99.9% of the mass, and no more than all of it
    assert 0.999 - quad_err <= fine <= 1 + quad_err


@pytest.mark.parametrize("scale", [1.0, 3.0])
def test_funnel_integrates_to_one(scale: float) -> None:
    """In (v, u = x e^{−v/2}) the neck is not thin: ∫∫ exp(−E(v, u e^{v/2}) − log Z) e^{v/2}."""
    energy = Funnel((2,), scale=scale)
    (v0, v1), (c0, c1) = energy.bounds
    total, inside = [], []
    for n in (400, 800):
        pts, area = grid_2d(((v0, v1), (-8.0, 8.0)), n)
        v = pts[:, 0]
        x = torch.stack([v, pts[:, 1] * torch.exp(v / 2)], 1)
        dens = torch.exp(-energy(x) - energy.log_z + v / 2) * area
        total.append(float(dens.sum()))
        inside.append(float(dens[(x[:, 1] >= c0) & (x[:, 1] <= c1)].sum()))
    quad_err = abs(total[1] - total[0])
    assert abs(total[1] - 1) < 2e-4 + quad_err  # |v| ≤ 4.5 s and |u| ≤ 8 hold all but 1e-5
    assert inside[1] >= 0.999 - quad_err  # the bounds hold ≥ 99.9% of the mass


def _moment_tolerances(x: torch.Tensor, mean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """4 standard errors of the sample mean and of the sample covariance entries (i.i.d. draws)."""
    n = x.shape[0]
    c = x - mean
    prod = c[:, :, None] * c[:, None, :]  # [N, D, D]
    return 4 * c.std(0) / math.sqrt(n), 4 * prod.std(0) / math.sqrt(n)


@pytest.mark.parametrize("name", [c for c in CASES if c != "funnel"])
def test_mean_and_cov_match_exact_samples(name: str) -> None:
    energy = CASES[name]()
    x = energy.sample(100_000, torch.Generator().manual_seed(1))
    assert x.shape == (100_000, 2) and x.dtype == torch.float64
    tol_mean, tol_cov = _moment_tolerances(x, energy.mean)
    assert ((x.mean(0) - energy.mean).abs() < tol_mean).all()
    cov = (x - energy.mean).T @ (x - energy.mean) / x.shape[0]  # known mean: unbiased
    assert ((cov - energy.cov).abs() < tol_cov).all(), (cov, energy.cov)


def test_funnel_moments_at_neals_scale() -> None:
    """Var(x₁) = e^{s²/2} is too heavy-tailed to check at s = 3; check v and x₁ e^{−v/2}."""
    energy = Funnel((10,))
    n = 100_000
    x = energy.sample(n, torch.Generator().manual_seed(2))
    v, u = x[:, 0], x[:, 1:] * torch.exp(-x[:, :1] / 2)  # u ~ N(0, I) exactly
    assert abs(float(v.mean())) < 4 * 3 / math.sqrt(n)
    assert abs(float(v.var()) - 9) < 4 * 9 * math.sqrt(2 / n)  # Var(s²) = 2 s⁴ / n
    assert (u.mean(0).abs() < 4 / math.sqrt(n)).all()
    assert ((u.var(0) - 1).abs() < 4 * math.sqrt(2 / n)).all()


def test_ring_mean_radius_matches_quadrature() -> None:
    energy = Ring((2,), radius=1.0, std=0.4)  # a wide ring: ρ > 0 truncation matters
    rho = torch.linspace(0, 4, 40_001, dtype=torch.float64)[1:]
    f = rho * torch.exp(-0.5 * ((rho - 1.0) / 0.4) ** 2)
    mean_rho = float((rho * f).sum() / f.sum())
    x = energy.sample(100_000, torch.Generator().manual_seed(3))
    r = x.norm(dim=1)
    assert abs(float(r.mean()) - mean_rho) < 4 * float(r.std()) / math.sqrt(r.numel())
    assert abs(normalised_mass(energy, 800) - 1) < 1e-3


@pytest.mark.parametrize(
    "energy, reference",
    [
        (
            Funnel((10,)),
            lambda x: D.Normal(0.0, 3.0).log_prob(x[:, 0])
            + D.Normal(0.0, torch.exp(x[:, :1] / 2)).log_prob(x[:, 1:]).sum(1),
        ),
        (
            Banana((8,), b=0.1),
            lambda x: D.Normal(0.0, torch.tensor([10.0] + [1.0] * 7, dtype=torch.float64))
            .log_prob(torch.cat([x[:, :1], x[:, 1:2] + 0.1 * (x[:, :1] ** 2 - 100), x[:, 2:]], 1))
            .sum(1),
        ),
        (
            CorrelatedGaussian((5,), correlation=0.3, scales=[1.0, 2.0, 0.5, 1.0, 3.0], mean=1.0),
            None,
        ),
        (GaussianMixture((3,), means=[[0.0, 0.0, 0.0], [1.0, 2.0, 3.0]], std=[1.0, 0.5]), None),
    ],
    ids=["funnel10", "banana8", "correlated5", "mixture3"],
)
def test_high_dimensional_log_density_matches_torch_distributions(energy, reference) -> None:
    x = energy.sample(500, torch.Generator().manual_seed(4))
    if reference is None and isinstance(energy, CorrelatedGaussian):
        reference = D.MultivariateNormal(energy.mean, energy.cov).log_prob
    if reference is None:  # the mixture
        mix = D.Categorical(energy.log_weights.exp())
        comp = D.Independent(D.Normal(energy.means, energy.std[:, None].expand_as(energy.means)), 1)
        reference = D.MixtureSameFamily(mix, comp).log_prob
    torch.testing.assert_close(-energy(x) - energy.log_z, reference(x))


def test_rosenbrock_energy_is_the_dataset_density() -> None:
    a, b, t = 0.5, 20.0, 3.0
    energy = Rosenbrock((2,), a=a, b=b, temperature=t)
    x = energy.sample(1000, torch.Generator().manual_seed(5))
    # independent reference: N(x₁ | a, T/2) · N(x₂ | x₁², T/(2b))
    ref = D.Normal(a, math.sqrt(t / 2)).log_prob(x[:, 0])
    ref = ref + D.Normal(x[:, 0] ** 2, math.sqrt(t / (2 * b))).log_prob(x[:, 1])
    torch.testing.assert_close(-energy(x) - energy.log_z, ref)
    ds = rosenbrock(n_train=10, n_test=10, a=a, b=b, temperature=t)
    torch.testing.assert_close(ds.log_prob(x), ref)
    assert ds.bounds == energy.bounds


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_finite_gradients(name: str, dtype: torch.dtype) -> None:
    energy = CASES[name]().to(dtype)
    x = energy.sample(256, torch.Generator().manual_seed(6))
    assert x.dtype == dtype
    x = torch.cat([x, torch.zeros(1, 2, dtype=dtype)]).requires_grad_(True)  # 0: ring's centre
    e = energy(x)
    assert e.shape == (257,) and e.dtype == dtype and torch.isfinite(e).all()
    (grad,) = torch.autograd.grad(e.sum(), x)
    assert torch.isfinite(grad).all()
    # float32 input into a float64 module (and back) casts the constants, not the input
    other = energy(x.detach().to(torch.float64 if dtype == torch.float32 else torch.float32))
    torch.testing.assert_close(other.to(dtype), e.detach(), rtol=1e-4, atol=1e-4)


def test_event_shapes_other_than_flat() -> None:
    energy = Funnel((2, 3))
    x = energy.sample(7, torch.Generator().manual_seed(7))
    assert x.shape == (7, 2, 3) and energy(x).shape == (7,)
    assert energy.mean.shape == (6,) and energy.cov.shape == (6, 6) and len(energy.bounds) == 6


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda: Rosenbrock((3,)), "2-D"),
        (lambda: Ring((4,)), "2-D"),
        (lambda: GaussianMixture((3,)), "energy.means"),
        (lambda: GaussianMixture((2,), std=[1.0, 2.0, 3.0]), "energy.std"),
        (lambda: Funnel((1,)), "at least 2"),
        (lambda: Banana((1,)), "at least 2"),
        (lambda: CorrelatedGaussian((3,), correlation=-0.6), "energy.correlation"),
        (lambda: CorrelatedGaussian((2,), scales=[1.0, -1.0]), "energy.scales"),
        (lambda: Ring((2,), std=0.0), "energy.std"),
        (lambda: Rosenbrock((2,), temperature=-1.0), "energy.temperature"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(call, words: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "energy").glob("*.yaml")), ids=str)
def test_energy_configs_instantiate_with_the_defaults(path: Path) -> None:
    hydra_utils = pytest.importorskip("hydra.utils")
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    target = cfg._target_.rsplit(".", 1)
    if target[0] != "ebm_cli.energies.analytic":
        pytest.skip("not an analytic energy")
    energy = hydra_utils.instantiate(cfg, event_shape=[2])
    assert isinstance(energy, getattr(analytic, target[1]))
    assert energy(torch.zeros(3, 2)).shape == (3,)
    defaults = {
        k: p.default for k, p in inspect.signature(getattr(analytic, target[1])).parameters.items()
    }
    written = OmegaConf.to_container(cfg)
    written.pop("_target_")
    assert "event_shape" not in written and set(written) == set(defaults) - {"event_shape"}
    for k, v in written.items():
        want = defaults[k]
        if isinstance(want, tuple):
            want = [list(t) if isinstance(t, tuple) else t for t in want]
        assert v == want, k
