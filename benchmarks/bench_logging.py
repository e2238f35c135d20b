"""Cost of the logging cadence: ``ebm_cli.run.train`` at the default log/image/checkpoint cadence
against the same run with logging effectively off.

Both sides are the real run loop (``ebm_cli.run.train`` with a TensorBoard ``Reporter`` in its
non-terminal mode) built from the composed ``ebm-train`` config, in one process, interleaved,
median of ``--repeats`` runs each. "off" sets log_every to the run length (the loop still logs
its first and last step), image_every=0 and checkpoint_every=0 (images and the checkpoint only
at the end, outside the timed loop). "loop" is the run's own ``train_seconds`` (the training
loop only); "run" is the whole ``train()`` call (building, loop, a tiny final evaluation and the
final images). An untimed run first pays the imports and the first matplotlib figure (~0.5–1 s
once per process; every run pays it for its final images anyway, and a run with images during
training pays it inside the loop instead). Overhead = default / off − 1; the target is ≤ 10%.
On a loaded machine the step time itself drifts between runs, so "cadence share" measures inside
each run: (loop time / time inside trainer.step) − 1 at the default cadence, less the same for
the run with logging off.

    PYTHONPATH=. python benchmarks/bench_logging.py --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

import ebm_cli.app.cli  # noqa: F401  (registers the config's resolvers)
from ebm_cli import run
from ebm_cli.app.config_check import check_config
from ebm_cli.build import build
from ebm_cli.reporting.report import Reporter

RUNS = {
    "mle+hmc": ["trainer=mle", "sampler=hmc"],
    "mle+langevin": ["trainer=mle", "sampler=langevin"],
    "nce": ["trainer=nce"],
}
# The smallest final evaluation: it is not timed, it only has to be quick.
TINY_EVAL = ["eval.n_samples=50", "eval.sampler_steps=0", "eval.warmup=0", "eval.grid=16",
             "eval.mmd_points=50"]


def _seconds(overrides: list[str], threads: int) -> tuple[float, float, float]:
    """One run of ebm_cli.run.train; returns (training-loop seconds, whole train() seconds,
    seconds inside trainer.step)."""
    cfg = compose("config", overrides=[*overrides, *TINY_EVAL, f"threads={threads}"])
    plain = check_config(cfg)
    in_steps = [0.0]

    def timed_build(*args: Any, **kwargs: Any) -> run.Parts:
        parts = build(*args, **kwargs)
        step = parts.trainer.step

        def timed_step(*a: Any, **k: Any) -> Any:
            start = time.perf_counter()
            out = step(*a, **k)
            in_steps[0] += time.perf_counter() - start
            return out

        parts.trainer.step = timed_step
        return parts

    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(run, "build", timed_build):
        reporter = Reporter(Path(tmp), OmegaConf.to_yaml(cfg), plain["trainer"]["steps"],
                            live=False)
        start = time.perf_counter()
        try:
            metrics = run.train(plain, Path(tmp), reporter)
        finally:
            reporter.close()
    return float(metrics["train_seconds"]), time.perf_counter() - start, in_steps[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=0, help="trainer.steps (0: the default)")
    parser.add_argument("--only", nargs="*", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--override", nargs="*", default=[],
                        help="config overrides for both sides, e.g. image_every=500")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with initialize_config_module("ebm_cli.configs", version_base="1.3"):
        print(f"| run | steps | default (steps/s) | logging off (steps/s) | loop overhead | "
              f"run overhead | cadence share |  threads={args.threads}, median of {args.repeats}")
        print("|---|---:|---:|---:|---:|---:|---:|")
        _seconds([*RUNS[args.only[0]], "trainer.steps=10"], args.threads)  # imports, first figure
        for name in args.only:
            base = [*RUNS[name], *args.override,
                    *([f"trainer.steps={args.steps}"] if args.steps else [])]
            steps = compose("config", overrides=base).trainer.steps
            off = [*base, f"log_every={steps}", "image_every=0", "checkpoint_every=0"]
            t_default, t_off = [], []
            for _ in range(args.repeats):  # interleaved, so load drifts hit both alike
                t_default.append(_seconds(base, args.threads))
                t_off.append(_seconds(off, args.threads))
            (ld, rd, sd), (lo, ro, so) = _medians(t_default), _medians(t_off)
            print(f"| {name} | {steps} | {steps / ld:.1f} | {steps / lo:.1f} | "
                  f"{100 * (ld / lo - 1):+.1f}% | {100 * (rd / ro - 1):+.1f}% | "
                  f"{100 * (ld / sd - lo / so):+.1f}% |", flush=True)


def _medians(times: list[tuple[float, ...]]) -> tuple[float, ...]:
    return tuple(statistics.median(t[i] for t in times) for i in range(len(times[0])))


if __name__ == "__main__":
    main()
