"""Cost of the held-out NLL curve (``eval_every``) to the training loop, at the default cadence.

The curve adds one ``held_out_nll`` (quadrature on a CURVE_GRID² grid plus the test energies)
every ``eval_every`` steps. Both are timed here on the default run's parts (the composed
``ebm-train`` config, any overrides given), interleaved so a loaded machine slows both alike:
``--blocks`` times, ``eval_every`` trainer steps, then one curve point. Cost = median curve
time / median time of ``eval_every`` steps (the target is ≤ 5 %). The NLL of the coarse grid
is compared with the final evaluation's (2 × eval.grid) on the trained model, to show that the
cheap grid measures the same number.

    PYTHONPATH=. python benchmarks/bench_curve.py --blocks 5
    PYTHONPATH=. python benchmarks/bench_curve.py --blocks 5 energy.width=512 energy.depth=2
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_module

import ebm_cli.app.cli  # noqa: F401  (registers the config's resolvers)
from ebm_cli.app.config_check import check_config
from ebm_cli.build import build
from ebm_cli.evaluation.quadrature import CURVE_GRID, held_out_nll, log_partition_2d, nll


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with initialize_config_module("ebm_cli.configs", version_base="1.3"):
        plain = check_config(compose("config", overrides=args.overrides))
    torch.set_num_threads(plain["threads"])
    torch.manual_seed(plain["seed"])
    parts = build(plain, torch.device("cpu"), torch.float32)
    every = plain["eval_every"]
    train_x, test = parts.dataset.train.float(), parts.dataset.test.float()
    gen, cpu_gen = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    steps_s, curve_s = [], []
    for _ in range(args.blocks):
        start = time.perf_counter()
        for _ in range(every):
            idx = torch.randint(train_x.shape[0], (parts.batch_size,), generator=cpu_gen)
            parts.trainer.step(train_x[idx], gen)
        steps_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        value = held_out_nll(parts.energy_fn, test, parts.dataset.bounds, CURVE_GRID)
        curve_s.append(time.perf_counter() - start)
    fine = float(nll(parts.energy_fn, test, log_partition_2d(
        parts.energy_fn, parts.dataset.bounds, 2 * plain["eval"]["grid"])))
    step, curve = statistics.median(steps_s), statistics.median(curve_s)
    print(f"| overrides | {every} steps (s) | one curve point (s) | cost | NLL {CURVE_GRID}² grid "
          f"| NLL {2 * plain['eval']['grid']}² grid |")
    print("|---|---|---|---|---|---|")
    print(f"| {' '.join(args.overrides) or '(defaults)'} | {step:.3f} | {curve:.4f} | "
          f"{100 * curve / step:.2f} % | {value:.6f} | {fine:.6f} |")


if __name__ == "__main__":
    main()
