"""The end-of-run evaluation shared by every trainer: NLL, KL, MMD, energies, mode masses."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn

from ebm_cli.data.base import Dataset
from ebm_cli.evaluation.ksd import model_ksd
from ebm_cli.evaluation.mmd import mmd_with_se
from ebm_cli.evaluation.modes import mode_masses, mode_weight_error, sample_mode_fractions
from ebm_cli.evaluation.precision_recall import precision_recall
from ebm_cli.evaluation.quadrature import log_partition_2d, nll


def _subsample(x: Tensor, n: int, generator: torch.Generator) -> Tensor:
    if x.shape[0] <= n:
        return x
    idx = torch.randperm(x.shape[0], generator=generator)[:n]
    return x[idx.to(x.device)]


# A named phase of the evaluation (Reporter.timed: a spinner, a log line, its wall time).
Timed = Callable[[str], AbstractContextManager[Any]]


def _untimed(name: str) -> AbstractContextManager[Any]:
    return nullcontext()


@torch.no_grad()
def evaluate(
    energy_fn: nn.Module, dataset: Dataset, samples: Tensor, grid: int, mmd_points: int,
    generator: torch.Generator, timed: Timed = _untimed,
) -> dict[str, float]:
    """Numbers describing how well E_θ models the data (all in nats where applicable).

    2-D: ``log_z`` by quadrature on an n×n grid, and ``log_z_grid_change`` = |log Z(n) − log Z(2n)|
    (the quadrature error check); ``test_nll`` = mean E(test) + log Z; ``true_nll`` from the
    true density or the dataset's entropy; ``kl`` = test_nll − true_nll. ``test_nll_se`` and
    ``kl_se`` are their standard errors over the N test points: sd(E(test))/√N, and for a known
    density sd(log p(x) + E(x))/√N (paired, on the same points) — so a KL within ±2·kl_se of 0,
    or below it (possible with an estimated entropy), is a model indistinguishable from the truth.
    Any D: ``mmd`` (model samples vs held-out data) and ``mmd_se``, its jackknife standard
    error (mmd.mmd_with_se); ``ksd`` (the U-statistic KSD², IMQ kernel, of the samples against
    −∇E, no truth needed) and ``ksd_se``; ``precision`` and ``recall`` of the samples against the
    held-out data (k-NN manifolds on the flattened vectors, pixels for images); mean energies of
    data and samples. ``timed(name)`` wraps the phases ``mmd``, ``ksd``, ``precision_recall``,
    ``quadrature`` and ``modes`` (progress and their wall time).
    """
    device = samples.device
    test = dataset.test.to(device=device, dtype=samples.dtype)
    metrics: dict[str, float] = {
        "energy_data": float(energy_fn(test).mean()),
        "energy_samples": float(energy_fn(samples).mean()),
    }
    finite = torch.isfinite(samples.flatten(1)).all(1)
    metrics["samples_finite_fraction"] = float(finite.double().mean())
    a = _subsample(samples[finite].flatten(1), mmd_points, generator)
    b = _subsample(test.flatten(1), mmd_points, generator)
    with timed("mmd"):
        value, se = mmd_with_se(a, b) if a.shape[0] > 1 else (math.nan, math.nan)
    metrics["mmd"], metrics["mmd_se"] = float(value), float(se)
    with timed("ksd"):  # samples against the model's own score −∇E (evaluation/ksd.py)
        metrics["ksd"], metrics["ksd_se"] = model_ksd(energy_fn, samples[finite], mmd_points,
                                                      generator)
    with timed("precision_recall"):  # k = 3 manifolds, as many samples as data (raw vectors)
        metrics["precision"], metrics["recall"] = precision_recall(a, b, generator=generator)
    if dataset.dim == 2 and len(dataset.bounds) == 2:
        with timed("quadrature"):
            log_z = log_partition_2d(energy_fn, dataset.bounds, grid)
            log_z_fine = log_partition_2d(energy_fn, dataset.bounds, 2 * grid)
        metrics["log_z"] = float(log_z_fine)
        metrics["log_z_grid_change"] = float((log_z - log_z_fine).abs())
        metrics["test_nll"] = float(nll(energy_fn, test, log_z_fine))
        e_test = energy_fn(test).double().cpu()  # [N]
        n = e_test.shape[0]
        metrics["test_nll_se"] = float(e_test.std() / math.sqrt(n)) if n > 1 else math.nan
        if dataset.log_prob is not None:
            log_p = dataset.log_prob(dataset.test.double()).cpu()  # [N]
            metrics["true_nll"] = float(-log_p.mean())
            metrics["kl_se"] = float((log_p + e_test).std() / math.sqrt(n)) if n > 1 else math.nan
        elif dataset.entropy is not None:
            metrics["true_nll"] = float(dataset.entropy)
            metrics["kl_se"] = metrics["test_nll_se"]
        if "true_nll" in metrics:
            metrics["kl"] = metrics["test_nll"] - metrics["true_nll"]
        if dataset.modes is not None and dataset.mode_weights is not None:
            with timed("modes"):
                metrics.update(_mode_metrics(energy_fn, dataset, samples[finite], grid))
    return metrics


def _mode_metrics(energy_fn: nn.Module, dataset: Dataset, samples: Tensor, grid: int
                  ) -> dict[str, float]:
    """Mass per mode (model by quadrature, samples by nearest mode) against the true weights;
    the errors are total-variation distances ½ Σ_k |m_k − w_k|."""
    means, weights = dataset.modes, dataset.mode_weights
    assert means is not None and weights is not None
    masses = mode_masses(energy_fn, means, dataset.bounds, grid)
    fractions = sample_mode_fractions(samples, means)
    out = {f"mode_mass/{k}": float(m) for k, m in enumerate(masses)}
    out["mode_weight_error"] = float(mode_weight_error(masses, weights))
    out["sample_mode_error"] = float(mode_weight_error(fractions, weights))
    return out
