"""Rosenbrock HMC (L = 10, 1024 chains, compile=true): inductor's vectorised C++ against scalar.

For row-major [B, 2] chains inductor's CPU tiling vectorises the innermost, contiguous
dimension, D = 2, i.e. 2 of AVX2's 8 lanes. This compiles the same transition twice in one
process, once as usual and once with ``torch._inductor.config.cpp.vec_isa_ok = False``, and
times them interleaved: one thread, process CPU time, medians (docs/speed.md).

    PYTHONPATH=. python benchmarks/bench_rosenbrock_codegen.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch._inductor.config as inductor_config

from ebm_cli.energies.analytic import Rosenbrock
from ebm_cli.samplers.base import ChainState
from ebm_cli.samplers.compiled import CompiledTransitions
from ebm_cli.samplers.hmc import HMC

VARIANTS = {"vectorised (default)": {}, "scalar (cpp.vec_isa_ok=False)": {"cpp.vec_isa_ok": False}}
STEPS = 80  # transitions per timed block


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    energy = Rosenbrock()
    x0 = energy.sample(1024, torch.Generator().manual_seed(7)).float()
    generator = torch.Generator().manual_seed(0)
    columns: dict[str, list] = {}
    for name, patch in VARIANTS.items():
        sampler = HMC(step_size=0.02, n_leapfrog=10, jitter=0.0, jitter_n_leapfrog=False)
        compiled = CompiledTransitions(energy)
        state: ChainState = sampler.init(energy, x0.clone())
        with inductor_config.patch(patch):  # the graph compiles at its first call
            for _ in range(2):
                state, _ = sampler.step(compiled, state, generator)
        columns[name] = [sampler, compiled, state]
    times: dict[str, list[float]] = {name: [] for name in columns}
    for r in range(args.rounds):
        for name in (list(columns) if r % 2 == 0 else list(columns)[::-1]):
            sampler, compiled, state = columns[name]
            start = time.process_time()
            for _ in range(STEPS):
                state, _ = sampler.step(compiled, state, generator)
            times[name].append((time.process_time() - start) / STEPS * 1e6)
            columns[name][2] = state
    base, scalar = (times[n] for n in VARIANTS)
    print("| codegen | µs per transition (median) |\n|---|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.0f} |")
    ratio = statistics.median(s / b for s, b in zip(scalar, base))
    print(f"\nscalar / vectorised, median of the per-round ratios: {ratio:.2f}")


if __name__ == "__main__":
    main()
