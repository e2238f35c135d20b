"""The leapfrog (Störmer–Verlet) integrator of Hamiltonian dynamics, seed eq. 20.

With potential E(x) = −log p̃(x) and kinetic energy ½ pᵀM⁻¹p, one step of size ε is

    p(t+ε/2) = p(t) − ε/2 ∇E(x(t))
    x(t+ε)   = x(t) + ε M⁻¹ p(t+ε/2)
    p(t+ε)   = p(t+ε/2) − ε/2 ∇E(x(t+ε))

(eq. 20 writes +∇log p̃ = −∇E). Consecutive half kicks are fused into one full kick, so L steps
cost exactly L gradient evaluations: the gradient at the end of one step starts the next, and the
last one is returned for the caller to cache. The map is reversible (negate p, integrate, negate
p) and volume preserving, which is what the Metropolis correction of HMC relies on.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

GradFn = Callable[[Tensor], tuple[Tensor, Tensor]]  # x [B, *event] -> (E [B], ∇E [B, *event])
# M⁻¹ of the drift: None (identity), a diagonal tensor shaped like the event (or 0-d), or a
# map p [B, *event] -> M⁻¹p [B, *event] (a dense or low-rank mass, samplers/mass.py)
InvMass = Tensor | Callable[[Tensor], Tensor] | None


def _as_tensor(eps: float | Tensor, x: Tensor) -> Tensor:
    """ε as a tensor in x's dtype (a per-chain float64 ε must not promote float32 chains)."""
    if isinstance(eps, Tensor):
        return eps.to(dtype=x.dtype, device=x.device)
    return x.new_full((), eps)


def leapfrog(
    grad_fn: GradFn,
    x: Tensor,
    p: Tensor,
    grad: Tensor,
    eps: float | Tensor,
    inv_mass: InvMass,
    n_steps: int,
    n_active: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``n_steps`` leapfrog steps of eq. 20 for B chains at once.

    x, p, grad: [B, *event], grad = ∇E(x) (cached, not recomputed). eps: a number, a 0-d tensor
    or per-chain [B, 1, …, 1]. inv_mass: None (identity), the diagonal of M⁻¹ shaped like the
    event (or 0-d), or a callable p -> M⁻¹p (dense or low-rank M⁻¹: one product per step).
    n_active: optional per-chain step counts [B] in 1..n_steps; a chain stops
    (step size 0, exactly frozen) after its count, so chains may take different trajectory
    lengths in one batched pass. The inputs are not modified.

    Returns (x, p, energy, grad) at the end: [B, *event], [B, *event], [B], [B, *event].
    Exactly ``n_steps`` calls of grad_fn.
    """
    if n_steps < 1:
        raise ValueError(f"sampler.n_leapfrog must be >= 1, got {n_steps}")
    if n_active is not None:
        return _leapfrog_masked(grad_fn, x, p, grad, eps, inv_mass, n_steps, n_active)
    eps = _as_tensor(eps, x)
    velocity = inv_mass if callable(inv_mass) else None  # p -> M⁻¹p
    drift = eps if inv_mass is None or velocity is not None else eps * inv_mass  # ε (M⁻¹)
    p = torch.addcmul(p, eps, grad, value=-0.5)  # p(t+ε/2) = p − ε/2 ∇E(x)
    energy = torch.empty(0)
    for k in range(n_steps):
        v = p if velocity is None else velocity(p)
        x = torch.addcmul(x, drift, v)  # x(t+ε) = x + ε M⁻¹ p(t+ε/2)
        energy, grad = grad_fn(x)  # the only gradient of this step
        kick = 0.5 if k == n_steps - 1 else 1.0  # last: closing half kick; else two fused halves
        p.addcmul_(eps, grad, value=-kick)  # p(t+ε) [− ε/2 ∇E of the next step's opening]
    return x, p, energy, grad


def _leapfrog_masked(
    grad_fn: GradFn,
    x: Tensor,
    p: Tensor,
    grad: Tensor,
    eps: float | Tensor,
    inv_mass: InvMass,
    n_steps: int,
    n_active: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Leapfrog with per-chain lengths: step k of chain b uses ε_k = ε·[k ≤ n_b].

    The kick between steps k and k+1 is (ε_k + ε_{k+1})/2, so chain b sees the exact L = n_b
    leapfrog (opening half kick, full kicks, closing half kick at step n_b) and is frozen after.
    """
    shape = (n_steps, -1) + (1,) * (x.dim() - 1)  # [L, B, 1, …]
    steps = torch.arange(1, n_steps + 1, device=x.device)
    active = (steps[:, None] <= n_active[None, :]).to(x.dtype).view(shape)  # [L, B, 1, …]
    eps_k = active * _as_tensor(eps, x)  # ε_k per chain
    eps_next = torch.cat([eps_k[1:], torch.zeros_like(eps_k[:1])])  # ε_{k+1}, 0 after the end
    kicks = 0.5 * (eps_k + eps_next)  # [L, B, 1, …]
    velocity = inv_mass if callable(inv_mass) else None  # p -> M⁻¹p
    drifts = eps_k if inv_mass is None or velocity is not None else eps_k * inv_mass  # ε_k (M⁻¹)
    p = torch.addcmul(p, eps_k[0], grad, value=-0.5)  # opening half kick (n_b ≥ 1)
    energy = torch.empty(0)
    for k in range(n_steps):
        v = p if velocity is None else velocity(p)
        x = torch.addcmul(x, drifts[k], v)  # x + ε_k M⁻¹ p
        energy, grad = grad_fn(x)
        p.addcmul_(kicks[k], grad, value=-1.0)
    return x, p, energy, grad
