"""Mass matrices of HMC and MALA: the inverse mass M⁻¹ = A Aᵀ and its warm-up estimate.

A sampler's ``inv_mass`` is one of
  None                    identity;
  Tensor [D]              diagonal M⁻¹ = diag(d), A = diag(√d);
  DenseInverseMass        full M⁻¹ = Σ with its Cholesky factor L (A = L);
  LowRankInverseMass      M⁻¹ = D^½ (I + V(Λ − I)Vᵀ) D^½, V [D, k] orthonormal, Λ = diag(λ) [k]:
                          A = D^½ (I + V(Λ^½ − I)Vᵀ), applied in O(D·k).
Over the flattened event of D coordinates. ``metric`` turns any of them into a ``Metric`` on a
tensor's dtype/device, with the four maps a sampler needs (all [B, *event] -> [B, *event]):
  momentum(ξ) = A⁻ᵀξ ~ N(0, M);  velocity(p) = M⁻¹p;  whiten(p) = Aᵀp (‖Aᵀp‖² = pᵀM⁻¹p);
  scale(ξ) = Aξ ~ N(0, M⁻¹).

``WithinChainMoments`` estimates M⁻¹ during warm-up from the *within-chain* (co)variance
averaged over chains: on a target with separated modes and chains in each, the spread between
the modes is not part of it (the pooled variance across chains would be). The estimate is
regularised as Stan does: (n/(n+5))·Σ + 1e-3·(5/(n+5))·I, n the number of draws.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Protocol

import torch
from torch import Tensor

from ebm_cli.samplers.base import as_vector

MASS_KINDS = ("diag", "dense", "lowrank", "fixed")  # what warm-up estimates ("fixed": nothing)


class DenseInverseMass(NamedTuple):
    """Full inverse mass: matrix Σ [D, D] (symmetric positive definite), chol L [D, D], Σ = LLᵀ."""

    matrix: Tensor
    chol: Tensor


class LowRankInverseMass(NamedTuple):
    """M⁻¹ = D^½ (I + V(Λ − I)Vᵀ) D^½: diag d [D] > 0, basis V [D, k] orthonormal,
    eigen λ [k] > 0."""

    diag: Tensor
    basis: Tensor
    eigen: Tensor


InverseMass = Tensor | DenseInverseMass | LowRankInverseMass
# plain tensors in a named tuple: safe for a checkpoint read with weights_only=True (a resumed
# run gets the adapted sampler's dense or low-rank mass back, trainers/sampling.py)
torch.serialization.add_safe_globals([DenseInverseMass, LowRankInverseMass])


def marginal_std(inv_mass: InverseMass | None) -> Tensor | None:
    """√diag(M⁻¹) [D]: each coordinate's scale under the mass (None for the identity).

    Low rank: diag(M⁻¹)_i = d_i·(1 + Σ_j V_ij²(λ_j − 1))."""
    if inv_mass is None:
        return None
    if isinstance(inv_mass, DenseInverseMass):
        return inv_mass.matrix.diagonal().sqrt()
    if isinstance(inv_mass, LowRankInverseMass):
        return (inv_mass.diag * (1 + inv_mass.basis.square() @ (inv_mass.eigen - 1))).sqrt()
    return inv_mass.sqrt()


def dense_inverse_mass(matrix: Tensor) -> DenseInverseMass:
    """A DenseInverseMass from Σ [D, D] (its Cholesky factor computed once, in float64)."""
    chol = torch.linalg.cholesky(matrix.double()).to(matrix.dtype)
    return DenseInverseMass(matrix, chol)


class Metric(Protocol):
    """The maps of an inverse mass M⁻¹ = A Aᵀ on chains [B, *event] (see the module docstring)."""

    def momentum(self, z: Tensor) -> Tensor: ...

    def velocity(self, p: Tensor) -> Tensor: ...

    def whiten(self, p: Tensor) -> Tensor: ...

    def scale(self, z: Tensor) -> Tensor: ...


class DiagMetric:
    """A = diag(√d): inv [*event] = d, sqrt [*event] = √d (or 0-d)."""

    def __init__(self, inv: Tensor) -> None:
        self.inv, self.sqrt = inv, inv.sqrt()

    def momentum(self, z: Tensor) -> Tensor:
        return z / self.sqrt

    def velocity(self, p: Tensor) -> Tensor:
        return p * self.inv

    def whiten(self, p: Tensor) -> Tensor:
        return p * self.sqrt

    def scale(self, z: Tensor) -> Tensor:
        return z * self.sqrt


class DenseMetric:
    """A = L (Σ = LLᵀ), rows of the flattened chains: Aξ = ξLᵀ, Aᵀp = pL, M⁻¹p = pΣ, A⁻ᵀξ = ξL⁻¹."""

    def __init__(self, matrix: Tensor, chol: Tensor) -> None:
        self.matrix, self.chol = matrix, chol

    def momentum(self, z: Tensor) -> Tensor:
        flat = torch.linalg.solve_triangular(self.chol, z.flatten(1), upper=False, left=False)
        return flat.view_as(z)  # X L = ξ  ->  X = ξ L⁻¹

    def velocity(self, p: Tensor) -> Tensor:
        return (p.flatten(1) @ self.matrix).view_as(p)

    def whiten(self, p: Tensor) -> Tensor:
        return (p.flatten(1) @ self.chol).view_as(p)

    def scale(self, z: Tensor) -> Tensor:
        return (z.flatten(1) @ self.chol.T).view_as(z)


class LowRankMetric:
    """A = D^½ Q, Q = I + V(Λ^½ − I)Vᵀ symmetric; Q^s v = v + ((vV)·(λ^(s/2) − 1))Vᵀ."""

    def __init__(self, diag: Tensor, basis: Tensor, eigen: Tensor) -> None:
        self.sqrt_d, self.basis = diag.sqrt(), basis
        self.c_half, self.c_full, self.c_inv = eigen.sqrt() - 1, eigen - 1, eigen.rsqrt() - 1

    def _q(self, v: Tensor, c: Tensor) -> Tensor:
        return v + ((v @ self.basis) * c) @ self.basis.T  # [B, D]

    def momentum(self, z: Tensor) -> Tensor:  # A⁻ᵀξ = D^-½ Q⁻¹ ξ
        return (self._q(z.flatten(1), self.c_inv) / self.sqrt_d).view_as(z)

    def velocity(self, p: Tensor) -> Tensor:  # D^½ Q² D^½ p
        return (self._q(p.flatten(1) * self.sqrt_d, self.c_full) * self.sqrt_d).view_as(p)

    def whiten(self, p: Tensor) -> Tensor:  # Q D^½ p
        return self._q(p.flatten(1) * self.sqrt_d, self.c_half).view_as(p)

    def scale(self, z: Tensor) -> Tensor:  # D^½ Q ξ
        return (self._q(z.flatten(1), self.c_half) * self.sqrt_d).view_as(z)


def event_size(x: Tensor) -> int:
    return math.prod(x.shape[1:])


def metric(inv_mass: InverseMass, x: Tensor, key: str = "inv_mass") -> Metric:
    """The Metric of ``inv_mass`` on x's dtype and device, shapes checked against x's event."""
    d = event_size(x)
    to = {"dtype": x.dtype, "device": x.device}
    if isinstance(inv_mass, DenseInverseMass):
        if inv_mass.matrix.shape != (d, d):
            raise ValueError(f"sampler.{key} is {tuple(inv_mass.matrix.shape)} but the event "
                             f"{tuple(x.shape[1:])} has {d} coordinates")
        return DenseMetric(inv_mass.matrix.to(**to), inv_mass.chol.to(**to))
    if isinstance(inv_mass, LowRankInverseMass):
        if inv_mass.diag.numel() != d or inv_mass.basis.shape[0] != d:
            raise ValueError(f"sampler.{key} is over {inv_mass.diag.numel()} coordinates but the "
                             f"event {tuple(x.shape[1:])} has {d}")
        return LowRankMetric(*(t.to(**to) for t in inv_mass))
    v = inv_mass.to(**to)
    if v.ndim != 0 and v.numel() != d:
        raise ValueError(f"sampler.{key} has {v.numel()} entries but the event "
                         f"{tuple(x.shape[1:])} has {d} coordinates")
    return DiagMetric(v if v.ndim == 0 else v.view(x.shape[1:]))


def check_inverse_mass(value: object) -> InverseMass | None:
    """A config's inv_mass (None, numbers, a list, a list of lists, a tensor) -> InverseMass.

    Plain values are checked (> 0, or symmetric positive definite); tensors set by warm-up are
    checked for shape only (reading their values would synchronise with the device).
    """
    if value is None or isinstance(value, (DenseInverseMass, LowRankInverseMass)):
        return value
    if isinstance(value, Tensor) and value.ndim == 2:
        if value.shape[0] != value.shape[1] or not value.is_floating_point():
            raise ValueError(f"sampler.inv_mass must be a square float matrix, got shape "
                             f"{tuple(value.shape)} and dtype {value.dtype}")
        return dense_inverse_mass(value)
    if isinstance(value, Tensor):
        return as_vector("inv_mass", value)  # shape/dtype only
    rows = list(value) if not isinstance(value, (int, float, str, bytes)) else None
    if rows and not isinstance(rows[0], (int, float)):  # a list of lists: a dense matrix
        try:
            matrix = torch.tensor([[float(v) for v in row] for row in rows],
                                  dtype=torch.get_default_dtype())
        except (TypeError, ValueError):
            raise ValueError(f"sampler.inv_mass must be numbers, got {value!r}") from None
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"sampler.inv_mass must be a square matrix, got {value!r}")
        if not torch.allclose(matrix, matrix.T) or torch.linalg.cholesky_ex(matrix.double()).info:
            raise ValueError("sampler.inv_mass must be symmetric positive definite, got "
                             f"{matrix.tolist()}")
        return dense_inverse_mass(matrix)
    vector = as_vector("inv_mass", value)  # type: ignore[arg-type]
    if not bool((vector > 0).all()):  # a list from the config: plain CPU values
        raise ValueError(f"sampler.inv_mass must be > 0 everywhere, got {value}")
    return vector


def check_mass_kind(mass: object, rank: object) -> None:
    """Refuse an unknown ``mass`` or a ``mass_rank`` that is not an integer >= 1."""
    if mass not in MASS_KINDS:
        raise ValueError(f"sampler.mass must be one of {', '.join(MASS_KINDS)}, got {mass!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"sampler.mass_rank must be an integer >= 1, got {rank!r}")


class WithinChainMoments:
    """Within-chain (co)variance of a window of draws, averaged over the B chains, in float64.

    W = 1/(B(T−1)) Σ_b Σ_t (x_bt − x̄_b)(x_bt − x̄_b)ᵀ, accumulated as Σ_bt d dᵀ − Σ_b s_b s_bᵀ/T
    with d = x_bt − x_b0 (each chain shifted by its first point: no cancellation) and s_b = Σ_t d.
    Memory O(B·D) and, for ``dense``, O(D²): per-chain outer products are never stored.
    """

    def __init__(self, x: Tensor, dense: bool) -> None:
        self.shift = x.detach().flatten(1).double().clone()  # [B, D]
        self.s1 = torch.zeros_like(self.shift)  # [B, D]
        d = self.shift.shape[1]
        self.dense = dense
        self.s2 = self.shift.new_zeros((d, d) if dense else (d,))
        self.t = 0  # draws per chain so far, a Python int (no sync)

    def add(self, x: Tensor) -> None:
        d = x.detach().flatten(1).double() - self.shift  # [B, D]
        self.s1 += d
        if self.dense:
            self.s2.addmm_(d.T, d)
        else:
            self.s2 += d.square().sum(0)
        self.t += 1

    @property
    def n(self) -> int:
        """Draws in the window, all chains."""
        return self.t * self.shift.shape[0]

    def covariance(self) -> Tensor:
        """Regularised within-chain covariance: [D, D] if dense else its diagonal [D]."""
        t, b = self.t, self.shift.shape[0]
        if self.dense:
            w = (self.s2 - self.s1.T @ self.s1 / t) / (b * (t - 1))
            w = 0.5 * (w + w.T)
            eye = torch.eye(w.shape[0], dtype=w.dtype, device=w.device)
        else:
            w = (self.s2 - self.s1.square().sum(0) / t) / (b * (t - 1))
            eye = torch.ones_like(w)
        n = self.n
        return (n / (n + 5.0)) * w + 1e-3 * (5.0 / (n + 5.0)) * eye

    def estimate(self, kind: str, rank: int, dtype: torch.dtype) -> InverseMass:
        """The inverse mass of ``kind`` (diag, dense, lowrank with ``rank``) in ``dtype``."""
        cov = self.covariance()
        if kind == "diag":
            return cov.to(dtype)
        if kind == "dense":
            return DenseInverseMass(cov.to(dtype), torch.linalg.cholesky(cov).to(dtype))
        return low_rank(cov, rank, dtype)


def low_rank(cov: Tensor, rank: int, dtype: torch.dtype) -> LowRankInverseMass:
    """Diagonal d = diag Σ plus the k = rank eigenpairs of C = D^-½ Σ D^-½ farthest from 1
    (largest |log λ|): M⁻¹ = D^½ (I + V(Λ − I)Vᵀ) D^½ is exact on span V and d elsewhere."""
    d = cov.diagonal().clamp_min(1e-12)
    inv_sqrt = d.rsqrt()
    corr = cov * inv_sqrt[:, None] * inv_sqrt[None, :]
    eigen, vectors = torch.linalg.eigh(0.5 * (corr + corr.T))
    eigen = eigen.clamp_min(1e-8)
    k = min(rank, eigen.numel())
    idx = eigen.log().abs().argsort(descending=True)[:k]
    return LowRankInverseMass(d.to(dtype), vectors[:, idx].to(dtype), eigen[idx].to(dtype))
