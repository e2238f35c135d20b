"""2-D toy datasets with a closed-form density (mixtures, rings, checkerboard, Rosenbrock), and
the helpers every 2-D builder shares; the noisy curves are in ``ebm_cli.data.curves``.

Each builder returns a ``Dataset`` with a train/test split.

Definitions follow the toy data of FFJORD (Grathwohl et al. 2019, ``lib/toy_data.py``), which most
EBM and normalising-flow papers share, so that NLLs compare across papers; our code, in torch, with
an explicit ``torch.Generator``. Where FFJORD spaces angles on a grid or fixes the count per
component, we draw them i.i.d. (the same distribution in the limit), so samples follow a density.
``log_prob`` is given where the density has a closed form; otherwise ``entropy`` comes from
``ebm_cli.data.entropies`` (scripts/estimate_entropy.py), set only at the parameters it was
estimated for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ebm_cli.data.base import Dataset, seeded_generator
from ebm_cli.data.entropies import lookup_entropy
from ebm_cli.energies.analytic import Rosenbrock
from ebm_cli.resources import size_problem

Box = tuple[tuple[float, float], ...]
Sampler = Callable[[int, torch.Generator], Tensor]
# Bytes per row while a 2-D sample is drawn: the builders hold up to ~8 float64 [n, 2] (or [n])
# temporaries at their peak (draws, angles, cos/sin, the stacked result), 16 bytes each.
DRAW_BYTES_PER_ROW = 128


def bounding_box(points: Tensor, margin: float) -> Box:
    lo = points.min(0).values - margin
    hi = points.max(0).values + margin
    return tuple((float(a), float(b)) for a, b in zip(lo, hi))


def check_positive(key: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"data.{key} must be > 0, got {value}")


def draw_split(sample: Sampler, n_train: int, n_test: int, seed: int) -> tuple[Tensor, Tensor]:
    """Draw train then test from one generator seeded with ``seed`` -> float32 [N, 2] each.

    Counts whose draws cannot fit in physical memory are refused before anything is drawn.
    """
    for key, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"data.{key} must be an integer >= 1, got {n!r}")
        problem = size_problem(f"data.{key}", n, DRAW_BYTES_PER_ROW,
                               f"{DRAW_BYTES_PER_ROW} bytes a row of float64 draws")
        if problem:
            raise ValueError(problem)
    g = seeded_generator(seed)
    return sample(n_train, g).float(), sample(n_test, g).float()


def uniform_draws(n: int, g: torch.Generator) -> Tensor:
    return torch.rand(n, generator=g, dtype=torch.float64)  # [n] ~ U(0, 1)


def normal_draws(n: int, g: torch.Generator, d: int = 2) -> Tensor:
    return torch.randn(n, d, generator=g, dtype=torch.float64)  # [n, d] ~ N(0, I)


# ---------------------------------------------------------------- Gaussian mixtures


def gaussian_mixture_log_prob(
    x: Tensor, means: Tensor, std: float, weights: Tensor
) -> Tensor:
    """log Σ_k w_k N(x | μ_k, σ²I) for x [B, D], means [K, D], weights [K] -> [B]."""
    means = means.to(x)
    weights = weights.to(x)
    d = x.shape[-1]
    sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)  # [B, K]
    log_norm = -0.5 * d * math.log(2 * math.pi * std**2)
    return torch.logsumexp(torch.log(weights)[None] + log_norm - 0.5 * sq / std**2, dim=1)


def _sample_mixture(
    n: int, means: Tensor, std: float, weights: Tensor, generator: torch.Generator
) -> Tensor:
    k = torch.multinomial(weights, n, replacement=True, generator=generator)  # [n]
    return means[k] + std * torch.randn(n, means.shape[1], generator=generator, dtype=means.dtype)


def two_gaussians(
    n_train: int = 4000,
    n_test: int = 2000,
    means: Sequence[Sequence[float]] = ((-2.0, 0.0), (2.0, 0.0)),
    std: float = 0.5,
    weights: Sequence[float] = (0.5, 0.5),
    seed: int = 0,
) -> Dataset:
    """A mixture of two isotropic 2-D Gaussians, N(μ_k, σ²I) with weights w_k."""
    mu = torch.tensor([[float(v) for v in m] for m in means], dtype=torch.float32)
    w = torch.tensor([float(v) for v in weights], dtype=torch.float32)
    if mu.ndim != 2 or mu.shape[0] != w.shape[0]:
        raise ValueError(
            f"data.means must be a list of points, one per weight; got {mu.shape[0]} means "
            f"for {w.shape[0]} weights"
        )
    check_positive("std", std)
    if (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError(f"data.weights must be non-negative with a positive sum, got {weights}")
    w = w / w.sum()
    train, test = draw_split(lambda n, g: _sample_mixture(n, mu, std, w, g), n_train, n_test, seed)
    box_pts = torch.cat([mu - 4.5 * std, mu + 4.5 * std])
    return Dataset(
        name="two_gaussians",
        train=train,
        test=test,
        bounds=bounding_box(box_pts, 0.0),
        log_prob=lambda x: gaussian_mixture_log_prob(x, mu, std, w),
        modes=mu,
        mode_weights=w,
    )


def eight_gaussians(
    n_train: int = 4000,
    n_test: int = 2000,
    radius: float = 2.0 * math.sqrt(2.0),
    std: float = 0.5 / math.sqrt(2.0),
    seed: int = 0,
) -> Dataset:
    """Eight equal-weight N(μ_k, σ²I), μ_k = radius·(cos kπ/4, sin kπ/4).

    FFJORD: centres at radius 4, std 0.5, all divided by √2 -> radius 2√2 ≈ 2.83, σ ≈ 0.354.
    """
    check_positive("radius", radius)
    check_positive("std", std)
    angle = torch.arange(8, dtype=torch.float64) * (math.pi / 4)  # [8]
    mu = radius * torch.stack([angle.cos(), angle.sin()], dim=1)  # [8, 2]
    w = torch.full((8,), 1 / 8, dtype=torch.float64)
    train, test = draw_split(lambda n, g: _sample_mixture(n, mu, std, w, g), n_train, n_test, seed)
    return Dataset(
        name="eight_gaussians",
        train=train,
        test=test,
        bounds=bounding_box(mu, 4.5 * std),
        log_prob=lambda x: gaussian_mixture_log_prob(x, mu, std, w),
        modes=mu,
        mode_weights=w,
    )


# ---------------------------------------------------------------- circles and rings


def ring_mixture_log_prob(x: Tensor, radii: Tensor, std: float, weights: Tensor) -> Tensor:
    """log p(x) for x = r_k (cos θ, sin θ) + σε, k ~ w, θ ~ U(0, 2π), ε ~ N(0, I); [B, 2] -> [B].

    Averaging N(x | r u(θ), σ²I) over θ gives the 2-D Rice density
    p_k(x) = exp(−(ρ² + r_k²)/2σ²) I₀(ρ r_k/σ²) / (2πσ²), ρ = |x|; with i0e(z) = e^{−z} I₀(z):
    log p_k = −log 2πσ² − (ρ − r_k)²/2σ² + log i0e(ρ r_k/σ²).
    """
    radii, weights = radii.to(x), weights.to(x)
    rho = x.norm(dim=-1, keepdim=True)  # [B, 1]
    z = rho * radii / std**2  # [B, K]
    log_pk = (
        -math.log(2 * math.pi * std**2)
        - 0.5 * (rho - radii) ** 2 / std**2
        + torch.special.i0e(z).log()
    )
    return torch.logsumexp(weights.log() + log_pk, dim=1)


def _ring_dataset(
    radii: Tensor, std: float, n_train: int, n_test: int, seed: int
) -> tuple[Tensor, Tensor, Box, Callable[[Tensor], Tensor]]:
    w = torch.full(radii.shape, 1.0 / radii.numel(), dtype=torch.float64)

    def sample(n: int, g: torch.Generator) -> Tensor:
        k = torch.multinomial(w, n, replacement=True, generator=g)  # [n]
        theta = 2 * math.pi * uniform_draws(n, g)
        on_ring = radii[k, None] * torch.stack([theta.cos(), theta.sin()], dim=1)  # [n, 2]
        return on_ring + std * normal_draws(n, g)

    train, test = draw_split(sample, n_train, n_test, seed)
    r = float(radii.max()) + 4.5 * std
    return train, test, ((-r, r), (-r, r)), lambda x: ring_mixture_log_prob(x, radii, std, w)


def circles(
    n_train: int = 4000,
    n_test: int = 2000,
    factor: float = 0.5,
    noise: float = 0.08,
    scale: float = 3.0,
    seed: int = 0,
) -> Dataset:
    """Two concentric noisy circles (FFJORD: 3·make_circles(factor=0.5, noise=0.08)).

    Radii (scale, factor·scale), equal weights, isotropic noise std noise·scale; closed-form
    density ``ring_mixture_log_prob``.
    """
    if not 0 < factor < 1:
        raise ValueError(f"data.factor must be in (0, 1), got {factor}")
    check_positive("noise", noise)
    check_positive("scale", scale)
    radii = torch.tensor([scale, factor * scale], dtype=torch.float64)
    train, test, bounds, log_prob = _ring_dataset(radii, noise * scale, n_train, n_test, seed)
    entropy = lookup_entropy("circles", factor=factor, noise=noise, scale=scale)
    return Dataset("circles", train, test, bounds, log_prob=log_prob, entropy=entropy)


def rings(
    n_train: int = 4000,
    n_test: int = 2000,
    radii: Sequence[float] = (3.0, 2.25, 1.5, 0.75),
    noise: float = 0.08,
    seed: int = 0,
) -> Dataset:
    """Concentric noisy rings with equal weights (FFJORD: radii 3·(1, .75, .5, .25), noise .08).

    x = r_k (cos θ, sin θ) + noise·ε with θ uniform: the closed-form density is
    ``ring_mixture_log_prob`` (the angle average of the Gaussian, a Bessel I₀ term).
    """
    r = torch.tensor([float(v) for v in radii], dtype=torch.float64)
    if r.ndim != 1 or r.numel() < 1 or (r <= 0).any():
        raise ValueError(f"data.radii must be a non-empty list of radii > 0, got {radii}")
    check_positive("noise", noise)
    train, test, bounds, log_prob = _ring_dataset(r, noise, n_train, n_test, seed)
    return Dataset("rings", train, test, bounds, log_prob=log_prob)


# ---------------------------------------------------------------- checkerboard


def checkerboard(
    n_train: int = 4000,
    n_test: int = 2000,
    cells: int = 4,
    cell_size: float = 2.0,
    seed: int = 0,
) -> Dataset:
    """Uniform on the dark squares of a cells×cells board centred at 0 (FFJORD: 4×4, side 2).

    Square (i, j), 0 ≤ i, j < cells, is dark when i + j is even; density 1/(K·side²) on the K dark
    squares, 0 elsewhere (log_prob = −inf there).
    """
    if isinstance(cells, bool) or not isinstance(cells, int) or cells < 2:
        raise ValueError(f"data.cells must be an integer >= 2, got {cells!r}")
    check_positive("cell_size", cell_size)
    ij = torch.cartesian_prod(torch.arange(cells), torch.arange(cells))  # [cells², 2]
    dark = ij[ij.sum(1) % 2 == 0].double()  # [K, 2]
    half = cells * cell_size / 2
    log_density = -math.log(dark.shape[0] * cell_size**2)

    def sample(n: int, g: torch.Generator) -> Tensor:
        k = torch.randint(dark.shape[0], (n,), generator=g)  # [n] a dark square
        u = torch.rand(n, 2, generator=g, dtype=torch.float64)  # position inside it
        return (dark[k] + u) * cell_size - half

    def log_prob(x: Tensor) -> Tensor:
        cell = torch.floor((x + half) / cell_size)  # [B, 2]
        inside = ((cell >= 0) & (cell < cells)).all(-1) & (cell.sum(-1) % 2 == 0)
        return torch.where(inside, log_density, -math.inf).to(x.dtype)

    train, test = draw_split(sample, n_train, n_test, seed)
    m = 0.05 * cell_size
    return Dataset("checkerboard", train, test, ((-half - m, half + m),) * 2, log_prob=log_prob)


# ---------------------------------------------------------------- Rosenbrock


def rosenbrock(
    n_train: int = 4000,
    n_test: int = 2000,
    a: float = 1.0,
    b: float = 100.0,
    temperature: float = 2.0,
    seed: int = 0,
) -> Dataset:
    """Samples of the Rosenbrock density p(x) ∝ exp(−((a − x₁)² + b(x₂ − x₁²)²)/T).

    It factorises as N(x₁ | a, T/2) N(x₂ | x₁², T/(2b)): exact samples and log Z = log(πT/√b)
    (``ebm_cli.energies.analytic.Rosenbrock``, the same density). T = 20 gives the Goodman &
    Weare (2010) density.
    """
    check_positive("b", b)
    check_positive("temperature", temperature)
    target = Rosenbrock((2,), a=a, b=b, temperature=temperature)
    train, test = draw_split(target.sample, n_train, n_test, seed)
    return Dataset(
        name="rosenbrock",
        train=train,
        test=test,
        bounds=target.bounds,
        log_prob=lambda x: -target(x) - target.log_z,
    )
