"""Improved precision and recall (ebm_cli/evaluation/precision_recall.py).

Tolerances come from the finite-sample spread of the k-NN manifolds (k = 3, 500 points per set,
measured over 30 repeats of each case below, real data two unit Gaussians at (±3, 0)):
same law: precision 0.975 ± 0.009, recall 0.974 ± 0.010 (mean ± sd; min 0.948) — finite
balls never cover all of a fresh sample; one mode only: precision 0.973 ± 0.012, recall
0.506 ± 0.031 (the lost mode is half the data, the rest covered); N(0, 8² I): precision
0.165 ± 0.025, recall 0.974 ± 0.032 (min 0.858). Each bound is ≥ 4 sds from those means.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from ebm_cli.evaluation.precision_recall import coverage, knn_radii, precision_recall

torch.set_num_threads(1)
N = 500


def _two_modes(n: int, g: torch.Generator) -> Tensor:
    side = torch.where(torch.rand(n, 1, generator=g) < 0.5, -3.0, 3.0)
    return torch.randn(n, 2, generator=g) + torch.cat([side, torch.zeros(n, 1)], 1)


def test_knn_radii_and_coverage_by_hand() -> None:
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(x, k=1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, k=2, chunk=3).tolist() == [3.0, 2.0, 3.0, 6.0]
    inside = coverage(torch.tensor([[-1.5], [5.5], [12.0]]), x, knn_radii(x, k=1))
    assert inside.tolist() == [0.0, 1.0, 0.0]  # 5.5 is within 4 of 7; 12 is not


def test_one_law_gives_both_near_one() -> None:
    # the mean of 5 repeats (sd ≈ 0.0045) against 0.95, > 5 sds below the measured mean
    g = torch.Generator().manual_seed(0)
    pr = torch.tensor([precision_recall(_two_modes(N, g), _two_modes(N, g)) for _ in range(5)])
    precision, recall = pr.mean(0).tolist()
    assert precision > 0.95 and recall > 0.95


def test_mode_dropping_keeps_precision_and_halves_recall() -> None:
    g = torch.Generator().manual_seed(1)
    one_mode = torch.randn(N, 2, generator=g) + torch.tensor([3.0, 0.0])
    precision, recall = precision_recall(one_mode, _two_modes(N, g))
    assert precision > 0.92 and abs(recall - 0.5) < 0.13


def test_a_spread_out_model_has_recall_but_no_precision() -> None:
    g = torch.Generator().manual_seed(2)
    precision, recall = precision_recall(8.0 * torch.randn(N, 2, generator=g), _two_modes(N, g))
    assert precision < 0.3 and recall > 0.84


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="k must be in"):
        knn_radii(torch.zeros(3, 2), k=3)
    with pytest.raises(ValueError, match="one event shape"):
        precision_recall(torch.zeros(4, 2), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="k must be >= 1"):
        precision_recall(torch.zeros(4, 2), torch.zeros(4, 2), k=0)
    assert all(math.isnan(v) for v in precision_recall(torch.randn(3, 2), torch.randn(9, 2)))


def test_the_larger_set_is_subsampled_to_the_smaller_size() -> None:
    # 50 samples against 5000 data points: the same numbers as 50 data points drawn without
    # replacement by the same generator (the balls of equal-size sets are comparable)
    g = torch.Generator().manual_seed(3)
    samples, real = _two_modes(50, g), _two_modes(5000, g)
    result = precision_recall(samples, real, generator=torch.Generator().manual_seed(4))
    idx = torch.randperm(5000, generator=torch.Generator().manual_seed(4))[:50]
    assert result == precision_recall(samples, real[idx])
