"""Compiled transitions (samplers/compiled.py) against eager steps: a table of per-step CPU time.

    python benchmarks/bench_compiled.py                 # micro rows + the MLE update row
    python benchmarks/bench_compiled.py --default-run   # also `ebm-train` eager vs compile=true

Micro rows: 1024 chains, fixed step sizes, identity mass, no jitter (the rows of
bench_blackjax.py). Each column runs ``steps`` transitions per call on one thread; calls of the
columns are interleaved for ``--rounds`` rounds and each column's median process CPU time per
transition is reported (the machine is shared: CPU time, not wall). ``compile s`` is the wall
time of the call that compiled the graph (CompiledTransitions.seconds_compile).

MLE row: one update of MLETrainer (HMC L=10 negatives from 256 persistent chains, no restarts,
no warm-up, MLP energy on two_gaussians) with compiled transitions, against a bare loop of the
same work written out by hand: E and ∇E at the chains, the same compiled transition, the
contrastive loss on data and negatives, backward and an Adam step.

Default run: ``ebm-train`` (no other arguments) with compile=false and compile=true, wall time
of the whole process, train_seconds, seconds_compile and the KL, one run each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ebm_cli.energies.analytic import CorrelatedGaussian, GaussianMixture, Rosenbrock
from ebm_cli.energies.mlp import MLPEnergy
from ebm_cli.samplers.base import ChainState
from ebm_cli.samplers.compiled import CompiledTransitions
from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.langevin import MALA
from ebm_cli.samplers.mh import RandomWalkMH
from ebm_cli.trainers.losses import contrastive_loss
from ebm_cli.trainers.mle import MLETrainer

# (label, energy, sampler, transitions per timed call)
ROWS: list[tuple[str, Callable[[], nn.Module], Callable[[], object], int]] = [
    ("two_gaussians RW-MH", GaussianMixture, lambda: RandomWalkMH(0.5), 400),
    ("two_gaussians MALA", GaussianMixture, lambda: MALA(0.05), 200),
    ("two_gaussians HMC L=10", GaussianMixture,
     lambda: HMC(0.1, 10, jitter_n_leapfrog=False), 60),
    ("Rosenbrock HMC L=10", Rosenbrock, lambda: HMC(0.02, 10, jitter_n_leapfrog=False), 60),
    ("100-D Gaussian HMC L=4", lambda: CorrelatedGaussian(dim=100, correlation=0.9),
     lambda: HMC(0.1, 4, jitter_n_leapfrog=False), 60),
]


def _loop(sampler: object, energy_fn: nn.Module, state: ChainState, steps: int
          ) -> Callable[[torch.Generator], float]:
    """A call running ``steps`` transitions from ``state``; returns its process CPU seconds."""
    def call(g: torch.Generator) -> float:
        s = state
        start = time.process_time()
        for _ in range(steps):
            s, _ = sampler.step(energy_fn, s, g)
        return time.process_time() - start
    return call


def interleaved(calls: dict[str, Callable[[torch.Generator], float]], rounds: int
                ) -> dict[str, float]:
    """Median CPU seconds of each call over ``rounds`` interleaved rounds (after 2 untimed)."""
    g = torch.Generator().manual_seed(0)
    for call in calls.values():
        for _ in range(2):
            call(g)
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for k, call in calls.items():
            times[k].append(call(g))
    return {k: statistics.median(v) for k, v in times.items()}


def micro(rounds: int, chains: int) -> list[str]:
    lines = ["| 1024 chains, per transition (CPU, 1 thread) | eager µs | compiled µs | speed-up "
             "| compile s |", "|---|---:|---:|---:|---:|"]
    for label, make_energy, make_sampler, steps in ROWS:
        energy_fn = make_energy().to(torch.float32)
        sampler = make_sampler()
        dim = 100 if "100-D" in label else 2
        x0 = torch.randn(chains, dim, generator=torch.Generator().manual_seed(1))
        compiled = CompiledTransitions(energy_fn)
        state = sampler.init(energy_fn, x0)
        med = interleaved({"eager": _loop(sampler, energy_fn, state, steps),
                           "compiled": _loop(sampler, compiled, state, steps)}, rounds)
        e, c = med["eager"] / steps * 1e6, med["compiled"] / steps * 1e6
        lines.append(f"| {label} | {e:.0f} | {c:.0f} | {e / c:.2f}× "
                     f"| {compiled.seconds_compile:.1f} |")
        print(lines[-1], flush=True)
    return lines


def mle_row(rounds: int) -> list[str]:
    """One MLE update (compiled negatives) against the same work written as a bare loop."""
    data = torch.cat([torch.randn(4096, 2) * 0.5 + torch.tensor([2.0, 0.0]),
                      torch.randn(4096, 2) * 0.5 - torch.tensor([2.0, 0.0])])
    torch.manual_seed(0)
    energy_fn = MLPEnergy((2,), 128, 2, "silu")
    compiled = CompiledTransitions(energy_fn)
    sampler = HMC(0.1, 10, jitter_n_leapfrog=False)
    trainer = MLETrainer(compiled, sampler, data, lambda p: torch.optim.Adam(p, lr=1e-4),
                         n_chains=256, reinit_prob=0.0, warmup_steps=0)
    bare_opt = torch.optim.Adam(energy_fn.parameters(), lr=1e-4)
    chains = data[:256].clone()

    def update(g: torch.Generator) -> float:
        start = time.process_time()
        for _ in range(10):
            batch = data[torch.randint(0, data.shape[0], (256,), generator=g)]
            trainer.step(batch, g)
        return time.process_time() - start

    def bare(g: torch.Generator) -> float:
        nonlocal chains
        start = time.process_time()
        for _ in range(10):
            batch = data[torch.randint(0, data.shape[0], (256,), generator=g)]
            state = sampler.init(energy_fn, chains)
            state, _ = sampler.step(compiled, state, g)
            chains = state.x
            energy = energy_fn(torch.cat([batch, chains]))
            loss = contrastive_loss(energy[:256], energy[256:], 0.01)
            bare_opt.zero_grad(set_to_none=True)
            loss.backward()
            bare_opt.step()
        return time.process_time() - start

    med = interleaved({"trainer": update, "bare": bare}, rounds)
    t, b = med["trainer"] / 10 * 1e3, med["bare"] / 10 * 1e3
    line = (f"| MLE update, HMC L=10 negatives (256 chains, MLP 128×2), compiled | {t:.2f} ms "
            f"| bare loop {b:.2f} ms | {t / b:.2f}× |")
    print(line, flush=True)
    return ["", "| update (CPU, 1 thread) | MLETrainer.step | bare loop | ratio |",
            "|---|---:|---:|---:|", line]


def default_run() -> list[str]:
    """``ebm-train`` with compile=false and compile=true: wall, train_seconds, KL."""
    lines = ["", "| default run (ebm-train) | wall s | train_seconds | seconds_compile | kl |",
             "|---|---:|---:|---:|---:|"]
    script = Path(sys.executable).with_name("ebm-train")
    for setting in ("false", "true"):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            subprocess.run([str(script), f"hydra.run.dir={tmp}/run", f"compile={setting}"],
                           check=True, capture_output=True, cwd=tmp)
            wall = time.perf_counter() - start
            m = json.loads((Path(tmp) / "run" / "metrics.json").read_text())
        lines.append(f"| compile={setting} | {wall:.1f} | {m['train_seconds']:.1f} | "
                     f"{m.get('seconds_compile', 0.0):.1f} | {m['kl']:.4f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--chains", type=int, default=1024)
    parser.add_argument("--default-run", action="store_true", help="also time ebm-train")
    parser.add_argument("--skip-micro", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    lines = [] if args.skip_micro else micro(args.rounds, args.chains)
    lines += mle_row(args.rounds)
    if args.default_run:
        lines += default_run()
    print("\n".join(lines))


if __name__ == "__main__":
    main()
