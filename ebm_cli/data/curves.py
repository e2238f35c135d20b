"""2-D noisy-curve datasets (FFJORD's moons, 2spirals, pinwheel, swissroll): no closed-form
density, so each carries the entropy stored in ``ebm_cli.data.entropies`` (estimated by
scripts/estimate_entropy.py at the default parameters) and ``kl`` = test NLL − entropy.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ebm_cli.data.base import Dataset
from ebm_cli.data.entropies import lookup_entropy
from ebm_cli.data.toy2d import bounding_box, check_positive, draw_split, normal_draws, uniform_draws

# FFJORD constants (final, plotted units unless said otherwise).
MOONS_OFFSET = (-1.0, -0.2)  # moons = scale · make_moons + offset
SPIRALS_DIVISOR = 3.0  # spirals = (arm + jitter) / 3 + noise


def moons_curve(t: Tensor, scale: float) -> Tensor:
    """Noise-free moons point for t ∈ [0, 2π) [N] -> [N, 2]; t ~ U(0, 2π) picks either moon.

    t < π: upper moon (cos t, sin t); t ≥ π: lower moon (1 + cos t, 0.5 + sin t) (sklearn's
    (1 − cos s, 0.5 − sin s) at s = t − π); then scale·point + MOONS_OFFSET.
    """
    lower = (t >= math.pi).to(t.dtype)
    pt = torch.stack([lower + t.cos(), 0.5 * lower + t.sin()], dim=-1)
    return scale * pt + torch.tensor(MOONS_OFFSET, dtype=t.dtype)


def moons(
    n_train: int = 4000,
    n_test: int = 2000,
    noise: float = 0.1,
    scale: float = 2.0,
    seed: int = 0,
) -> Dataset:
    """Two interleaved half circles (FFJORD: 2·make_moons(noise=0.1) + (−1, −0.2)).

    x = moons_curve(t) + scale·noise·ε, t ~ U(0, 2π) (equal weight per moon).
    """
    check_positive("noise", noise)
    check_positive("scale", scale)

    def sample(n: int, g: torch.Generator) -> Tensor:
        t = 2 * math.pi * uniform_draws(n, g)  # [n]
        return moons_curve(t, scale) + scale * noise * normal_draws(n, g)

    train, test = draw_split(sample, n_train, n_test, seed)
    corners = moons_curve(torch.linspace(0, 2 * math.pi, 721, dtype=torch.float64), scale)
    entropy = lookup_entropy("moons", noise=noise, scale=scale)
    box = bounding_box(corners, 4.5 * scale * noise)
    return Dataset("moons", train, test, box, entropy=entropy)


def spirals_curve(n: Tensor) -> Tensor:
    """Noise-free arm point (−n cos n, n sin n) (before jitter and /3) at angle n [N] -> [N, 2].

    FFJORD draws n = √u · turns·2π with u ~ U(0, 1), so n has density 2n/n_max² on [0, n_max].
    """
    return torch.stack([-n * n.cos(), n * n.sin()], dim=-1)


def spirals(
    n_train: int = 4000,
    n_test: int = 2000,
    noise: float = 0.1,
    turns: float = 1.5,
    jitter: float = 0.5,
    seed: int = 0,
) -> Dataset:
    """Two interleaved spirals (FFJORD ``2spirals``).

    x = ±(spirals_curve(u) + jitter·v)/3 + noise·ε, u ~ U(0, 1), v ~ U(0, 1)², sign ± equally.
    """
    check_positive("noise", noise)
    check_positive("turns", turns)
    if not jitter >= 0:
        raise ValueError(f"data.jitter must be >= 0, got {jitter}")

    def sample(n: int, g: torch.Generator) -> Tensor:
        arm = spirals_curve(uniform_draws(n, g).sqrt() * (2 * math.pi * turns))  # [n, 2]
        arm = arm + jitter * torch.rand(n, 2, generator=g, dtype=torch.float64)
        sign = 1 - 2 * torch.randint(2, (n, 1), generator=g).double()  # [n, 1] ±1
        return sign * arm / SPIRALS_DIVISOR + noise * normal_draws(n, g)

    train, test = draw_split(sample, n_train, n_test, seed)
    r = (2 * math.pi * turns + jitter * math.sqrt(2)) / SPIRALS_DIVISOR + 4.5 * noise
    entropy = lookup_entropy("spirals", noise=noise, turns=turns, jitter=jitter)
    return Dataset("spirals", train, test, ((-r, r), (-r, r)), entropy=entropy)


def pinwheel(
    n_train: int = 4000,
    n_test: int = 2000,
    arms: int = 5,
    radial_std: float = 0.3,
    tangential_std: float = 0.1,
    rate: float = 0.25,
    scale: float = 2.0,
    seed: int = 0,
) -> Dataset:
    """Curved arms (FFJORD ``pinwheel``, after Johnson et al. 2016).

    f = (1 + radial_std·ε₁, tangential_std·ε₂), arm k uniform, α = 2πk/arms + rate·exp(f₁),
    x = scale · R(−α) f (R the rotation matrix).
    """
    if isinstance(arms, bool) or not isinstance(arms, int) or arms < 1:
        raise ValueError(f"data.arms must be an integer >= 1, got {arms!r}")
    for key, value in (("radial_std", radial_std), ("tangential_std", tangential_std)):
        check_positive(key, value)
    check_positive("scale", scale)
    if not rate >= 0:
        raise ValueError(f"data.rate must be >= 0, got {rate}")

    def sample(n: int, g: torch.Generator) -> Tensor:
        f = normal_draws(n, g) * torch.tensor([radial_std, tangential_std], dtype=torch.float64)
        f[:, 0] += 1.0
        k = torch.randint(arms, (n,), generator=g).double()
        alpha = 2 * math.pi * k / arms + rate * f[:, 0].exp()  # [n]
        c, s = alpha.cos(), alpha.sin()
        # R(−α) f = (c f₁ + s f₂, −s f₁ + c f₂)
        return scale * torch.stack([c * f[:, 0] + s * f[:, 1], -s * f[:, 0] + c * f[:, 1]], 1)

    train, test = draw_split(sample, n_train, n_test, seed)
    # |x| = scale·|f| and |f| ≤ 1 + 4.5·radial_std + 4.5·tangential_std with prob ≥ 99.9%
    r = scale * (1 + 4.5 * (radial_std + tangential_std))
    entropy = lookup_entropy(
        "pinwheel", arms=arms, radial_std=radial_std, tangential_std=tangential_std,
        rate=rate, scale=scale,
    )
    return Dataset("pinwheel", train, test, ((-r, r), (-r, r)), entropy=entropy)


def swissroll_curve(t: Tensor, scale: float) -> Tensor:
    """Noise-free swiss-roll point scale·(t cos t, t sin t) for t [N] -> [N, 2]."""
    return scale * torch.stack([t * t.cos(), t * t.sin()], dim=-1)


def swissroll(
    n_train: int = 4000,
    n_test: int = 2000,
    noise: float = 1.0,
    scale: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """The swiss roll's (x, z) plane (FFJORD: make_swiss_roll(noise=1.0)[:, [0, 2]] / 5).

    x = scale·((t cos t, t sin t) + noise·ε), t ~ U(1.5π, 4.5π).
    """
    check_positive("noise", noise)
    check_positive("scale", scale)

    def sample(n: int, g: torch.Generator) -> Tensor:
        t = 1.5 * math.pi * (1 + 2 * uniform_draws(n, g))
        return swissroll_curve(t, scale) + scale * noise * normal_draws(n, g)

    train, test = draw_split(sample, n_train, n_test, seed)
    r = scale * (4.5 * math.pi + 4.5 * noise)
    entropy = lookup_entropy("swissroll", noise=noise, scale=scale)
    return Dataset("swissroll", train, test, ((-r, r), (-r, r)), entropy=entropy)
