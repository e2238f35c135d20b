"""Where negative samples start: noise fitted to the data, and a replay buffer of past negatives.

``DataNoise`` is the simple distribution that MCMC chains are (re)started from in MLE training,
and the noise q that NCE contrasts the data with. ``ReplayBuffer`` keeps past negatives and
restarts a fraction of them from noise (Du & Mordatch 2019, "Implicit Generation and
Generalization in Energy-Based Models"). ``reinitialise`` restarts chains from noise, either
outright or as an independence Metropolis–Hastings move that keeps p_θ invariant.
``state_to_dict`` / ``state_from_dict`` keep a sampler's whole chain state (velocities, parallel
tempering's hotter replicas) in a checkpoint that loads with weights_only=True.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ebm_cli.resources import gib, physical_memory
from ebm_cli.samplers.base import ChainState, energy_only, metropolis_accept, select

log = logging.getLogger(__name__)

# A full [D, D] covariance costs D² float64 (×3 with its Cholesky and the centred copy) and
# O(N D² + D³) time: above this D, or above 1/COV_MEMORY_SHARE of memory, the Gaussian is
# diagonal. D = 4096 is 128 MiB per matrix and some seconds on two cores.
MAX_FULL_COV_DIM = 4096
COV_MEMORY_SHARE = 8


def full_covariance_fits(d: int, memory: int | None = None) -> bool:
    """Can a [d, d] float64 covariance be built here (d ≤ MAX_FULL_COV_DIM and d²·8 bytes at
    most 1/COV_MEMORY_SHARE of physical memory)?"""
    memory = physical_memory() if memory is None else memory
    return d <= MAX_FULL_COV_DIM and d * d * 8 <= memory / COV_MEMORY_SHARE


def on_device(t: Tensor, device: torch.device | str) -> bool:
    """Is t on ``device``? A device without an index (a generator's ``cuda``) means the current
    one, so ``cuda`` and a tensor's ``cuda:0`` compare equal (``!=`` says they differ)."""
    device = torch.device(device)
    if t.device.type != device.type:
        return False
    if device.index is None and device.type == "cuda":
        return t.device.index == torch.cuda.current_device()
    return device.index is None or t.device.index == device.index

class UniformBox:
    """q = uniform over the data's bounding box, its half-widths multiplied by ``scale``.

    Fitted to flat [N, D] float64 data; draws and log densities are [n, D] / [B] float64.
    """

    diagonal = False  # (only the Gaussian has a full or a diagonal form)

    def __init__(self, flat: Tensor, scale: float, key: str) -> None:
        lo, hi = flat.min(0).values, flat.max(0).values  # [D]
        centre, half = 0.5 * (lo + hi), 0.5 * scale * (hi - lo).clamp_min(1e-6)
        self.low, self.width = centre - half, 2 * half  # [D]
        self.log_norm = -torch.log(self.width).sum()  # log q inside the box

    def to(self, device: torch.device) -> None:
        """Keep the parameters on the device in use (moved once, not every call)."""
        if not on_device(self.log_norm, device):
            self.low, self.width = self.low.to(device), self.width.to(device)
            self.log_norm = self.log_norm.to(device)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n draws low + u ⊙ width, u ~ U[0, 1)^D: [n, D] float64 on the generator's device."""
        u = torch.rand((n, self.low.numel()), generator=generator, device=generator.device,
                       dtype=torch.float64)
        return self.low + u * self.width

    def log_prob(self, flat: Tensor) -> Tensor:
        """log q [B] for flat [B, D] float64: −Σ log width inside the box, −inf outside."""
        inside = ((flat >= self.low) & (flat <= self.low + self.width)).all(1)  # [B]
        return torch.where(inside, self.log_norm, -torch.inf)


class FittedGaussian:
    """q = N(μ, Σ·scale²) with the data's mean and full covariance (+ a 1e-6 jitter), or
    N(μ, diag σ²·scale²) when a [D, D] covariance does not fit (``full_covariance_fits``),
    with a logged warning naming ``key``; ``diagonal`` says which.

    Fitted to flat [N, D] float64 data; draws and log densities are [n, D] / [B] float64.
    """

    def __init__(self, flat: Tensor, scale: float, key: str) -> None:
        d = flat.shape[1]
        self.mean = flat.mean(0)  # [D]
        self.chol = self.std = None  # [D, D] (full) or [D] (diagonal)
        self.diagonal = not full_covariance_fits(d)
        if self.diagonal:
            log.warning("%s=gaussian: D = %d features is more than a full [D, D] "
                        "covariance allows (D <= %d and D²·8 bytes = %s <= 1/%d of "
                        "memory); using a diagonal Gaussian instead", key, d,
                        MAX_FULL_COV_DIM, gib(d * d * 8), COV_MEMORY_SHARE)
            var = flat.var(0) * scale**2  # [D]
            var = var + 1e-6 * var.mean().clamp_min(1e-12)  # same jitter as the full case
            self.std = var.sqrt()  # σ [D]
            log_det_half = torch.log(self.std).sum()  # ½ log det Σ = Σ log σ_i
        else:
            cov = torch.atleast_2d(torch.cov(flat.T)) * scale**2  # [D, D]
            jitter = 1e-6 * cov.diagonal().mean().clamp_min(1e-12)
            eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
            self.chol = torch.linalg.cholesky(cov + jitter * eye)  # Σ = L Lᵀ, [D, D]
            log_det_half = torch.log(self.chol.diagonal()).sum()  # ½ log det Σ
        self.log_norm = -0.5 * d * math.log(2 * math.pi) - log_det_half

    def to(self, device: torch.device) -> None:
        """Keep the parameters on the device in use (moved once, not every call)."""
        if not on_device(self.log_norm, device):
            self.mean, self.log_norm = self.mean.to(device), self.log_norm.to(device)
            if self.diagonal:
                self.std = self.std.to(device)
            else:
                self.chol = self.chol.to(device)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n draws μ + L z (or μ + σ ⊙ z), z ~ N(0, I): [n, D] float64 on the generator's
        device."""
        z = torch.randn((n, self.mean.numel()), generator=generator, device=generator.device,
                        dtype=torch.float64)
        if self.diagonal:
            return self.mean + z * self.std  # μ + σ ⊙ z, [n, D]
        return self.mean + z @ self.chol.T  # μ + L z, [n, D]

    def log_prob(self, flat: Tensor) -> Tensor:
        """log q [B] for flat [B, D] float64 (exact, nats)."""
        if self.diagonal:
            z = (flat - self.mean) / self.std  # [B, D], σ⁻¹(x − μ)
            return self.log_norm - 0.5 * (z**2).sum(1)
        diff = (flat - self.mean).T  # [D, B]
        z = torch.linalg.solve_triangular(self.chol, diff, upper=False)  # L⁻¹(x − μ)
        return self.log_norm - 0.5 * (z**2).sum(0)


# The noise chains (re)start from and NCE contrasts with, by its config name (trainer.noise_init,
# trainer.noise): the one table of them.
NOISE_KINDS = {"uniform": UniformBox, "gaussian": FittedGaussian}


class DataNoise:
    """A simple distribution q fitted to the data: one of NOISE_KINDS, ``uniform`` over the
    data's bounding box or ``gaussian`` with the data's mean and full covariance.

    train: [N, *event]. ``scale`` widens the distribution: the box's half-widths, or the
    Gaussian's standard deviations, are multiplied by it. ``key``/``scale_key`` name the config
    entries in error messages. Sampling takes an explicit generator; log_prob is exact (nats).
    With more features than a [D, D] covariance can afford (``full_covariance_fits``) the
    Gaussian is diagonal, N(μ, diag σ²), with a logged warning; ``diagonal`` says which.
    """

    def __init__(
        self,
        train: Tensor,
        kind: str = "uniform",
        scale: float = 1.0,
        key: str = "trainer.noise",
        scale_key: str = "trainer.noise_scale",
    ) -> None:
        if kind not in NOISE_KINDS:
            raise ValueError(f"{key} must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
        if not scale > 0:
            raise ValueError(f"{scale_key} must be > 0, got {scale}")
        if train.ndim < 2 or train.shape[0] < 2:
            raise ValueError(f"train_data must hold at least 2 points [N, *event] for {key}")
        self.kind = kind
        self.event_shape = tuple(train.shape[1:])
        self.dtype = train.dtype
        self.law = NOISE_KINDS[kind](train.detach().flatten(1).double(), scale, key)  # [N, D]
        self.diagonal = self.law.diagonal

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n draws [n, *event] in the data's dtype, on the generator's device."""
        self.law.to(generator.device)
        return self.law.sample(n, generator).to(self.dtype).view(n, *self.event_shape)

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) [B] for x [B, *event] (−inf outside the box for ``uniform``)."""
        flat = x.flatten(1).double()  # [B, D]
        self.law.to(flat.device)
        return self.law.log_prob(flat).to(x.dtype)


def reinitialise(
    x: Tensor,
    noise: DataNoise,
    prob: float,
    generator: torch.Generator,
    energy_fn: nn.Module | None = None,
) -> tuple[Tensor, Tensor]:
    """Restart each chain of x [B, *event] from a fresh noise draw y ~ q with probability ``prob``.

    With ``energy_fn`` None the restart is unconditional (Du & Mordatch 2019): it keeps the
    chains exploring but pulls them towards q. With ``energy_fn`` the restart is an
    independence Metropolis–Hastings move, accepted with probability
    min(1, exp(E(x) − E(y)) q(x) / q(y)), which leaves p_θ ∝ exp(−E) invariant and moves
    chains between modes in proportion to the model's mass (local samplers cannot).
    Returns (new x [B, *event], restarted [B] bool).
    """
    if prob <= 0:
        return x, torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    y = noise.sample(x.shape[0], generator).to(x.device)  # [B, *event]
    restart = torch.rand(x.shape[0], generator=generator, device=x.device) < prob  # [B]
    if energy_fn is not None:
        energy = energy_only(energy_fn, torch.cat([x, y]))  # [2B]
        e_x, e_y = energy[: x.shape[0]], energy[x.shape[0] :]
        restart = restart & _independence_test(x, y, e_x, e_y, noise, generator)
    return select(restart, y, x), restart


def _independence_test(x: Tensor, y: Tensor, e_x: Tensor, e_y: Tensor, noise: DataNoise,
                       generator: torch.Generator) -> Tensor:
    """[B] bool: accept y ~ q against x [B, *event] with min(1, exp(E(x) − E(y)) q(x) / q(y)),
    from the energies e_x, e_y [B] (NaN: rejected)."""
    b = x.shape[0]
    log_q = noise.log_prob(torch.cat([x, y]))  # [2B]
    log_ratio = (e_x - e_y) + (log_q[:b] - log_q[b:])  # log α [B]
    return metropolis_accept(log_ratio, generator)[1]


def restart_chains(
    state: ChainState,
    noise: DataNoise,
    prob: float,
    generator: torch.Generator,
    energy_fn: nn.Module,
    init: Callable[[nn.Module, Tensor], ChainState],
) -> ChainState:
    """``reinitialise``'s independence-MH restart applied to a sampler's state, for a fixed E.

    The same draws in the same order and the same test as reinitialise(state.x, noise, prob,
    generator, energy_fn) followed by the sampler's ``init`` at the new points, without paying
    twice for what is known: E(x) is the state's cached energy (valid only while E stays as it
    was when the state was computed: evaluation chains, not a trainer's, whose θ moves), and the
    proposals get ``init(energy_fn, y)`` (E(y), and ∇E(y) where the sampler caches it), so a
    chain that moves needs no second evaluation. HMC at B chains: one ``init`` over B points
    per restart instead of a forward pass over 2B and ``init`` over B.

    state: a ChainState [B, *event] whose energy, where not None, is E(x). Each cached field
    of the result is chosen per chain between the proposals' and the state's, as
    init(select(restart, y, x)) would hold it; a field the state lacks (None) stays None, for
    the sampler's next step to evaluate.
    """
    x = state.x
    b = x.shape[0]
    y = noise.sample(b, generator).to(x.device)  # [B, *event]
    restart = torch.rand(b, generator=generator, device=x.device) < prob  # [B]
    proposal = init(energy_fn, y)
    e_x = state.energy if state.energy is not None else energy_only(energy_fn, x)  # [B]
    e_y = proposal.energy if proposal.energy is not None else energy_only(energy_fn, y)
    restart = restart & _independence_test(x, y, e_x, e_y, noise, generator)
    energy = None if proposal.energy is None else torch.where(restart, e_y, e_x)
    grad = (None if proposal.grad is None or state.grad is None
            else select(restart, proposal.grad, state.grad))
    return ChainState(select(restart, y, x), energy, grad)


class ReplayBuffer:
    """A fixed-size tensor of past negatives [size, *event] (Du & Mordatch 2019).

    ``sample`` draws distinct slots without replacement (so a write-back never collides),
    ``write`` stores the refined chains back into the same slots. Filled lazily from noise.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"trainer.buffer_size must be >= 1, got {size}")
        self.size = size
        self.data: Tensor | None = None  # [size, *event]

    def fill(self, x: Tensor) -> None:
        """Set the whole buffer to x [size, *event]."""
        if x.shape[0] != self.size:
            raise ValueError(f"buffer fill needs {self.size} points, got {x.shape[0]}")
        self.data = x.detach().clone()

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """(slots [n], x [n, *event]) for n distinct slots."""
        assert self.data is not None, "fill the buffer first"
        idx = torch.randperm(self.size, generator=generator, device=self.data.device)[:n]
        return idx, self.data[idx]

    def write(self, idx: Tensor, x: Tensor) -> None:
        """Store x [n, *event] in slots idx [n]."""
        assert self.data is not None, "fill the buffer first"
        self.data[idx] = x.detach()


# ---- a sampler's chain state in a checkpoint ---------------------------------------------------

STATE_CLASS = "__state__"  # the key naming a state's NamedTuple class in ``state_to_dict``


@functools.cache
def chain_state_classes() -> dict[str, type]:
    """The chain states a checkpoint may hold, by their saved name "module:Class": ChainState,
    KineticState and TemperingState, the only classes ``state_from_dict`` builds (a checkpoint
    comes from outside; it must not name other code, not even another NamedTuple of the
    package). Imported here, not at the top: the samplers' modules import this one's callers."""
    from ebm_cli.samplers.kinetic import KineticState
    from ebm_cli.samplers.tempering import TemperingState

    return {f"{c.__module__}:{c.__qualname__}": c
            for c in (ChainState, KineticState, TemperingState)}


def is_package_state(state: Any) -> bool:
    """Is ``state`` one of ``chain_state_classes`` with plain fields (tensors, numbers, None,
    nested such states), i.e. one that ``state_from_dict`` rebuilds? (A user's sampler keeps
    only its positions.)"""
    if type(state) in chain_state_classes().values():
        return all(is_package_state(v) for v in state)
    return state is None or isinstance(state, (Tensor, bool, int, float, str))


def state_to_dict(state: Any) -> Any:
    """A chain state (a NamedTuple of tensors, numbers, None and nested states: ChainState,
    KineticState, TemperingState) as nested plain dicts {STATE_CLASS: "module:Class", field:
    value}, tensors detached: what torch.load(weights_only=True) reads back."""
    if type(state) in chain_state_classes().values():
        cls = type(state)
        out = {STATE_CLASS: f"{cls.__module__}:{cls.__qualname__}"}
        out.update({k: state_to_dict(v) for k, v in state._asdict().items()})
        return out
    if isinstance(state, Tensor):
        return state.detach()
    if state is None or isinstance(state, (bool, int, float, str)):
        return state
    raise TypeError(f"a chain state field of type {type(state).__name__} cannot be saved")


def state_from_dict(saved: Any) -> Any:
    """The chain state ``state_to_dict`` made. Only ``chain_state_classes`` are rebuilt (a
    checkpoint names no other code to import or call)."""
    if not isinstance(saved, dict):
        return saved
    name = str(saved[STATE_CLASS])
    cls = chain_state_classes().get(name)
    if cls is None:
        raise ValueError(f"a checkpointed chain state names {name}, not one of "
                         f"{', '.join(sorted(chain_state_classes()))}")
    return cls(**{k: state_from_dict(v) for k, v in saved.items() if k != STATE_CLASS})
