"""Kernel Stein discrepancy (ebm_cli/evaluation/ksd.py)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from ebm_cli.data.toy2d import two_gaussians
from ebm_cli.evaluation.ksd import imq_stein_kernel, ksd_with_se, model_ksd
from ebm_cli.evaluation.summary import evaluate

torch.set_num_threads(1)


def _imq(x: Tensor, y: Tensor, c: float, beta: float) -> Tensor:
    return (c * c + ((x - y) ** 2).sum()) ** beta


def _stein_autograd(x: Tensor, sx: Tensor, y: Tensor, sy: Tensor, c: float, beta: float
                    ) -> Tensor:
    """u_p(x, y) from its definition, every derivative of k by autograd (one pair, [D])."""
    k = _imq(x, y, c, beta)
    gx, gy = torch.autograd.functional.jacobian(lambda a, b: _imq(a, b, c, beta), (x, y))
    # ∂²k/∂x_d∂y_d: the Jacobian of ∇_y k with respect to x, its trace
    cross = torch.autograd.functional.jacobian(
        lambda a: torch.autograd.functional.jacobian(
            lambda b: _imq(a, b, c, beta), y, create_graph=True), x)
    return k * sx @ sy + sx @ gy + gx @ sy + torch.trace(cross)


@pytest.mark.parametrize(("c", "beta"), [(1.0, -0.5), (0.7, -0.3)])
def test_closed_form_stein_kernel_matches_autograd(c: float, beta: float) -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(4, 3, generator=g).double(), torch.randn(5, 3, generator=g).double()
    sx, sy = torch.randn(4, 3, generator=g).double(), torch.randn(5, 3, generator=g).double()
    u = imq_stein_kernel(x, sx, y, sy, c, beta)
    for i in range(4):
        for j in range(5):
            ref = _stein_autograd(x[i], sx[i], y[j], sy[j], c, beta)
            assert abs(float(u[i, j] - ref)) < 1e-10


def test_ksd_is_zero_for_the_target_and_positive_for_a_shifted_sample() -> None:
    # N(0, I) in 3-D, exact score s(x) = −x. At q = p the U-statistic has mean 0: it must lie
    # within 4 of its own standard errors (computed from the same pairs). A sample shifted by
    # 0.5 in every coordinate must be > 10 standard errors above 0.
    g = torch.Generator().manual_seed(1)
    x = torch.randn(800, 3, generator=g, dtype=torch.float64)
    value, se = ksd_with_se(x, -x, chunk=300)  # chunks not dividing n: the diagonal per chunk
    assert se > 0 and abs(value) < 4 * se
    shifted = x + 0.5
    value_s, se_s = ksd_with_se(shifted, -shifted)
    assert value_s > 10 * se_s and value_s > 20 * abs(value)


def test_model_ksd_uses_minus_the_energy_gradient_and_chunks_agree() -> None:
    class Quadratic(nn.Module):  # E = ½‖x‖², the N(0, I) energy
        def forward(self, x: Tensor) -> Tensor:
            return 0.5 * (x**2).sum(1)

    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 2, generator=g) + 1.0
    with torch.no_grad():  # as the evaluation calls it
        value, se = model_ksd(Quadratic(), x)
    ref, ref_se = ksd_with_se(x, -x, chunk=7)
    assert abs(value - ref) < 1e-9 and abs(se - ref_se) < 1e-9


def test_the_evaluation_reports_ksd_and_precision_recall() -> None:
    # Exact samples (held-out training points) against the true energy −log p of two_gaussians:
    # KSD² within 4 standard errors of 0, precision and recall near 1 (> 0.9: 500 points per
    # set give 0.975 ± 0.01, tests/test_precision_recall.py).
    data = two_gaussians()
    assert data.log_prob is not None

    class TrueEnergy(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return -data.log_prob(x)

    metrics = evaluate(TrueEnergy(), data, data.train[:500], grid=32, mmd_points=500,
                       generator=torch.Generator().manual_seed(0))
    assert metrics["ksd_se"] > 0 and abs(metrics["ksd"]) < 4 * metrics["ksd_se"]
    assert metrics["precision"] > 0.9 and metrics["recall"] > 0.9
