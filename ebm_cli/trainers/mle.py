"""Maximum-likelihood training with MCMC negatives (the seed's eq. 9; Song & Kingma §2).

∇_θ log-likelihood = −E_data ∇_θE + E_{p_θ} ∇_θE (eq. 9). The second expectation uses samples
from a few MCMC steps; where the chains start decides the method:

- ``noise``: short-run MCMC from fresh noise every step (Nijkamp et al. 2019);
- ``data``: contrastive divergence CD-k, chains start at the data batch (Hinton 2002);
- ``persistent``: PCD, chains carry over between steps (Tieleman 2008);
- ``replay_buffer``: a buffer of past negatives, a batch of which is refined each step
  (Du & Mordatch 2019).

In ``persistent`` and ``replay_buffer`` a fraction ``reinit_prob`` of chains restarts from noise
each step, so the chains keep exploring regions the model has not yet learnt to avoid.

Temperature: the sampler's stationary law is p_θ^(1/T). With Langevin's default noise
(σ = sqrt(2η), T = 1) and a Metropolis-adjusted sampler, negatives target p_θ itself; short-run
ULA with smaller noise (T < 1, common for images) learns an energy whose exp(−E) is not the data
density, so held-out NLL by quadrature is then not meaningful.

Improved contrastive divergence (Du, Li, Tenenbaum & Mordatch 2021), off by default: eq. 9
ignores that the negatives' law q_θ depends on θ. With ``kl_weight`` or ``entropy_weight`` > 0,
each update ends with ``kl_steps`` differentiable ULA steps x̃ = x − η∇ₓE_θ(x) + σξ
(losses.differentiable_langevin, the graph kept through them), and the loss gains

    kl_weight · mean E_θ̄(x̃(θ)) + entropy_weight · (−mean_i log ‖x̃_i − x̃_nn(i)‖),

the KL(q_θ ‖ p_θ) = E_q E_θ̄ − H(q) + const of the paper's eq. 7 (θ̄: parameters detached, so
both terms reach θ only through the samples). x̃ (detached) are the negatives of eq. 9 and what
the chains keep. With ``sampler=langevin`` these steps are the sampler's own update (its η, σ);
after another sampler they use ``kl_step_size`` (σ = √(2η), unadjusted: biased by O(η)).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ebm_cli.samplers.adaptation import AdaptationState, StepSizeAdaptation
from ebm_cli.samplers.base import Info, Sampler, StepSizeAdaptable, declares
from ebm_cli.samplers.compiled import run_transitions
from ebm_cli.samplers.langevin import Langevin
from ebm_cli.samplers.stats import transitions_stats
from ebm_cli.samplers.tempering import Replicated
from ebm_cli.trainers.buffer import (
    DataNoise,
    ReplayBuffer,
    is_package_state,
    reinitialise,
    state_from_dict,
    state_to_dict,
)
from ebm_cli.trainers.losses import (
    contrastive_loss,
    differentiable_langevin,
    kl_sampler_loss,
    nearest_neighbour_entropy_loss,
)
from ebm_cli.trainers.optim import LRSchedule, ParameterUpdate

# A restart of dual averaging during MLE's warm-up moves μ to log(10 ε̄), H&G's cold-start
# shrink, as MLE always has (θ moves between restarts); ``warmup``'s windows of a fixed target
# use 1, whose smaller bias on the mean acceptance is not yet measured for MLE.
RESTART_SHRINK = 10.0
# What a start rule returns: (x0 [M, *event], restart rate 0-d, what keeps the negatives or None)
Start = tuple[Tensor, Tensor, Callable[[Tensor], None] | None]


class GradientCount:
    """A running count of gradient passes per update, without a host sync per step.

    ``add_fixed`` takes what the settings fix (a Python int), ``add_counted`` a per-chain
    count [B] from a sampler's Info (its mean is summed on the device, float64); ``mean()``
    reads the total back once: (fixed + counted) / updates, 0 before the first update.
    """

    def __init__(self) -> None:
        self.fixed = 0
        self.counted: Tensor | None = None  # 0-d float64 on the chains' device
        self.updates = 0

    def add_fixed(self, n: int) -> None:
        self.fixed += n

    def add_counted(self, per_chain: Tensor) -> None:
        mean = per_chain.double().mean()
        self.counted = mean if self.counted is None else self.counted + mean

    def end_update(self) -> None:
        self.updates += 1

    def mean(self) -> float:
        """Gradients per update so far (one host read)."""
        if self.updates == 0:
            return 0.0
        counted = 0.0 if self.counted is None else float(self.counted)
        return (self.fixed + counted) / self.updates

    def state_dict(self) -> dict[str, Any]:
        counted = self.counted if self.counted is not None else torch.zeros((), dtype=torch.float64)
        return {"fixed": self.fixed, "counted": counted.detach().clone(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fixed, self.updates = int(state["fixed"]), int(state["updates"])
        self.counted = state["counted"]


class MLETrainer:
    """Contrastive (maximum-likelihood) training of E_θ with MCMC negatives, seed eq. 9.

    energy_fn: E_θ, x [B, *event] -> [B]. sampler: any ``Sampler``; required. train_data:
    [N, *event], to fit the noise chains start from.
    optimizer: a partial taking the parameters (Hydra ``_partial_: true``).
    alpha: weight of the energy-magnitude penalty α·mean(E(data)² + E(neg)²).
    n_chains: negatives per update (``init="data"`` uses the batch instead).
    sampler_steps: sampler transitions k per update. init: where chains start, one of INITS
    (the mapping at the end of this module).
    reinit_prob: per update, the chance that each chain proposes a restart from noise
    (persistent, replay_buffer). reinit_accept: restarts are independence-MH moves, which keep
    p_θ invariant and move chains between modes in proportion to the model's mass, instead of
    plain replacement (Du & Mordatch; for images, where an MH test would reject every noise
    proposal; then use reinit_prob ≈ 0.05). buffer_size: replay-buffer slots.
    noise_init / noise_scale: ``uniform`` over the data's box or ``gaussian`` fitted to the
    data, widened by noise_scale. grad_clip: max gradient norm or None. lr_schedule: a
    partial taking the optimizer (a torch LR scheduler, stepped once per update) or None.
    warmup_steps: during the first updates a StepSizeAdaptable sampler's step size is tuned
    by dual averaging (Hoffman & Gelman 2014; samplers/adaptation.py StepSizeAdaptation, the
    mechanism ``warmup`` uses) towards its ``target_accept``, then frozen at the averaged value;
    other samplers (unadjusted Langevin, independence MH) are not tuned.
    θ moves fastest early on, when the energy is flat and huge steps are accepted, so dual
    averaging restarts from its average at 1/2, 3/4 and 7/8 of the warm-up (like Stan's
    windows) and the frozen step size fits the late warm-up model.
    The sampler's statistics (``sampler_stats``: acceptance, and HMC's divergences and |ΔH|)
    are averaged over the k transitions of each update.
    A Replicated sampler (parallel tempering, samplers/tempering.py) yields its T = 1 chains as
    the negatives; with ``persistent`` and ``replay_buffer`` its hotter replicas carry over
    between updates (``restate``: the cold chains are replaced, restarts touch them only) and
    are checkpointed. Its ladder is not adapted here (θ moves; its warm-up needs a fixed
    energy): it runs with the configured ladder and step scales √T_k.
    kl_weight, entropy_weight (>= 0, default 0: off), kl_steps (>= 1), kl_step_size (None: the
    Langevin sampler's; > 0, required after any other sampler): improved contrastive divergence
    (module docstring), kl_steps differentiable ULA steps after the sampler's sampler_steps.
    Defaults are those tuned on two_gaussians (configs/trainer/mle.yaml).
    Cost (``gradients_per_update``, counted per chain): the start's ∇E where the sampler's
    ``init`` caches it (HMC, MALA, kinetic: 1; ULA, MH: 0; tempering: K, one per replica) +
    Σ over the k transitions of the Info's mean ``grad_evals`` (HMC: L, the batched count, also
    with jittered or ChEES-adapted L; MALA, ULA: 1; MH: 0, its energy evaluations are forward
    passes, not gradients; tempering: K·g) + kl_steps (improved CD) + 1 (the loss's θ-gradient,
    which with improved CD back-propagates through the kl_steps gradients: a double backward).
    A user's sampler whose Info is only an AcceptInfo adds no sampler gradients (unknown).
    """

    def __init__(
        self,
        energy_fn: nn.Module,
        sampler: Sampler,
        train_data: Tensor,
        optimizer: Callable[..., torch.optim.Optimizer],
        alpha: float = 0.01,
        n_chains: int = 256,
        sampler_steps: int = 1,
        init: str = "persistent",
        reinit_prob: float = 1.0,
        reinit_accept: bool = True,
        buffer_size: int = 10000,
        noise_init: str = "gaussian",
        noise_scale: float = 1.0,
        grad_clip: float | None = None,
        warmup_steps: int = 400,
        lr_schedule: LRSchedule | None = None,
        kl_weight: float = 0.0,
        entropy_weight: float = 0.0,
        kl_steps: int = 1,
        kl_step_size: float | None = None,
    ) -> None:
        if sampler is None:
            raise ValueError("trainer=mle needs a sampler (choose one with sampler=...)")
        if init not in INITS:  # one rule per name, INITS below
            raise ValueError(f"trainer.init must be one of {', '.join(INITS)}, got {init!r}")
        if alpha < 0:
            raise ValueError(f"trainer.alpha must be >= 0, got {alpha}")
        if n_chains < 1:
            raise ValueError(f"trainer.n_chains must be >= 1, got {n_chains}")
        if sampler_steps < 1:
            raise ValueError(f"trainer.sampler_steps must be >= 1, got {sampler_steps}")
        if not 0 <= reinit_prob <= 1:
            raise ValueError(f"trainer.reinit_prob must be in [0, 1], got {reinit_prob}")
        if init == "replay_buffer" and buffer_size < n_chains:
            raise ValueError(
                f"trainer.buffer_size must be >= trainer.n_chains ({n_chains}), got {buffer_size}"
            )
        if warmup_steps < 0:
            raise ValueError(f"trainer.warmup_steps must be >= 0, got {warmup_steps}")
        self._improved_cd = _improved_cd_steps(sampler, kl_weight, entropy_weight, kl_steps,
                                               kl_step_size)
        self.kl_weight, self.entropy_weight, self.kl_steps = kl_weight, entropy_weight, kl_steps
        self.update = ParameterUpdate(energy_fn.parameters(), optimizer, lr_schedule, grad_clip)
        self.energy_fn = energy_fn
        self.sampler = sampler
        self.alpha, self.n_chains, self.sampler_steps = alpha, n_chains, sampler_steps
        self.init, self.reinit_prob = init, reinit_prob
        self.reinit_accept = reinit_accept
        self.noise = DataNoise(train_data, noise_init, noise_scale, "trainer.noise_init")
        self.buffer = ReplayBuffer(buffer_size) if init == "replay_buffer" else None
        self.chains: Tensor | None = None  # persistent chains [n_chains, *event]
        self._negatives: Tensor | None = None  # last negatives, for plots
        # a Replicated sampler's (parallel tempering's) last state: its hotter replicas carry
        # over between updates in ``persistent`` and ``replay_buffer``
        self._replicated = isinstance(sampler, Replicated) and init in CARRY_REPLICAS
        self._sampler_state: Any = None
        self._step = 0
        self.cost = GradientCount()  # gradients per update (class docstring)
        # the per-update part fixed by the settings: improved CD's kl_steps and the loss's 1
        self._fixed_gradients = (kl_steps if self._improved_cd is not None else 0) + 1
        self._start_multiplicity: int | None = None  # replicas per chain (tempering: K), cached
        self._adaptable = isinstance(sampler, StepSizeAdaptable)  # declared, not probed
        self.warmup_steps = warmup_steps if self._adaptable else 0
        self._adaptation: StepSizeAdaptation | None = None
        self._adapt_state: AdaptationState | None = None
        if self.warmup_steps > 0:
            w, k = self.warmup_steps, sampler_steps
            # restarts after the updates at 1/2, 3/4, 7/8 of the warm-up, counted in transitions
            restarts = {k * (w - w // 2**j) for j in (1, 2, 3) if w // 2**j > 0}
            self._adaptation = StepSizeAdaptation(
                sampler.target_accept, restarts=restarts, restart_shrink=RESTART_SHRINK)
            self._adapt_state = self._adaptation.init(sampler, device=train_data.device)

    # ---- where chains start: one rule per ``init`` (INITS) -------------------------------
    # Each returns the starting points [M, *event], the fraction of chains restarted from
    # noise (0-d), and what to do with the negatives [M, *event] the sampler returns.
    def _start_persistent(self, batch: Tensor, generator: torch.Generator) -> Start:
        """PCD: the chains carry over between updates (a fraction restarted)."""
        if self.chains is None:
            self.chains = self.noise.sample(self.n_chains, generator).to(batch.device)
        x, restarted = self._restart(self.chains, generator)
        return x, restarted.float().mean(), self._keep_chains

    def _start_noise(self, batch: Tensor, generator: torch.Generator) -> Start:
        """Short-run MCMC: fresh noise every update."""
        x = self.noise.sample(self.n_chains, generator).to(batch.device)
        return x, torch.ones((), device=batch.device), None

    def _start_data(self, batch: Tensor, generator: torch.Generator) -> Start:
        """CD-k: the chains start at the data batch."""
        return batch.detach(), torch.zeros((), device=batch.device), None

    def _start_replay_buffer(self, batch: Tensor, generator: torch.Generator) -> Start:
        """A batch of past negatives from the buffer (a fraction restarted), written back."""
        assert self.buffer is not None
        if self.buffer.data is None:
            self.buffer.fill(self.noise.sample(self.buffer.size, generator).to(batch.device))
        idx, x = self.buffer.sample(self.n_chains, generator)
        x, restarted = self._restart(x, generator)
        return x, restarted.float().mean(), functools.partial(self.buffer.write, idx)

    def _keep_chains(self, x_neg: Tensor) -> None:
        self.chains = x_neg

    def _restart(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """Restart a fraction reinit_prob of chains x [M, *event] from noise (see reinitialise)."""
        energy_fn = self.energy_fn if self.reinit_accept else None
        return reinitialise(x, self.noise, self.reinit_prob, generator, energy_fn)

    # ---- MCMC ---------------------------------------------------------------------------
    def _sample(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """k sampler steps from x [M, *event] -> (negatives [M, *event], sampler_stats averaged
        over the k transitions)."""
        adaptation = self._adaptation if self._step < self.warmup_steps else None
        if self._replicated and self._sampler_state is not None:  # hotter replicas carried
            state = self.sampler.restate(self.energy_fn, self._sampler_state, x)
        else:
            state = self.sampler.init(self.energy_fn, x)  # energies are stale after θ moved
        self.cost.add_fixed(self._start_gradients(state))
        if adaptation is None:  # a fixed sampler: k steps, fused with compiled transitions
            state, infos = run_transitions(self.sampler, self.energy_fn, state, generator,
                                           self.sampler_steps)
        else:
            infos = []
            for _ in range(self.sampler_steps):
                sampler = adaptation.tuned(self.sampler, self._adapt_state)  # ε_t, 0-d
                state, info = sampler.step(self.energy_fn, state, generator)
                # restarts from ε̄ at 1/2, 3/4, 7/8 of the warm-up
                self._adapt_state = adaptation.update(self._adapt_state, info.accept_prob)
                infos.append(info)
        if declares(infos[0], Info):  # gradients per chain over the k transitions, on device
            self.cost.add_counted(torch.stack([info.grad_evals for info in infos]).sum(0))
        if self._replicated:
            self._sampler_state = state
        if adaptation is not None and self._step + 1 == self.warmup_steps:  # freeze ε̄
            self.sampler = adaptation.final(self.sampler, self._adapt_state)
        return state.x.detach(), transitions_stats(infos)

    def step(self, batch: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """One update on a data batch [B, *event]; returns 0-d health tensors (no host sync).

        energy_gap = mean E(data) − mean E(samples), the eq.-9 part of the loss: near 0 when the
        model fits and the chains follow p_θ; large positive when samples sit in spurious
        low-energy regions, large negative when chains lag in high-energy regions.
        sampler/restart_rate: fraction of chains restarted from noise this update.
        """
        x0, restart_rate, keep = INITS[self.init](self, batch, generator)
        x_neg, chain_stats = self._sample(x0, generator)  # [M, *event], detached
        x_tilde = None  # improved CD: the negatives as a function of θ, x̃(θ)
        if self._improved_cd is not None:
            eta, sigma = self._improved_cd
            x_tilde = differentiable_langevin(self.energy_fn, x_neg, self.kl_steps, eta, sigma,
                                              generator)  # [M, *event], graph to θ
            x_neg = x_tilde.detach()
        if keep is not None:  # persistent chains, replay-buffer slots
            keep(x_neg)
        self._negatives = x_neg

        energy = self.energy_fn(torch.cat([batch, x_neg]))  # one forward for both, [B + M]
        energy_data, energy_neg = energy[: batch.shape[0]], energy[batch.shape[0] :]
        loss = contrastive_loss(energy_data, energy_neg, self.alpha)  # eq. 9 surrogate
        extra: dict[str, Tensor] = {}
        if x_tilde is not None:  # Du et al. 2021 eq. 7: through the samples only
            if self.kl_weight > 0:
                extra["loss/kl"] = kl_sampler_loss(self.energy_fn, x_tilde)
                loss = loss + self.kl_weight * extra["loss/kl"]
            if self.entropy_weight > 0:
                extra["loss/entropy"] = nearest_neighbour_entropy_loss(x_tilde)
                loss = loss + self.entropy_weight * extra["loss/entropy"]
        update_stats = self.update(loss)  # grad_norm (and lr with a schedule)
        self._step += 1
        self.cost.add_fixed(self._fixed_gradients)
        self.cost.end_update()

        e_data, e_neg = energy_data.detach().mean(), energy_neg.detach().mean()
        stats = {
            "loss": loss.detach(),
            "energy/data": e_data,
            "energy/samples": e_neg,
            "energy_gap": e_data - e_neg,
            **chain_stats,  # sampler/acceptance_rate (and HMC's divergences, |ΔH|)
            "sampler/restart_rate": restart_rate,
            **{k: v.detach() for k, v in extra.items()},
            **update_stats,
        }
        if self._adaptable:  # a StepSizeAdaptable sampler: log the step size it runs with
            step_size = self.sampler.step_size  # frozen after warm-up
            if self._adaptation is not None and self._step < self.warmup_steps:
                step_size = self._adaptation.step_size(self._adapt_state)  # still adapting
            stats["sampler/step_size"] = torch.as_tensor(step_size)
        return stats

    def negatives(self) -> Tensor | None:
        """The last negatives [M, *event] (None before the first step)."""
        return self._negatives

    def _start_gradients(self, state: Any) -> int:
        """Gradients per chain that the sampler's ``init``/``restate`` spent on ``state``: its
        cached ∇E (ChainState.grad; None for a lazy or gradient-free start, ULA and MH), one per
        replica of a chain (a Replicated sampler's K, from ``replicas``, read once)."""
        if state.grad is None:
            return 0
        if self._start_multiplicity is None:
            self._start_multiplicity = (self.sampler.replicas(state).shape[0]
                                        if isinstance(self.sampler, Replicated) else 1)
        return self._start_multiplicity

    def gradients_per_update(self) -> float:
        """Mean gradient passes through E_θ per update so far, per chain (class docstring);
        a resumed run's figure covers the whole run (the count is checkpointed)."""
        return self.cost.mean()

    # ---- resume -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Optimizer, step counter, chains / buffer, sampler step size and dual-averaging state.

        The energy's weights are not included (save ``energy_fn.state_dict()`` beside this).
        Plain tensors, numbers, strings, lists and dicts only: loads with weights_only=True.
        """
        state: dict[str, Any] = {"step": self._step, "optimizer": self.update.state_dict()}
        if self._adaptable:
            state["step_size"] = self.sampler.step_size
        if self.chains is not None:
            state["chains"] = self.chains
        if self.buffer is not None and self.buffer.data is not None:
            state["buffer"] = self.buffer.data
        if self._negatives is not None:
            state["negatives"] = self._negatives
        if self._adapt_state is not None:
            state["dual_averaging"] = dict(self._adapt_state.dual._asdict())
        if self._sampler_state is not None and is_package_state(self._sampler_state):
            state["sampler_state"] = state_to_dict(self._sampler_state)  # tempering's replicas
        state["gradients"] = self.cost.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved, so the next step continues exactly."""
        self._step = int(state["step"])
        self.update.load_state_dict(state["optimizer"], self._step)
        if "step_size" in state and self._adaptable:  # (older runs saved Langevin's fixed one)
            self.sampler = dataclasses.replace(self.sampler, step_size=state["step_size"])
        self.chains = state.get("chains")
        if self.buffer is not None and "buffer" in state:
            self.buffer.fill(state["buffer"])
        self._negatives = state.get("negatives")
        if self._replicated and state.get("sampler_state") is not None:
            self._sampler_state = state_from_dict(state["sampler_state"])
        if "gradients" in state:  # (older checkpoints: counted from the resume on)
            self.cost.load_state_dict(state["gradients"])
        if self._adapt_state is not None and "dual_averaging" in state:
            count = self.sampler_steps * min(self._step, self.warmup_steps)  # transitions so far
            dual = self._adapt_state.dual._replace(**state["dual_averaging"])
            self._adapt_state = AdaptationState(count, dual)


def _improved_cd_steps(sampler: Sampler, kl_weight: float, entropy_weight: float,
                       kl_steps: int, kl_step_size: float | None
                       ) -> tuple[float | Tensor, float | Tensor] | None:
    """Validate the improved-CD settings; (η, σ) of its differentiable ULA steps, or None (off).

    A Langevin sampler lends its own η and σ (unless kl_step_size is set); after any other
    sampler kl_step_size η is required and σ = √(2η) (temperature 1)."""
    if kl_weight < 0:
        raise ValueError(f"trainer.kl_weight must be >= 0, got {kl_weight}")
    if entropy_weight < 0:
        raise ValueError(f"trainer.entropy_weight must be >= 0, got {entropy_weight}")
    if isinstance(kl_steps, bool) or not isinstance(kl_steps, int) or kl_steps < 1:
        raise ValueError(f"trainer.kl_steps must be an integer >= 1, got {kl_steps!r}")
    if kl_step_size is not None and not kl_step_size > 0:
        raise ValueError(f"trainer.kl_step_size must be > 0 or null, got {kl_step_size}")
    if kl_weight == 0 and entropy_weight == 0:
        return None
    if kl_step_size is None:
        if not isinstance(sampler, Langevin):
            raise ValueError("trainer.kl_step_size must be set (> 0) for trainer.kl_weight or "
                             "trainer.entropy_weight > 0 with a sampler other than langevin")
        eta = sampler.step_size
        sigma = math.sqrt(2 * eta) if sampler.noise_scale is None else sampler.noise_scale
        return eta, sigma
    return kl_step_size, math.sqrt(2 * kl_step_size)


# The inits whose chains persist between updates: a Replicated sampler's hotter replicas
# persist with them (``noise`` and ``data`` start every replica afresh, as short-run MCMC does).
CARRY_REPLICAS = ("persistent", "replay_buffer")
# Where the chains of an update start, by ``trainer.init``: the one table of MLE's rules.
INITS: dict[str, Callable[[MLETrainer, Tensor, torch.Generator], Start]] = {
    "persistent": MLETrainer._start_persistent,  # PCD (Tieleman 2008)
    "noise": MLETrainer._start_noise,  # short-run MCMC (Nijkamp et al. 2019)
    "data": MLETrainer._start_data,  # CD-k (Hinton 2002)
    "replay_buffer": MLETrainer._start_replay_buffer,  # Du & Mordatch 2019
}
