"""``trainer=none`` (ebm_cli/trainers/sampling.py): what it reports while it samples."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.langevin import MALA, Langevin
from ebm_cli.samplers.mh import IndependenceMH, RandomWalkMH
from ebm_cli.trainers.sampling import SamplingOnly

torch.set_num_threads(1)


class StandardNormal(nn.Module):
    """E(x) = ½‖x‖² on R²: under the target E ~ ½χ²₂, mean 1 and variance 1."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x.pow(2).sum(-1)


SAMPLERS = {
    "mh": RandomWalkMH(step_size=1.0),
    "independence_mh": IndependenceMH(scale=1.5),
    "langevin": Langevin(step_size=0.003),  # lazy: the state's energy is left unevaluated
    "mala": MALA(step_size=0.5),
    "hmc": HMC(step_size=0.3, n_leapfrog=5),
}


@pytest.mark.parametrize("name", SAMPLERS)
def test_reported_energy_is_that_of_the_target(name: str) -> None:
    # Chains start at the target N(0, I) (init_loc 0, init_scale 1), so every step is stationary
    # and the 2048 chains are independent: the reported mean energy is 1 ± 1/√2048 (sd), and
    # ULA's bias at η = 0.003 (variance 1/(1 − η/2)) is 0.0015. Tolerance 4 sds.
    n = 2048
    run = SamplingOnly(StandardNormal(), SAMPLERS[name], torch.zeros(10, 2), n_chains=n,
                       warmup_steps=0, trace_chains=16)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        stats = run.step(torch.zeros(1, 2), g)
    assert abs(float(stats["energy/samples"]) - 1.0) < 4 / math.sqrt(n)
    assert 0 < float(stats["sampler/acceptance_rate"]) <= 1
