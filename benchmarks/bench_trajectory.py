"""Trajectory length: ESS per gradient of default HMC (jittered L, ChEES-adapted) against MALA and
against HMC with each fixed L.

Each row is a ``trainer=none`` run in-process (trainers/sampling.py SamplingOnly: chains from
N(0, I), ``--warmup`` warm-up steps with the sampler's default adaptation, then ``--steps``
recorded steps); ESS is SamplingOnly's own: the minimum over coordinates of the bulk ESS of the
last half of the recorded draws (evaluation/diagnostics.py), per gradient evaluation spent on
them (HMC costs L gradients per transition whatever the jittered lengths, since the chains
run in one batch). Targets: a 50-D standard Gaussian (HMC vs MALA) and Rosenbrock
(configs/energy/rosenbrock.yaml: a = 1, b = 100, T = 2), where the fixed-L rows turn
adapt_trajectory off (``jitter`` says whether L_b ~ U{1..L} per chain or every chain runs L).

    PYTHONPATH=. python benchmarks/bench_trajectory.py [--chains 512] [--steps 400]
        [--warmup 200] [--seed 0] [--only gaussian rosenbrock] [--lengths 1 2 4 8 16 32 64]
        [--exact-start]

From N(0, I), Rosenbrock's chains have not converged after 1000 + 2000 steps for any L
(R-hat 1.19–2.8), and the ESS of unconverged chains sits at a floor (≈ 300) whatever L costs,
which makes ESS per gradient favour L = 1 for no good reason; ``--exact-start`` starts the
chains at exact draws (Rosenbrock.sample), so the ESS measures mixing at stationarity.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from ebm_cli.energies.analytic import Rosenbrock
from ebm_cli.samplers.base import Sampler
from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.langevin import MALA
from ebm_cli.trainers.sampling import SamplingOnly


class StandardGaussian(nn.Module):
    """E(x) = ½‖x‖², x [B, D] -> [B]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x.square().sum(-1)


def measure(energy: nn.Module, sampler: Sampler, dim: int, args: argparse.Namespace) -> dict:
    """One SamplingOnly run -> its diagnostics plus the adapted L and ε and the wall time."""
    run = SamplingOnly(energy, sampler, (dim,), dtype=torch.float64, n_chains=args.chains,
                       warmup_steps=args.warmup, trace_chains=min(256, args.chains))
    g = torch.Generator().manual_seed(args.seed)
    if args.exact_start:  # chains start at exact draws: ESS of a chain already at stationarity
        run._init(g, energy.sample(args.chains, g).to(torch.float64))
    start = time.perf_counter()
    for _ in range(args.steps):
        run.step(g)
    out = run.diagnostics()
    out["seconds"] = time.perf_counter() - start
    out["L"] = getattr(run.sampler, "n_leapfrog", 1)
    out["eps"] = float(run.sampler.step_size)
    return out


def row(label: str, out: dict) -> str:
    grads = out["grad_evals"] / 1  # per chain, all recorded steps
    return (f"| {label:<28} | {out['L']:>4} | {out['eps']:7.4f} | {out['ess_bulk_min']:9.0f} | "
            f"{grads:8.0f} | {out['ess_per_grad_eval']:8.4f} | {out['rhat_max']:6.3f} | "
            f"{out['seconds']:6.1f} |")


HEADER = ("| sampler                      |    L |       ε |  ESS bulk | grads/ch | ESS/grad | "
          " R-hat |   wall |\n|---|---:|---:|---:|---:|---:|---:|---:|")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, default=512)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=["gaussian", "rosenbrock"])
    parser.add_argument("--lengths", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--exact-start", action="store_true",
                        help="Rosenbrock chains start at exact draws instead of N(0, I)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.chains} chains, {args.warmup} warm-up + {args.steps} steps (ESS of the last "
          f"half, {min(256, args.chains)} chains kept), seed {args.seed}\n")
    if "gaussian" in args.only:  # (always from N(0, I), the target itself)
        print("50-D standard Gaussian\n" + HEADER)
        energy = StandardGaussian()
        for label, sampler in [("HMC (default)", HMC()), ("MALA (default)", MALA()),
                               ("HMC L=10, no jitter, no ChEES",
                                HMC(jitter_n_leapfrog=False, adapt_trajectory=False))]:
            print(row(label, measure(energy, sampler, 50, args)), flush=True)
        print()
    if "rosenbrock" in args.only:
        print("Rosenbrock (a = 1, b = 100, T = 2)\n" + HEADER)
        energy = Rosenbrock(a=1.0, b=100.0, temperature=2.0)
        print(row("HMC (default)", measure(energy, HMC(), 2, args)), flush=True)
        for jitter in (True, False):
            for n in args.lengths:
                sampler = HMC(n_leapfrog=n, jitter_n_leapfrog=jitter, adapt_trajectory=False)
                label = f"HMC fixed L={n}, jitter {'on' if jitter else 'off'}"
                print(row(label, measure(energy, sampler, 2, args)), flush=True)


if __name__ == "__main__":
    main()
