"""Tests of the 2-D toy datasets (ebm_cli.data.toy2d, ebm_cli.data.curves) and their stored
entropies."""

from __future__ import annotations

import importlib.util
import inspect
import math
from pathlib import Path

import pytest
import torch
from scipy import stats

from ebm_cli.data import curves, toy2d
from ebm_cli.data.base import Dataset
from ebm_cli.data.entropies import ENTROPIES
from ebm_cli.evaluation.quadrature import grid_2d

ROOT = Path(__file__).resolve().parents[1]
BUILDERS = [
    "two_gaussians", "eight_gaussians", "moons", "circles", "rings", "checkerboard",
    "spirals", "pinwheel", "swissroll", "rosenbrock",
]
CLOSED_FORM = ["two_gaussians", "eight_gaussians", "circles", "rings", "checkerboard", "rosenbrock"]
ENTROPY_ONLY = ["moons", "spirals", "pinwheel", "swissroll"]


def builder(name: str):
    return getattr(toy2d, name, None) or getattr(curves, name)


def build(name: str, **kwargs) -> Dataset:
    return builder(name)(**kwargs)


@pytest.mark.parametrize("name", BUILDERS)
def test_shapes_split_and_seed(name: str) -> None:
    ds = build(name, n_train=300, n_test=200, seed=3)
    assert ds.name == name
    assert ds.train.shape == (300, 2) and ds.test.shape == (200, 2)
    assert ds.train.dtype == torch.float32 and ds.event_shape == (2,)
    assert torch.isfinite(ds.train).all() and torch.isfinite(ds.test).all()
    assert len(ds.bounds) == 2 and all(lo < hi for lo, hi in ds.bounds)
    again = build(name, n_train=300, n_test=200, seed=3)
    assert torch.equal(ds.train, again.train) and torch.equal(ds.test, again.test)
    other = build(name, n_train=300, n_test=200, seed=4)
    assert not torch.equal(ds.train, other.train)
    assert not torch.equal(ds.train[:200], ds.test)  # test is a fresh draw, not a copy


@pytest.mark.parametrize("name", BUILDERS)
def test_bounds_hold_the_mass(name: str) -> None:
    n = 40_000
    x = build(name, n_train=n, n_test=1, seed=1).train
    (x0, x1), (y0, y1) = build(name, n_train=1, n_test=1).bounds
    outside = ~((x[:, 0] >= x0) & (x[:, 0] <= x1) & (x[:, 1] >= y0) & (x[:, 1] <= y1))
    # P(outside) ≤ 1e-3 by construction; 4 binomial standard errors of slack
    assert outside.float().mean() <= 1e-3 + 4 * math.sqrt(1e-3 / n)


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_log_prob_integrates_to_one(name: str) -> None:
    ds = build(name, n_train=10, n_test=10)
    assert ds.log_prob is not None

    # the checkerboard is discontinuous: integrate on its support, where grid cells align with
    # the squares and the midpoint rule is exact; the others are smooth
    box = ((-4.0, 4.0),) * 2 if name == "checkerboard" else ds.bounds

    def mass(n: int) -> float:
        points, area = grid_2d(box, n)
        return float(torch.logsumexp(ds.log_prob(points), 0).exp() * area)

    coarse, fine = mass(500), mass(1000)
    quad_err = abs(fine - coarse)  # midpoint rule: the error at n=1000 is below this
    assert quad_err < 2e-3
    # the box holds ≥ 99.9% of the mass and nothing is outside the support
    assert 0.999 - quad_err <= fine <= 1 + quad_err


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_log_prob_dtypes(name: str) -> None:
    ds = build(name, n_train=64, n_test=10)
    lp32 = ds.log_prob(ds.train)
    lp64 = ds.log_prob(ds.train.double())
    assert lp32.shape == (64,) and lp32.dtype == torch.float32 and lp64.dtype == torch.float64
    assert torch.isfinite(lp64).all()
    torch.testing.assert_close(lp32.double(), lp64, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", CLOSED_FORM)
def test_log_prob_matches_sampler_histogram(name: str) -> None:
    """Pearson χ² of a 10×10 histogram of samples against the bin masses of exp(log_prob)."""
    n, bins, sub = 20_000, 10, 40
    ds = build(name, n_train=n, n_test=1, seed=7)
    (x0, x1), (y0, y1) = ds.bounds
    points, area = grid_2d(ds.bounds, bins * sub)
    dens = ds.log_prob(points).exp().reshape(bins * sub, bins * sub) * area  # [iy, ix]
    expected = dens.reshape(bins, sub, bins, sub).sum((1, 3)).flatten() * n  # [bins²] (by, bx)
    x = ds.train.double()
    bx = ((x[:, 0] - x0) / (x1 - x0) * bins).floor().long()
    by = ((x[:, 1] - y0) / (y1 - y0) * bins).floor().long()
    inside = (bx >= 0) & (bx < bins) & (by >= 0) & (by < bins)
    observed = torch.bincount(by[inside] * bins + bx[inside], minlength=bins * bins).double()
    big = expected >= 5  # χ² needs expected counts ≥ 5; the rest are pooled with the outside
    obs = torch.cat([observed[big], (n - observed[big].sum()).reshape(1)])
    exp = torch.cat([expected[big], (n - expected[big].sum()).reshape(1)])
    chi2 = float(((obs - exp) ** 2 / exp.clamp_min(1e-12)).sum())
    dof = obs.numel() - 1
    # under a correct log_prob, chi2 ~ χ²(dof): a p-value below 1e-4 means a wrong density
    assert stats.chi2.sf(chi2, dof) > 1e-4, (chi2, dof)


def test_eight_gaussians_matches_ffjord_convention() -> None:
    ds = build("eight_gaussians", n_train=2000, n_test=1)
    r = ds.train.double().norm(dim=1)
    # radius 4/√2 = 2√2, std 0.5/√2: |x| ≈ 2.83 ± 0.35
    assert abs(float(r.mean()) - 2 * math.sqrt(2)) < 0.05


def test_checkerboard_density_values() -> None:
    ds = build("checkerboard", n_train=10, n_test=10)
    # FFJORD: x₁ ∈ [0, 2) holds x₂ ∈ [0, 2) ∪ [−4, −2); x₁ ∈ [−4, −2) the same; outside: 0
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-3.0, 1.0], [5.0, 0.0]])
    lp = ds.log_prob(x)
    assert torch.allclose(lp[[0, 2]], torch.full((2,), -math.log(32.0)))
    assert torch.isinf(lp[[1, 3]]).all()


@pytest.mark.parametrize("name", ENTROPY_ONLY + ["circles"])
def test_entropy_stored_only_at_its_parameters(name: str) -> None:
    ds = build(name, n_train=10, n_test=10)
    assert ds.entropy is not None and ds.entropy == ENTROPIES[name]["entropy"]
    assert 0 < ENTROPIES[name]["stderr"] < 0.01
    key = "noise" if name != "pinwheel" else "rate"
    changed = build(name, n_train=10, n_test=10, **{key: 0.3})
    assert changed.entropy is None


def _script():
    spec = importlib.util.spec_from_file_location(
        "estimate_entropy", ROOT / "scripts" / "estimate_entropy.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["circles", "moons", "spirals", "swissroll"])
def test_stored_entropy_matches_exact_density(name: str) -> None:
    """−mean log p over fresh samples, with the script's exact density, vs the stored value."""
    script = _script()
    make, params = script.EXACT[name]
    n = 4000
    lp = make(**params)(build(name, n_train=n, n_test=1, seed=11).train.double())
    se = math.sqrt(float(lp.var()) / n + ENTROPIES[name]["stderr"] ** 2)
    assert abs(-float(lp.mean()) - ENTROPIES[name]["entropy"]) < 4 * se


def test_stored_pinwheel_entropy_matches_knn() -> None:
    script = _script()
    entry = ENTROPIES["pinwheel"]
    n = 50_000
    x = build("pinwheel", n_train=n, n_test=1, seed=12).train.double().numpy()
    h = script.knn_entropy(x, 1)
    # sd of one kNN estimate at n, scaled from the script's repeat-to-repeat spread
    sd = entry["stderr"] * math.sqrt(entry["repeats"]) * math.sqrt(entry["samples"] / n)
    assert abs(h - entry["entropy"]) < 4 * sd + 0.005  # + the kNN bias measured at n (≲ 3e-3)


@pytest.mark.parametrize(
    "call, key",
    [
        (lambda: curves.moons(noise=-1.0), "data.noise"),
        (lambda: curves.moons(n_train=0), "data.n_train"),
        (lambda: toy2d.circles(factor=1.5), "data.factor"),
        (lambda: toy2d.rings(radii=[]), "data.radii"),
        (lambda: toy2d.checkerboard(cells=1), "data.cells"),
        (lambda: curves.spirals(jitter=-1.0), "data.jitter"),
        (lambda: curves.pinwheel(arms=0), "data.arms"),
        (lambda: curves.swissroll(scale=0.0), "data.scale"),
        (lambda: toy2d.rosenbrock(b=0.0), "data.b"),
        (lambda: toy2d.eight_gaussians(std=0.0), "data.std"),
        (lambda: toy2d.two_gaussians(weights=[1.0]), "data.means"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(call, key: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    assert str(info.value).startswith(key) and "\n" not in str(info.value)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "data").glob("*.yaml")), ids=str)
def test_data_configs_instantiate_with_the_defaults(path: Path) -> None:
    hydra_utils = pytest.importorskip("hydra.utils")
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    module, fn_name = cfg._target_.rsplit(".", 1)
    if module not in ("ebm_cli.data.toy2d", "ebm_cli.data.curves"):
        pytest.skip("not a toy 2-D dataset")
    assert fn_name == path.stem
    ds = hydra_utils.instantiate(cfg, n_train=50, n_test=20)
    assert isinstance(ds, Dataset) and ds.name == path.stem and ds.train.shape == (50, 2)
    fn = builder(fn_name)
    defaults = {k: p.default for k, p in inspect.signature(fn).parameters.items()}
    written = OmegaConf.to_container(cfg)
    written.pop("_target_")
    assert set(written) == set(defaults)
    for k, v in written.items():
        want = defaults[k]
        if isinstance(want, tuple):
            want = [list(t) if isinstance(t, tuple) else t for t in want]
        assert v == want, k
