"""Improved contrastive divergence (Du et al. 2021) against plain MLE, through the CLI.

Each variant is one ``ebm-train`` run per seed: the default two_gaussians MLE run (2000 updates,
PCD) with sampler=langevin at η = 0.05, so the differentiable steps are the sampler's own update;
extra overrides go after ``--`` (e.g. short-run chains from noise). The table gives KL ± its
standard error, MMD², KSD², precision/recall and train seconds from metrics.json (the mean over
seeds when several, ± the sd across seeds then). Train seconds on a shared machine are noisy.

    PYTHONPATH=. python benchmarks/bench_improved_cd.py --seeds 0
    PYTHONPATH=. python benchmarks/bench_improved_cd.py --seeds 0 --only MLE \
        "+ KL (w=1, 1 step)" "+ KL + entropy (w=1, 2 = D)" -- trainer.init=noise \
        trainer.sampler_steps=10
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BASE = ["threads=1", "sampler=langevin", "sampler.step_size=0.05"]
VARIANTS = {
    "MLE": [],
    "+ KL (w=1, 1 step)": ["trainer.kl_weight=1.0"],
    "+ KL + entropy (w=1, 0.1)": ["trainer.kl_weight=1.0", "trainer.entropy_weight=0.1"],
    # −mean log NN distance is Ĥ/D (Kozachenko–Leonenko), so KL = E − H weighs it D = 2
    "+ KL + entropy (w=1, 2 = D)": ["trainer.kl_weight=1.0", "trainer.entropy_weight=2.0"],
    "+ KL (w=0.1, 1 step)": ["trainer.kl_weight=0.1"],
    "+ KL (w=1, 5 steps)": ["trainer.kl_weight=1.0", "trainer.kl_steps=5"],
}
KEYS = ("kl", "kl_se", "mmd", "ksd", "precision", "recall", "train_seconds")


def run(overrides: list[str], seed: int, out: Path) -> dict[str, float]:
    """One CLI run; its metrics.json."""
    cmd = ["ebm-train", *BASE, *overrides, f"seed={seed}", f"hydra.run.dir={out}"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stderr[-2000:]}")
    return json.loads((out / "metrics.json").read_text())


def cell(values: list[float], digits: int) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--only", nargs="*", help="variant names to run (default: all)")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every run")
    args = parser.parse_args()
    names = args.only or list(VARIANTS)
    print(f"two_gaussians, {' '.join(BASE + args.overrides)}, seeds {args.seeds}\n")
    print("| variant | KL (nats) | KL se | MMD² | KSD² | precision | recall | train s |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for v, name in enumerate(names):
            ms = [run(VARIANTS[name] + args.overrides, s, Path(tmp) / f"{v}_{s}")
                  for s in args.seeds]
            cols = {k: [m[k] for m in ms] for k in KEYS}
            print(f"| {name} | {cell(cols['kl'], 4)} | {cell(cols['kl_se'], 4)} "
                  f"| {cell(cols['mmd'], 4)} | {cell(cols['ksd'], 4)} "
                  f"| {cell(cols['precision'], 3)} | {cell(cols['recall'], 3)} "
                  f"| {cell(cols['train_seconds'], 1)} |", flush=True)


if __name__ == "__main__":
    main()
