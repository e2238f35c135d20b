"""log Z_θ in any dimension by annealed importance sampling, and the held-out NLL that follows.

AIS (Neal 2001, "Annealed importance sampling", Statistics and Computing 11) moves B chains
along the geometric path between a normalised base q and the model's exp(−E):

    f_k(x) = q(x)^(1−β_k) · exp(−E(x))^β_k,   0 = β_0 < β_1 < … < β_K = 1,

i.e. the energies U_k(x) = β_k E(x) − (1 − β_k) log q(x). Each chain starts at x_0 ~ q and
alternates a weight update and an MCMC transition T_k that leaves f_k invariant:

    log w += log f_k(x) − log f_{k−1}(x) = U_{k−1}(x) − U_k(x),   then x ~ T_k(x, ·).

Then E[w] = Z_K / Z_0 = Z_θ (Z_0 = 1), so Ẑ = mean(w) and log Ẑ (biased low by Jensen, by
≈ se²/2). Its standard error comes from the delta method, se(log Ẑ) ≈ sd(w) / (√B · mean(w)),
reliable only when the weights' effective sample size (Σw)²/Σw² is not tiny: at ESS ≈ 1 one
chain carries all the weight, the formula returns ≈ 1 whatever the true error, and log Ẑ is only
a stochastic lower bound of log Z (so the NLL is optimistic; measured: 7.4 bits/dim for a
barely trained model of random bytes, whose entropy is 8, with 500 temperatures in 784-D).
Raise the number of temperatures (eval.ais_steps) until the ESS is a sizeable share of the
chains. The base is a
full-covariance Gaussian fitted to the training data; the schedule is the sigmoid schedule of
Grosse et al. (2015) / Wu et al. (2017, "On the quantitative analysis of decoder-based
generative models"), which spends more temperatures near both ends. Transitions are one HMC
step (diagonal mass = the base's variances) whose step size is adapted between temperatures
towards ``target_accept`` from the chains' mean acceptance (as in Wu et al.), by the package's
one step-size mechanism (samplers/adaptation.py StepSizeAdaptation: dual averaging, its current
iterate, no restarts); that couples the chains weakly, negligible for many chains. All chains
are one batch [B, *event].

Reverse AIS (Grosse et al. 2015, bidirectional Monte Carlo) runs the same path backwards from
samples of the model and gives a stochastic upper bound of log Z when those samples are exact;
forward and reverse together bracket log Z, and their gap (``ais_gap``) is the check that the
forward ESS alone cannot give (an ESS near B is also what AIS shows when every chain misses
the same mode).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ebm_cli.data.base import Dataset
from ebm_cli.samplers.adaptation import StepSizeAdaptation
from ebm_cli.samplers.base import StepSizeAdaptable
from ebm_cli.samplers.hmc import HMC

LOG_2PI = math.log(2 * math.pi)
# Defaults of the run loop's eval.ais_chains / eval.ais_steps.
AIS_CHAINS = 100
AIS_STEPS = 500


class GaussianBase:
    """q = N(μ, Σ) fitted to data [N, *event]: μ the mean, Σ the covariance widened by
    ``scale``², plus ``jitter``·mean(diag Σ)·I so a constant coordinate stays proper.

    log_prob is differentiable in x and returns float64 [B]; sample returns [n, *event].
    """

    def __init__(self, data: Tensor, scale: float = 1.0, jitter: float = 1e-4) -> None:
        if data.shape[0] < 2:
            raise ValueError("the AIS base needs at least 2 data points to fit a Gaussian")
        flat = data.detach().flatten(1).double()  # [N, D]
        self.event_shape = tuple(data.shape[1:])
        self.dtype, self.device = data.dtype, data.device
        d = flat.shape[1]
        self.mean = flat.mean(0)  # [D]
        cov = torch.atleast_2d(torch.cov(flat.T)) * scale**2  # [D, D]
        cov = cov + jitter * cov.diagonal().mean().clamp_min(1e-12) * torch.eye(
            d, dtype=cov.dtype, device=cov.device)
        self.variance = cov.diagonal().clone()  # [D]
        self.chol = torch.linalg.cholesky(cov)  # Σ = L Lᵀ
        self.precision = torch.cholesky_inverse(self.chol)  # Σ⁻¹ [D, D]
        self.log_norm = -0.5 * d * LOG_2PI - self.chol.diagonal().log().sum()  # 0-d

    def log_prob(self, x: Tensor) -> Tensor:
        """log q(x) [B] (float64) for x [B, *event]; −½ (x−μ)ᵀΣ⁻¹(x−μ) + log_norm."""
        diff = x.flatten(1).double() - self.mean  # [B, D]
        return self.log_norm - 0.5 * ((diff @ self.precision) * diff).sum(1)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """n draws μ + L z, z ~ N(0, I): [n, *event] in the data's dtype."""
        z = torch.randn(n, self.mean.numel(), generator=generator, dtype=torch.float64,
                        device=self.mean.device)  # [n, D]
        return (self.mean + z @ self.chol.T).to(self.dtype).view(n, *self.event_shape)


class TemperedEnergy(nn.Module):
    """U_β(x) = β E(x) − (1 − β) log q(x), the energy of f_β ∝ q^(1−β) exp(−E)^β; -> [B] f64."""

    def __init__(self, energy_fn: nn.Module, base: GaussianBase, beta: float) -> None:
        super().__init__()
        self.energy_fn, self.base, self.beta = energy_fn, base, beta

    def forward(self, x: Tensor) -> Tensor:
        u = -(1.0 - self.beta) * self.base.log_prob(x)  # [B]
        if self.beta > 0:
            u = u + self.beta * self.energy_fn(x).double()
        return u


def sigmoid_schedule(n_steps: int, delta: float = 4.0) -> Tensor:
    """β_0..β_K (K = n_steps) from 0 to 1: β̃_k = σ(δ(2k/K − 1)) rescaled to [0, 1] (float64)."""
    if n_steps < 1:
        raise ValueError(f"eval.ais_steps must be >= 1, got {n_steps}")
    t = torch.sigmoid(delta * (2 * torch.arange(n_steps + 1, dtype=torch.float64) / n_steps - 1))
    return (t - t[0]) / (t[-1] - t[0])


class AISResult(NamedTuple):
    """log Ẑ and its standard error (0-d float64), the log weights [B], their ESS, mean accept."""

    log_z: Tensor
    log_z_se: Tensor
    log_weights: Tensor
    ess: Tensor
    accept: Tensor


def log_mean_exp_with_se(log_w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(log mean w, delta-method se of it, ESS = (Σw)²/Σw²) from log weights [B] (float64)."""
    m = log_w.max()
    w = (log_w - m).exp()  # [B], max 1
    mean = w.mean()
    se = w.std() / (math.sqrt(log_w.numel()) * mean)  # sd(w)/(√B mean w)
    ess = w.sum() ** 2 / (w**2).sum()
    return m + mean.log(), se, ess


def _anneal(
    energy_fn: nn.Module,
    base: GaussianBase,
    x: Tensor,
    betas: Tensor,
    generator: torch.Generator,
    sampler: StepSizeAdaptable,
    target_accept: float,
) -> tuple[Tensor, Tensor]:
    """Move chains x [B, *event] along β_0, β_1, …, β_K (either direction), one transition per
    intermediate β: log w += U_{k−1}(x) − U_k(x), then x ~ T_k(x, ·) (f_k-invariant).

    Returns (log weights [B] float64, mean acceptance 0-d). The step size is adapted between
    temperatures by dual averaging towards ``target_accept`` (StepSizeAdaptation); each
    transition uses the current iterate ε_t, so ε follows the path as f_k sharpens.
    """
    n_steps = betas.numel() - 1
    adaptation = StepSizeAdaptation(target_accept)
    adapt_state = adaptation.init(sampler, device=base.mean.device)
    tempered = TemperedEnergy(energy_fn, base, float(betas[0]))
    state = sampler.init(tempered, x)  # U_0(x) and its gradient
    log_w = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    accept = torch.zeros((), dtype=torch.float64, device=x.device)
    for k in range(1, n_steps + 1):
        previous = state.energy  # U_{k−1}(x) [B]
        tempered.beta = float(betas[k])
        state = sampler.init(tempered, state.x)  # U_k(x) and its gradient
        log_w = log_w + (previous - state.energy)  # log f_k(x) − log f_{k−1}(x)
        if k == n_steps:
            break  # the last transition would not change the weights
        step = adaptation.tuned(sampler, adapt_state)  # ε_t
        state, info = step.step(tempered, state, generator)  # x ~ T_k(x, ·), f_k-invariant
        accept_prob = info.accept_prob  # [B]
        adapt_state = adaptation.update(adapt_state, accept_prob)
        accept = accept + accept_prob.double().mean()
    return log_w, accept / max(n_steps - 1, 1)


def _default_sampler(base: GaussianBase, sampler: StepSizeAdaptable | None
                     ) -> StepSizeAdaptable:
    """HMC, 5 leapfrog steps, inverse mass = the base's variances, unless one is given."""
    if sampler is not None:
        return sampler
    return HMC(step_size=0.5, n_leapfrog=5, inv_mass=base.variance.to(base.dtype))


def ais_log_partition(
    energy_fn: nn.Module,
    base: GaussianBase,
    n_chains: int,
    n_steps: int,
    generator: torch.Generator,
    sampler: StepSizeAdaptable | None = None,
    target_accept: float = 0.65,
) -> AISResult:
    """log Z = log ∫ exp(−E(x)) dx by AIS from ``base`` with K = ``n_steps`` temperatures.

    sampler: a StepSizeAdaptable sampler (default: HMC, 5 leapfrog steps, inverse mass = the
    base's variances). Its step size is adapted between temperatures by dual averaging
    towards ``target_accept`` (its own ``target_accept`` is not used). Cost: K·(1 + L)
    gradient evaluations of [n_chains, *event]. A stochastic lower bound: E[log Ẑ] ≤ log Z (Jensen).
    """
    if n_chains < 2:
        raise ValueError(f"eval.ais_chains must be >= 2, got {n_chains}")
    betas = sigmoid_schedule(n_steps)
    x = base.sample(n_chains, generator)  # x_0 ~ q, [B, *event]
    log_w, accept = _anneal(energy_fn, base, x, betas, generator,
                            _default_sampler(base, sampler), target_accept)
    log_z, se, ess = log_mean_exp_with_se(log_w)
    return AISResult(log_z, se, log_w, ess, accept)


def reverse_ais_log_partition(
    energy_fn: nn.Module,
    base: GaussianBase,
    samples: Tensor,
    n_steps: int,
    generator: torch.Generator,
    sampler: StepSizeAdaptable | None = None,
    target_accept: float = 0.65,
) -> AISResult:
    """log Z by reverse AIS: chains start at ``samples`` [B, *event] of exp(−E)/Z and anneal
    from β = 1 down to 0 along the same schedule (Grosse, Ghahramani & Adams 2015,
    "Sandwiching the marginal likelihood using bidirectional Monte Carlo").

    The reverse weights w' = Π f_{k−1}(x)/f_k(x) have E[w'] = Z_0/Z_K = 1/Z, so
    log Ẑ = −log mean(w') is a stochastic *upper* bound of log Z (E[log Ẑ] ≥ log Z), if the
    starting samples are exact draws of the model. Together with the forward estimate it
    brackets log Z; a gap of more than a few standard errors says that either AIS has not
    converged (too few temperatures) or the samples are not from exp(−E) (a cold or short-run
    sampler). The standard error and ESS are those of the reverse weights.
    """
    if samples.shape[0] < 2:
        raise ValueError(f"reverse AIS needs at least 2 samples, got {samples.shape[0]}")
    betas = sigmoid_schedule(n_steps).flip(0)  # 1 = β_K > … > β_0 = 0
    log_w, accept = _anneal(energy_fn, base, samples, betas, generator,
                            _default_sampler(base, sampler), target_accept)
    log_inv_z, se, ess = log_mean_exp_with_se(log_w)  # log mean w' ≈ −log Z
    return AISResult(-log_inv_z, se, log_w, ess, accept)


def _energy_device(energy_fn: nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(iter(energy_fn.parameters()), None)
    if p is None:
        return torch.device("cpu"), torch.get_default_dtype()
    return p.device, p.dtype


def evaluate_high_dim(
    energy_fn: nn.Module,
    dataset: Dataset,
    samples: Tensor,
    generator: torch.Generator,
    ais_chains: int,
    ais_steps: int,
) -> dict[str, float]:
    """Metrics for data without quadrature (D ≠ 2), all from held-out data (nats unless said).

    log_z_ais, log_z_ais_se: AIS estimate of log Z_θ and its standard error;
    ais_weight_ess, ais_acceptance_rate: health of the AIS run;
    log_z_ais_reverse (± _se, ais_reverse_weight_ess): reverse AIS from the first
    ``ais_chains`` of ``samples``, an upper bound of log Z when they are exact model samples;
    ais_gap = log_z_ais_reverse − log_z_ais (nats): a few se at most when AIS has converged
    and the samples follow exp(−E); large for cold or short-run samplers;
    test_nll_ais = mean E(test) + log Ẑ, in the model's units (standardised data: see
    test_nll_ais_original_units = test_nll_ais + Σ log std); test_nll_ais_se;
    images: bits_per_dim = (NLL in original units + D log L)/(D log 2) with L the dataset's
    dequantisation levels (0 added when unknown), bits_per_dim_reverse with the reverse log Ẑ
    (the pair brackets the model's bits/dim when ais_gap is trustworthy), and the image metrics of
    ``ebm_cli.evaluation.images`` for samples [B, *event] (model units) mapped back to the
    original units. ``generator`` drives AIS (on the energy's device).
    """
    from ebm_cli.evaluation.images import image_metrics

    device, dtype = _energy_device(energy_fn)
    was_training = energy_fn.training
    energy_fn.eval()  # e.g. spectral norm: no power iteration while we integrate
    try:
        base = GaussianBase(dataset.train.to(device=device, dtype=dtype))
        result = ais_log_partition(energy_fn, base, ais_chains, ais_steps, generator)
        start = samples.detach().to(device=device, dtype=dtype)
        start = start[torch.isfinite(start.flatten(1)).all(1)][:ais_chains]  # [≤ B, *event]
        reverse = (reverse_ais_log_partition(energy_fn, base, start, ais_steps, generator)
                   if start.shape[0] >= 2 else None)
        with torch.no_grad():
            e_test = energy_fn(dataset.test.to(device=device, dtype=dtype)).double()  # [N]
    finally:
        energy_fn.train(was_training)
    n_test = e_test.numel()
    nll = e_test.mean() + result.log_z
    nll_se = (result.log_z_se**2 + e_test.var() / n_test).sqrt() if n_test > 1 else result.log_z_se
    metrics = {
        "log_z_ais": float(result.log_z),
        "log_z_ais_se": float(result.log_z_se),
        "ais_weight_ess": float(result.ess),
        "ais_acceptance_rate": float(result.accept),
        "test_nll_ais": float(nll),
        "test_nll_ais_se": float(nll_se),
    }
    if reverse is not None:
        metrics["log_z_ais_reverse"] = float(reverse.log_z)
        metrics["log_z_ais_reverse_se"] = float(reverse.log_z_se)
        metrics["ais_reverse_weight_ess"] = float(reverse.ess)
        metrics["ais_gap"] = float(reverse.log_z - result.log_z)  # nats, ≈ 0 when both hold
    if dataset.transform is not None:
        metrics["test_nll_ais_original_units"] = metrics["test_nll_ais"] + dataset.log_scale
    if dataset.is_image:
        d = dataset.dim
        offset = d * math.log(dataset.levels) if dataset.levels else 0.0
        nll_original = metrics["test_nll_ais"] + dataset.log_scale
        metrics["bits_per_dim"] = (nll_original + offset) / (d * math.log(2))
        if reverse is not None:  # the same NLL with the reverse (upper) log Ẑ
            metrics["bits_per_dim_reverse"] = (
                metrics["bits_per_dim"] + metrics["ais_gap"] / (d * math.log(2)))
        original = dataset.to_original(samples.detach().cpu().double())
        train = dataset.to_original(dataset.train.double())
        metrics.update(image_metrics(original, train, dataset.train_labels))
    return metrics
