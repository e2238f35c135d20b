"""Known energies E(x) = −log p̃(x) with their normaliser, moments and exact samplers.

Every class: ``forward(x [B, *event]) -> energy [B]``; ``log_z`` (float) so that −E − log_z is the
normalised log density; ``mean`` [D] and ``cov`` [D, D] (buffers, float64 until the module is
cast); ``bounds``, a box per dimension holding ≥ 99.9% of the mass; ``sample(n, generator)`` ->
[n, *event] exact draws on the generator's device. The first constructor argument is the data's
event shape, passed at run time (or ``dim``, for a sampling run with no data); a shape the energy
cannot take is refused with one line. ``truth()`` hands these facts to the runner
(ebm_cli/energies/base.py).
Constants are buffers, cast to the input's dtype and device, so float32/float64 and any device work.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ebm_cli.energies.base import Box, Truth

LOG_2PI = math.log(2 * math.pi)
F64 = torch.float64


def _shape(event_shape: Sequence[int] | None, name: str, *, two_d: bool = False,
           min_dim: int = 1, dim: int | None = None) -> tuple[tuple[int, ...], int]:
    """Validated (event_shape, D = prod(event_shape)): the data's shape when a run passes one,
    else (dim,) — ``energy.dim`` sets the dimension of a sampling run — else (2,)."""
    if dim is not None and (not isinstance(dim, int) or dim < 1):
        raise ValueError(f"energy.dim must be an integer >= 1, got {dim!r}")
    if event_shape is None:
        event_shape = (dim,) if dim is not None else (2,)
    elif dim is not None and math.prod(event_shape) != dim:
        raise ValueError(f"energy.dim={dim} but the data has event shape {tuple(event_shape)}; "
                         "drop energy.dim or choose data of that dimension")
    shape = tuple(int(s) for s in event_shape)
    dim = math.prod(shape)
    if two_d and shape != (2,):
        raise ValueError(f"energy {name} needs 2-D data (event shape (2,)), got {shape}")
    if dim < min_dim:
        raise ValueError(f"energy {name} needs at least {min_dim} dimensions, got {shape}")
    return shape, dim


def _floats(value: float | Sequence[float], n: int, key: str) -> list[float]:
    """A scalar broadcast to n floats, or a list of exactly n floats."""
    if isinstance(value, (int, float)):
        return [float(value)] * n
    out = [float(v) for v in value]
    if len(out) != n:
        raise ValueError(f"energy.{key} must be one number or a list of {n}, got {len(out)} values")
    return out


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"energy.{key} must be > 0, got {value}")


def _diag_box(mean: Sequence[float], half: Sequence[float]) -> Box:
    return tuple((m - h, m + h) for m, h in zip(mean, half))


class GaussianMixture(nn.Module):
    """E(x) = −log Σ_k w_k N(x | μ_k, σ_k² I), normalised (log_z = 0); the seed's Figure 1."""

    def __init__(
        self,
        event_shape: Sequence[int] | None = None,
        means: Sequence[Sequence[float]] = ((-2.0, 0.0), (2.0, 0.0)),
        std: float | Sequence[float] = 0.5,
        weights: Sequence[float] = (0.5, 0.5),
        dim: int | None = None,
    ) -> None:
        super().__init__()
        self.event_shape, d = _shape(event_shape, "GaussianMixture", dim=dim)
        mu = torch.tensor([[float(v) for v in m] for m in means], dtype=F64)  # [K, D]
        if mu.ndim != 2 or mu.shape[1] != d:
            raise ValueError(
                f"energy.means must be a list of points with {d} coordinates each (the data's "
                f"event shape {self.event_shape}), got shape {tuple(mu.shape)}"
            )
        k = mu.shape[0]
        w = torch.tensor(_floats(weights, k, "weights"), dtype=F64)
        sd = torch.tensor(_floats(std, k, "std"), dtype=F64)
        if (w < 0).any() or not w.sum() > 0:
            raise ValueError(f"energy.weights must be >= 0 with a positive sum, got {weights}")
        if not (sd > 0).all():
            raise ValueError(f"energy.std must be > 0, got {std}")
        w = w / w.sum()
        self.register_buffer("means", mu)
        self.register_buffer("std", sd)
        self.register_buffer("log_weights", w.log())
        mean = w @ mu  # [D], Σ w_k μ_k
        second = (w * sd**2).sum() * torch.eye(d, dtype=F64) + (w[:, None] * mu).T @ mu
        self.register_buffer("mean", mean)
        self.register_buffer("cov", second - torch.outer(mean, mean))  # law of total covariance
        self.log_z = 0.0
        lo = (mu - 4.5 * sd[:, None]).min(0).values
        hi = (mu + 4.5 * sd[:, None]).max(0).values
        self.bounds: Box = tuple((float(a), float(b)) for a, b in zip(lo, hi))

    def truth(self) -> Truth:
        return Truth(self.log_z, self.mean, self.cov, self.bounds, self.sample)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)  # [B, D]
        mu, sd, log_w = self.means.to(x), self.std.to(x), self.log_weights.to(x)
        # components first ([K, B], chains contiguous): compiled transitions vectorise over the
        # chains (with [B, K] the K-wide reductions ran scalar: 2x slower whole HMC steps)
        sq = ((x.T[None] - mu[:, :, None]) ** 2).sum(1)  # [K, B]
        d = x.shape[1]
        sd = sd[:, None]  # [K, 1]
        log_n = -0.5 * sq / sd**2 - d * sd.log() - 0.5 * d * LOG_2PI  # log N(x | μ_k, σ_k²I)
        return -torch.logsumexp(log_w[:, None] + log_n, dim=0)  # [B]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        dev = generator.device
        mu, sd = self.means.to(dev), self.std.to(dev)
        w = self.log_weights.exp().to(dev)
        k = torch.multinomial(w, n, replacement=True, generator=generator)  # [n]
        eps = torch.randn(n, mu.shape[1], generator=generator, dtype=mu.dtype, device=dev)
        return (mu[k] + sd[k, None] * eps).reshape(n, *self.event_shape)


class Rosenbrock(nn.Module):
    """E(x) = ((a − x₁)² + b(x₂ − x₁²)²)/T; the seed's Figure 3 and the ``rosenbrock`` dataset.

    p factorises as N(x₁ | a, σ₁²) N(x₂ | x₁², σ₂²), σ₁² = T/2, σ₂² = T/(2b), so it is sampled
    exactly and log Z = log(2π σ₁ σ₂) = log(πT/√b).
    """

    def __init__(
        self,
        event_shape: Sequence[int] | None = None,
        a: float = 1.0,
        b: float = 100.0,
        temperature: float = 2.0,
    ) -> None:
        super().__init__()
        self.event_shape, _ = _shape(event_shape, "Rosenbrock", two_d=True)
        _positive("b", b)
        _positive("temperature", temperature)
        self.a, self.b, self.temperature = float(a), float(b), float(temperature)
        self.log_z = math.log(math.pi * temperature / math.sqrt(b))
        v1, v2 = temperature / 2, temperature / (2 * b)
        self.stds = (math.sqrt(v1), math.sqrt(v2))
        # E[x₂] = a² + v₁; Cov(x₁, x₂) = E[(x₁ − a) x₁²] = 2a v₁; Var(x₂) = Var(x₁²) + v₂
        self.register_buffer("mean", torch.tensor([a, a**2 + v1], dtype=F64))
        c12 = 2 * a * v1
        self.register_buffer(
            "cov", torch.tensor([[v1, c12], [c12, 4 * a**2 * v1 + 2 * v1**2 + v2]], dtype=F64)
        )
        # x₁ within 4.5σ₁ of a, x₂ within 4.5σ₂ of the range of x₁² there: ≥ 99.9% of the mass
        s1, s2 = self.stds
        lo, hi = a - 4.5 * s1, a + 4.5 * s1
        bottom = 0.0 if lo < 0 < hi else min(lo**2, hi**2)
        self.bounds: Box = ((lo, hi), (bottom - 4.5 * s2, max(lo**2, hi**2) + 4.5 * s2))

    def truth(self) -> Truth:
        return Truth(self.log_z, self.mean, self.cov, self.bounds, self.sample)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = x[:, 0], x[:, 1]
        return ((self.a - x1) ** 2 + self.b * (x2 - x1**2) ** 2) / self.temperature  # [B]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        z = torch.randn(n, 2, generator=generator, dtype=self.mean.dtype, device=generator.device)
        x1 = self.a + self.stds[0] * z[:, 0]  # x₁ ~ N(a, T/2)
        return torch.stack([x1, x1**2 + self.stds[1] * z[:, 1]], dim=1)  # x₂ | x₁ ~ N(x₁², T/2b)


class Banana(nn.Module):
    """Haario et al. (1999) twisted Gaussian: y = φ⁻¹(x), x ~ N(0, diag(σ₁², 1, …, 1)),
    φ(y) = (y₁, y₂ + b y₁² − b σ₁², y₃, …); E(y) = ½ φ(y)ᵀ Σ⁻¹ φ(y) (|det ∂φ| = 1).

    Haario's values: σ₁ = 10, b = 0.03 (moderately) or 0.1 (strongly twisted), D = 8.
    """

    def __init__(
        self, event_shape: Sequence[int] | None = None, b: float = 0.03, sigma1: float = 10.0,
        dim: int | None = None,
    ) -> None:
        super().__init__()
        self.event_shape, d = _shape(event_shape, "Banana", min_dim=2, dim=dim)
        _positive("sigma1", sigma1)
        self.b, self.sigma1 = float(b), float(sigma1)
        self.log_z = 0.5 * d * LOG_2PI + math.log(sigma1)
        self.register_buffer("mean", torch.zeros(d, dtype=F64))  # E[x₂ − b(x₁² − σ₁²)] = 0
        var = torch.ones(d, dtype=F64)
        var[0] = sigma1**2
        var[1] = 1 + 2 * b**2 * sigma1**4  # Var(x₂) + b² Var(x₁²)
        self.register_buffer("cov", torch.diag(var))
        s2 = b * sigma1**2
        y2 = (-19.25 * s2 - 4.5, s2 + 4.5) if b >= 0 else (s2 - 4.5, -19.25 * s2 + 4.5)
        self.bounds: Box = ((-4.5 * sigma1, 4.5 * sigma1), y2) + ((-4.5, 4.5),) * (d - 2)

    def truth(self) -> Truth:
        return Truth(self.log_z, self.mean, self.cov, self.bounds, self.sample)

    def forward(self, x: Tensor) -> Tensor:
        y = x.flatten(1)  # [B, D]
        x1 = y[:, 0]
        x2 = y[:, 1] + self.b * (x1**2 - self.sigma1**2)  # φ(y)₂
        rest = (y[:, 2:] ** 2).sum(1)
        return 0.5 * (x1**2 / self.sigma1**2 + x2**2 + rest)  # [B]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        d = self.mean.numel()
        x = torch.randn(n, d, generator=generator, dtype=self.mean.dtype, device=generator.device)
        x[:, 0] = x[:, 0] * self.sigma1
        x[:, 1] = x[:, 1] - self.b * (x[:, 0] ** 2 - self.sigma1**2)  # y = φ⁻¹(x)
        return x.reshape(n, *self.event_shape)


class Funnel(nn.Module):
    """Neal's (2003) funnel: v = x₀ ~ N(0, s²), x_i | v ~ N(0, eᵛ), i < D (Neal: s = 3, D = 10).

    E(x) = v²/(2s²) + ½ e^{−v} Σ x_i² + (D−1) v/2, log Z = (D/2) log 2π + log s.
    """

    def __init__(self, event_shape: Sequence[int] | None = None, scale: float = 3.0,
                 dim: int | None = None) -> None:
        super().__init__()
        self.event_shape, d = _shape(event_shape, "Funnel", min_dim=2, dim=dim)
        _positive("scale", scale)
        self.scale = float(scale)
        self.log_z = 0.5 * d * LOG_2PI + math.log(scale)
        self.register_buffer("mean", torch.zeros(d, dtype=F64))
        var = torch.full((d,), math.exp(scale**2 / 2), dtype=F64)  # E[eᵛ] = e^{s²/2}
        var[0] = scale**2
        self.register_buffer("cov", torch.diag(var))
        c = self._tail_quantile(0.9e-3 / (d - 1))  # + P(|v| > 4.5s) = 7e-6: ≤ 1e-3 outside
        self.bounds: Box = ((-4.5 * scale, 4.5 * scale),) + ((-c, c),) * (d - 1)

    def _tail_quantile(self, tail: float) -> float:
        """c with P(|x_i| > c) = tail, P(|x_i| > c) = E_v[2Φ(−c e^{−v/2})] by quadrature in v."""
        v = torch.linspace(-8 * self.scale, 8 * self.scale, 4001, dtype=F64)
        w = torch.exp(-0.5 * (v / self.scale) ** 2)
        w = w / w.sum()
        lo, hi = 0.0, 10.0
        while float((w * 2 * torch.special.ndtr(-hi * torch.exp(-v / 2))).sum()) > tail:
            lo, hi = hi, 2 * hi
        for _ in range(60):  # bisection
            mid = 0.5 * (lo + hi)
            p = float((w * 2 * torch.special.ndtr(-mid * torch.exp(-v / 2))).sum())
            lo, hi = (mid, hi) if p > tail else (lo, mid)
        return hi

    def truth(self) -> Truth:
        return Truth(self.log_z, self.mean, self.cov, self.bounds, self.sample)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(1)  # [B, D]
        v, rest = x[:, 0], x[:, 1:]
        d1 = rest.shape[1]
        return 0.5 * v**2 / self.scale**2 + 0.5 * (rest**2).sum(1) * torch.exp(-v) + 0.5 * d1 * v

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        d = self.mean.numel()
        z = torch.randn(n, d, generator=generator, dtype=self.mean.dtype, device=generator.device)
        v = self.scale * z[:, :1]  # [n, 1]
        return torch.cat([v, z[:, 1:] * torch.exp(0.5 * v)], dim=1).reshape(n, *self.event_shape)


class Ring(nn.Module):
    """E(x) = (|x| − r)²/(2σ²) in 2-D: a ring of radius r and radial width σ.

    With ρ = r + σz, a = r/σ: Z = 2π ∫₀^∞ ρ e^{−(ρ−r)²/2σ²} dρ = (2π)^{3/2} σ (r Φ(a) + σ φ(a)).
    """

    def __init__(self, event_shape: Sequence[int] | None = None, radius: float = 2.0,
                 std: float = 0.2) -> None:
        super().__init__()
        self.event_shape, _ = _shape(event_shape, "Ring", two_d=True)
        _positive("radius", radius)
        _positive("std", std)
        r, s = float(radius), float(std)
        self.radius, self.std = r, s
        a = r / s
        phi = math.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)  # φ(a)
        cdf = 0.5 * math.erfc(-a / math.sqrt(2))  # Φ(a)
        m = (cdf, phi, cdf - a * phi, (a * a + 2) * phi)  # ∫_{−a}^∞ z^k φ(z) dz, k = 0..3
        first = r * m[0] + s * m[1]  # ∫ ρ φ((ρ − r)/σ) dρ/σ over ρ > 0
        self.log_z = 1.5 * LOG_2PI + math.log(s) + math.log(first)
        third = r**3 * m[0] + 3 * r**2 * s * m[1] + 3 * r * s**2 * m[2] + s**3 * m[3]
        self.register_buffer("mean", torch.zeros(2, dtype=F64))
        self.register_buffer("cov", 0.5 * third / first * torch.eye(2, dtype=F64))  # E[ρ²]/2 · I
        self._w_rayleigh = s * math.sqrt(2 / math.pi) / (s * math.sqrt(2 / math.pi) + r)
        c = r + 4.5 * s
        self.bounds: Box = ((-c, c), (-c, c))

    def truth(self) -> Truth:
        return Truth(self.log_z, self.mean, self.cov, self.bounds, self.sample)

    def forward(self, x: Tensor) -> Tensor:
        rho = torch.linalg.vector_norm(x.flatten(1), dim=1)  # [B]; its gradient at 0 is 0
        return 0.5 * (rho - self.radius) ** 2 / self.std**2

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """Radius by rejection: f(ρ) = ρ φ_σ(ρ − r) ≤ (|ρ − r| + r) φ_σ(ρ − r) = g(ρ), a
        mixture of ±Rayleigh(σ) offsets and N(0, σ²) offsets; accept with ρ / (|ρ − r| + r)."""
        dev, dtype = generator.device, self.mean.dtype
        kept: list[Tensor] = []
        have = 0
        while have < n:  # rounds, not samples; acceptance ≥ r/(r + σ√(2/π))
            m = 2 * (n - have) + 64
            u = torch.rand(4, m, generator=generator, dtype=dtype, device=dev)
            z = torch.randn(m, generator=generator, dtype=dtype, device=dev)
            rayleigh = self.std * torch.sqrt(-2 * torch.log1p(-u[0]))  # |offset| ~ Rayleigh(σ)
            signed = torch.where(u[1] < 0.5, rayleigh, -rayleigh)
            off = torch.where(u[2] < self._w_rayleigh, signed, self.std * z)
            rho = self.radius + off
            ok = u[3] * (off.abs() + self.radius) < rho  # rho > 0 implied
            kept.append(rho[ok])
            have += int(ok.sum())
        rho = torch.cat(kept)[:n]
        theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=dtype, device=dev)
        return rho[:, None] * torch.stack([theta.cos(), theta.sin()], dim=1)


class CorrelatedGaussian(nn.Module):
    """E(x) = ½ (x − μ)ᵀ Σ⁻¹ (x − μ), Σ = S R S, S = diag(scales), R = (1 − ρ)I + ρ11ᵀ."""

    def __init__(
        self,
        event_shape: Sequence[int] | None = None,
        correlation: float = 0.9,
        scales: float | Sequence[float] = 1.0,
        mean: float | Sequence[float] = 0.0,
        dim: int | None = None,
    ) -> None:
        super().__init__()
        self.event_shape, d = _shape(event_shape, "CorrelatedGaussian", dim=dim)
        lo = -1.0 / (d - 1) if d > 1 else -math.inf
        if not lo < correlation < 1:
            raise ValueError(
                f"energy.correlation must be in ({lo:g}, 1) for {d} dimensions, got {correlation}"
            )
        s = torch.tensor(_floats(scales, d, "scales"), dtype=F64)
        if not (s > 0).all():
            raise ValueError(f"energy.scales must be > 0, got {scales}")
        mu = torch.tensor(_floats(mean, d, "mean"), dtype=F64)
        corr = (1 - correlation) * torch.eye(d, dtype=F64) + correlation
        cov = s[:, None] * corr * s[None, :]
        chol = torch.linalg.cholesky(cov)
        self.register_buffer("mean", mu)
        self.register_buffer("cov", cov)
        self.register_buffer("chol", chol)
        self.register_buffer("precision", torch.cholesky_inverse(chol))
        self.log_z = 0.5 * d * LOG_2PI + float(chol.diagonal().log().sum())
        self.bounds: Box = _diag_box(mu.tolist(), (4.5 * s).tolist())

    def truth(self) -> Truth:
        return Truth(self.log_z, self.mean, self.cov, self.bounds, self.sample)

    def forward(self, x: Tensor) -> Tensor:
        diff = x.flatten(1) - self.mean.to(x)  # [B, D]
        return 0.5 * ((diff @ self.precision.to(x)) * diff).sum(1)  # [B]

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        dev = generator.device
        d, dtype = self.mean.numel(), self.mean.dtype
        z = torch.randn(n, d, generator=generator, dtype=dtype, device=dev)
        return (self.mean.to(dev) + z @ self.chol.to(dev).T).reshape(n, *self.event_shape)
