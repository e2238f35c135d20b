"""Loss functions for training E_θ without computing Z_θ. Pure functions: tensors in, 0-d loss out.

Sources: the seed's eq. 9 (maximum likelihood gradient); Song & Kingma, "How to Train Your
Energy-Based Models" (arXiv 2101.03288), §2 (maximum likelihood with MCMC), §3 (score matching:
Hyvärinen 2005, sliced SM of Song et al. 2019, denoising SM of Vincent 2011) and §4 (NCE of
Gutmann & Hyvärinen 2010). Throughout, log p_θ(x) = −E_θ(x) − log Z_θ, so the model score is
s_θ(x) = ∇ₓ log p_θ(x) = −∇ₓE_θ(x) and ∇ₓ s_θ = −∇²ₓE_θ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def contrastive_loss(energy_data: Tensor, energy_neg: Tensor, alpha: float = 0.0) -> Tensor:
    """Surrogate whose θ-gradient is minus the log-likelihood gradient, seed eq. 9.

    energy_data: E_θ(x) [B] on data; energy_neg: E_θ(x̃) [M] on model samples x̃ that were
    detached from θ (the sampler's path is not differentiated). Then
    ∇_θ [mean E(data) − mean E(neg)] ≈ −∇_θ E_data log p_θ (eq. 9 with MCMC for the E_{p_θ} term).
    The optional α·mean(E(data)² + E(neg)²) keeps energies near 0 (Du & Mordatch 2019);
    it biases the fit slightly, so keep α small. Returns a 0-d tensor.
    """
    gap = energy_data.mean() - energy_neg.mean()  # eq. 9 surrogate
    reg = (energy_data**2).mean() + (energy_neg**2).mean()
    return gap + alpha * reg


def _energy_and_score_graph(energy_fn: nn.Module, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(x with grad, E(x) [B], ∇ₓE(x) [B, *event]) keeping the graph for second derivatives."""
    x = x.detach().requires_grad_(True)
    energy = energy_fn(x)  # [B]
    (grad,) = torch.autograd.grad(energy.sum(), x, create_graph=True)  # ∇ₓE [B, *event]
    return x, energy, grad


def exact_score_matching_loss(
    energy_fn: nn.Module, x: Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """Hyvärinen (2005) score matching, Song & Kingma §3.1 (after integration by parts).

    J(θ) = E_data[½‖s_θ(x)‖² + tr ∇ₓ s_θ(x)] = E_data[½‖∇ₓE(x)‖² − tr ∇²ₓE(x)]
    (up to a θ-independent constant). The Hessian trace takes D extra backward passes (a loop
    over dimensions, not samples), so use it in low D only; see sliced_score_matching_loss.
    x: [B, *event] data. Returns a 0-d tensor differentiable w.r.t. θ. ``generator`` is unused
    (nothing is drawn): accepted so that every score-matching loss is called alike.
    """
    x, _, grad = _energy_and_score_graph(energy_fn, x)
    g = grad.flatten(1)  # [B, D]
    trace = torch.zeros_like(g[:, 0])  # [B]
    for d in range(g.shape[1]):
        (h_d,) = torch.autograd.grad(g[:, d].sum(), x, create_graph=True)  # row d of ∇²E
        trace = trace + h_d.flatten(1)[:, d]  # ∂²E/∂x_d² [B]
    return (0.5 * (g**2).sum(1) - trace).mean()


def _rademacher(shape: tuple[int, ...], generator: torch.Generator,
                device: torch.device | None, dtype: torch.dtype | None) -> Tensor:
    """±1 with probability ½ each, [*shape]."""
    bits = torch.randint(0, 2, shape, generator=generator, device=device)
    return (2 * bits - 1).to(dtype or torch.get_default_dtype())


def _gaussian(shape: tuple[int, ...], generator: torch.Generator,
              device: torch.device | None, dtype: torch.dtype | None) -> Tensor:
    """Standard normal draws, [*shape]."""
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


# trainer.projection -> how sliced score matching draws its projections (E[v vᵀ] = I).
PROJECTIONS = {"rademacher": _rademacher, "gaussian": _gaussian}


def random_projections(
    shape: tuple[int, ...], generator: torch.Generator, kind: str = "rademacher",
    device: torch.device | None = None, dtype: torch.dtype | None = None,
) -> Tensor:
    """Projection vectors v with E[v vᵀ] = I: Rademacher (±1) or standard Gaussian, [*shape]."""
    if kind not in PROJECTIONS:
        allowed = ", ".join(PROJECTIONS)
        raise ValueError(f"trainer.projection must be one of {allowed}, got {kind!r}")
    return PROJECTIONS[kind](shape, generator, device, dtype)


def sliced_score_matching_loss(
    energy_fn: nn.Module,
    x: Tensor,
    generator: torch.Generator,
    n_projections: int = 1,
    projection: str = "rademacher",
    variance_reduction: bool = False,
) -> Tensor:
    """Sliced score matching (Song et al. 2019), Song & Kingma §3.2.

    J(θ) = E_data E_v[vᵀ ∇ₓs_θ(x) v + ½ (vᵀ s_θ(x))²] = E[½ (vᵀ∇ₓE)² − vᵀ ∇²ₓE v], an unbiased
    estimate of the exact score-matching loss for any v with E[v vᵀ] = I. With
    ``variance_reduction`` the term ½(vᵀ∇E)² is replaced by its expectation ½‖∇E‖² (SSM-VR).
    Each of the ``n_projections`` projections per point costs one Hessian-vector product; all
    are batched as [P·B, *event]. x: [B, *event]. Returns a 0-d tensor.
    """
    xr = x.detach().repeat(n_projections, *([1] * (x.dim() - 1)))  # [P·B, *event]
    v = random_projections(tuple(xr.shape), generator, projection, xr.device, xr.dtype)
    xr, _, grad = _energy_and_score_graph(energy_fn, xr)
    gv = (grad * v).flatten(1).sum(1)  # vᵀ∇E [P·B]
    (hv,) = torch.autograd.grad(gv.sum(), xr, create_graph=True)  # ∇²E v [P·B, *event]
    vhv = (hv * v).flatten(1).sum(1)  # vᵀ∇²E v [P·B]
    sq = (grad**2).flatten(1).sum(1) if variance_reduction else gv**2  # [P·B]
    return (0.5 * sq - vhv).mean()


def denoising_score_matching_loss(
    energy_fn: nn.Module, x: Tensor, sigma: float, generator: torch.Generator
) -> Tensor:
    """Denoising score matching (Vincent 2011), Song & Kingma §3.2.

    With x̃ = x + σε, ε ~ N(0, I), the noise kernel's score is ∇_x̃ log q(x̃|x) = −ε/σ, and
    J(θ) = ½ E‖s_θ(x̃) + ε/σ‖² = ½ E‖∇_x̃E(x̃) − ε/σ‖². Its minimiser is the score of the data
    convolved with N(0, σ²I), not of the data itself: keep σ small against the data's scale.
    x: [B, *event]. Returns a 0-d tensor.
    """
    eps = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)  # [B, *event]
    _, _, grad = _energy_and_score_graph(energy_fn, x + sigma * eps)
    return 0.5 * ((grad - eps / sigma) ** 2).flatten(1).sum(1).mean()


class ScoreMatchingMethod(NamedTuple):
    """A score-matching loss, called as loss(energy_fn, x [B, *event], generator=g, **settings)
    -> 0-d, the names of the trainer settings it takes (its keyword arguments), and its cost:
    gradients(D, **settings) = the gradient passes through E that the loss and the backward of
    the loss take, per data point (a gradient at each of r copies of a point counts r)."""

    loss: Callable[..., Tensor]
    settings: tuple[str, ...]
    gradients: Callable[..., int]


def _exact_gradients(d: int) -> int:
    """∇ₓE, D Hessian rows (each a backward through ∇ₓE), the loss's θ-backward: D + 2."""
    return d + 2


def _sliced_gradients(d: int, n_projections: int, **_: object) -> int:
    """∇ₓE and one Hessian-vector product at each of the P copies, the θ-backward: 2P + 1."""
    return 2 * n_projections + 1


def _denoising_gradients(d: int, **_: object) -> int:
    """∇ₓE at the perturbed copy, the loss's θ-backward (a double backward through it): 2."""
    return 2


# trainer.method -> its loss: the one table of score-matching methods.
SCORE_MATCHING_METHODS = {
    "exact": ScoreMatchingMethod(exact_score_matching_loss, (), _exact_gradients),
    "sliced": ScoreMatchingMethod(
        sliced_score_matching_loss, ("n_projections", "projection", "variance_reduction"),
        _sliced_gradients),
    "denoising": ScoreMatchingMethod(denoising_score_matching_loss, ("sigma",),
                                     _denoising_gradients),
}


def nce_logit(energy: Tensor, log_q: Tensor, log_z: Tensor, noise_ratio: float) -> Tensor:
    """Classifier logit G(x) = log p_θ(x) − log(ν q(x)), with log p_θ = −E − log Z; [B]."""
    return -energy - log_z - math.log(noise_ratio) - log_q


def nce_loss(
    energy_data: Tensor,
    energy_noise: Tensor,
    log_q_data: Tensor,
    log_q_noise: Tensor,
    log_z: Tensor,
    noise_ratio: float = 1.0,
) -> Tensor:
    """Noise-contrastive estimation (Gutmann & Hyvärinen 2010), Song & Kingma §4.

    A logistic classifier tells data x [B] from noise y ~ q [ν·B] with h(u) = σ(G(u)) and G from
    ``nce_logit``; log Z is a free parameter learned with θ, and at the optimum p_θ = p_data with
    the learned log Z the true one. Loss (minimised) per data point:
        −E_data log h(x) − ν E_q log(1 − h(y)) = mean softplus(−G(x)) + ν mean softplus(G(y)).
    energy_*: E_θ [B] / [M]; log_q_*: noise log density at the same points. Returns a 0-d tensor.
    """
    g_data = nce_logit(energy_data, log_q_data, log_z, noise_ratio)  # [B]
    g_noise = nce_logit(energy_noise, log_q_noise, log_z, noise_ratio)  # [M]
    return F.softplus(-g_data).mean() + noise_ratio * F.softplus(g_noise).mean()


# ---- improved contrastive divergence (Du, Li, Tenenbaum & Mordatch 2021) -------------------
# The MLE loss (eq. 9) treats the negatives x̃ as constants, so it ignores that the sampler's
# output q_θ depends on θ. Du et al. add the missing part of ∇_θ KL(q_θ ‖ p_θ):
#   KL(q_θ ‖ p_θ) = E_{x̃ ~ q_θ} E_θ̄(x̃) − H(q_θ) + log Z,
# differentiated only through the samples x̃(θ) (θ̄: a stop-gradient copy of θ in the energy).


def differentiable_langevin(
    energy_fn: nn.Module, x: Tensor, n_steps: int, step_size: float | Tensor,
    noise_scale: float | Tensor, generator: torch.Generator,
) -> Tensor:
    """n_steps unadjusted Langevin steps x_{t+1} = x_t − η ∇ₓE_θ(x_t) + σ ξ_t from x [M, *event]
    (detached first), keeping the graph (create_graph=True): the result [M, *event] is a
    differentiable function of θ, x̃(θ). The same update as samplers/langevin.py's ULA (without
    its gradient clipping); ξ_t ~ N(0, I) from ``generator``. Each step costs one gradient and
    its graph (the backward of a loss on x̃ is a double backward through every step)."""
    x = x.detach().requires_grad_(True)
    for _ in range(n_steps):
        energy = energy_fn(x)  # [M]
        (grad,) = torch.autograd.grad(energy.sum(), x, create_graph=True)  # ∇ₓE_θ, graph to θ
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = x - step_size * grad + noise_scale * noise
    return x


def frozen_energy(energy_fn: nn.Module, x: Tensor) -> Tensor:
    """E_θ̄(x) [M]: the energy with every parameter detached (torch.func.functional_call), so
    gradients reach θ only through x, never through the energy's own weights."""
    params = {name: p.detach() for name, p in energy_fn.named_parameters()}
    buffers = dict(energy_fn.named_buffers())
    return torch.func.functional_call(energy_fn, (params, buffers), (x,))


def kl_sampler_loss(energy_fn: nn.Module, x_tilde: Tensor) -> Tensor:
    """Du et al. 2021 eq. 7's first term, L_KL = mean E_θ̄(x̃(θ)) over negatives x̃ [M, *event]
    that carry their sampler graph (``differentiable_langevin``); 0-d. Its θ-gradient moves the
    sampler's steps towards lower energy: ∇_θ L_KL = mean (∂x̃/∂θ)ᵀ ∇ₓE_θ̄(x̃)."""
    return frozen_energy(energy_fn, x_tilde).mean()


def nearest_neighbour_entropy_loss(x_tilde: Tensor, eps: float = 1e-12) -> Tensor:
    """Du et al.'s entropy term, −Ĥ up to constants: −mean_i log ‖x̃_i − x̃_{nn(i)}‖ over the
    negatives x̃ [M, *event] (M >= 2), nn(i) the nearest other negative (chosen without
    gradient; the distance is differentiated through both points). The Kozachenko–Leonenko
    estimate is Ĥ = D · mean log ‖x̃_i − x̃_{nn(i)}‖ + const, so this is Ĥ/D; distances are
    floored at eps (coincident negatives). Minimising it spreads the negatives out. 0-d."""
    flat = x_tilde.flatten(1)  # [M, D]
    with torch.no_grad():
        d = torch.cdist(flat, flat)  # [M, M]
        d.fill_diagonal_(math.inf)
        nearest = d.argmin(1)  # [M]
    sq = ((flat - flat[nearest]) ** 2).sum(1).clamp_min(eps * eps)  # [M]
    return -0.5 * torch.log(sq).mean()
