"""Trainer quality with DEFAULT settings: every trainer on every 2-D dataset, one table.

Each cell is one ``ebm-train trainer=… [sampler=…|trainer.method=…] data=… seed=…`` subprocess with
nothing else changed but ``image_every=0`` and the run directory, so the table measures the
config files' defaults. From each run's metrics.json it reports held-out NLL (nats, quadrature
log Z), ``kl`` = test NLL − true NLL (the true density, or the stored entropy for moons) with its
standard error over the test points (``kl_se``: a KL within ~2 s.e. of 0 is no worse than the
truth), MMD of model samples vs held-out data, ``train_seconds`` (the training loop's wall time,
CPU-bound with threads=1) and the process's CPU seconds (user + system: start-up, training,
evaluation, plots). A baseline row per dataset is a single full-covariance Gaussian fitted to the
training data (maximum likelihood), its test NLL and KL computed here from the same data.

    PYTHONPATH=. python benchmarks/bench_trainers.py --jobs 2 --out bench_trainers.md
    PYTHONPATH=. python benchmarks/bench_trainers.py --datasets moons --trainers nce mle-hmc \\
        --seeds 0 1 2 --set trainer.steps=3000      # try a change to the defaults

Targets (configs/trainer/*.yaml): every trainer beats the fitted Gaussian clearly on every
dataset; mle-* and nce reach KL < 0.1 nats on two_gaussians and eight_gaussians; every run
takes at most 120 s of CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ("two_gaussians", "eight_gaussians", "moons", "rings", "checkerboard")
TRAINERS: dict[str, list[str]] = {
    "mle-langevin": ["trainer=mle", "sampler=langevin"],
    "mle-hmc": ["trainer=mle", "sampler=hmc"],
    "mle-mh": ["trainer=mle", "sampler=mh"],
    "mle-mala": ["trainer=mle", "sampler=mala"],
    "sm-exact": ["trainer=score_matching", "trainer.method=exact"],
    "sm-sliced": ["trainer=score_matching", "trainer.method=sliced"],
    "sm-denoising": ["trainer=score_matching", "trainer.method=denoising"],
    "nce": ["trainer=nce"],
}
CPU_LIMIT = 120.0  # s of CPU per run (target)
KL_TARGET = 0.1  # nats, mle-* and nce on the Gaussian mixtures (target)


@dataclass
class Run:
    dataset: str
    trainer: str
    seed: int
    metrics: dict[str, float] = field(default_factory=dict)
    wall: float = math.nan
    cpu: float = math.nan
    error: str = ""


def ebm_train() -> list[str]:
    script = Path(sys.executable).parent / "ebm-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ebm_cli.app.cli"]


def run_one(run: Run, root: Path, extra: list[str]) -> Run:
    """One ebm-train subprocess; its CPU time from os.wait4 (this child only)."""
    run_dir = root / f"{run.dataset}-{run.trainer}-s{run.seed}"
    args = [*TRAINERS[run.trainer], f"data={run.dataset}", f"seed={run.seed}", "image_every=0",
            f"hydra.run.dir={run_dir}", *extra]
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COLUMNS": "120"}
    start = time.perf_counter()
    with open(run_dir / "log.txt", "w") as log:
        proc = subprocess.Popen(ebm_train() + args, stdout=log, stderr=subprocess.STDOUT,
                                cwd=root, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    run.wall = time.perf_counter() - start
    run.cpu = usage.ru_utime + usage.ru_stime
    metrics_file = run_dir / "metrics.json"
    if proc.returncode != 0 or not metrics_file.exists():
        tail = (run_dir / "log.txt").read_text().strip().splitlines()[-1:] or ["?"]
        run.error = f"exit {proc.returncode}: {tail[0][:120]}"
    else:
        run.metrics = json.loads(metrics_file.read_text())
    return run


def gaussian_baseline(dataset: str) -> dict[str, float]:
    """Test NLL and KL (nats) of N(mean, cov) fitted by maximum likelihood to the training data."""
    ds = instantiate(OmegaConf.load(ROOT / "configs" / "data" / f"{dataset}.yaml"))
    train, test = ds.train.double(), ds.test.double()
    mean = train.mean(0)
    cov = torch.cov(train.T, correction=0)  # ML covariance [D, D]
    q = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    out = {"test_nll": float(-q.log_prob(test).mean())}
    if ds.log_prob is not None:
        out["kl"] = out["test_nll"] + float(ds.log_prob(test).mean())
    elif ds.entropy is not None:
        out["kl"] = out["test_nll"] - float(ds.entropy)
    return out


def _stat(values: list[float], digits: int) -> str:
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(runs: list[Run], baselines: dict[str, dict[str, float]], datasets: list[str],
          trainers: list[str]) -> str:
    """Markdown: dataset × trainer, mean ± sd over seeds; the Gaussian baseline first."""
    lines = [
        "| dataset | trainer | test NLL | KL | KL s.e. | gain vs Gaussian | MMD | train s "
        "| CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for d in datasets:
        base = baselines[d]
        lines.append(f"| {d} | *Gaussian fit* | {base['test_nll']:.3f} | "
                     f"{base.get('kl', math.nan):.3f} | | 0 | | | |")
        for t in trainers:
            cell = [r for r in runs if r.dataset == d and r.trainer == t]
            ok = [r for r in cell if not r.error]
            failed = [f"seed {r.seed}: {r.error}" for r in cell if r.error]
            if not ok:
                lines.append(f"| {d} | {t} | failed: {'; '.join(failed)} | | | | | | |")
                continue

            def col(key: str, rs: list[Run] = ok) -> list[float]:
                return [r.metrics.get(key, math.nan) for r in rs]

            gain = [base["test_nll"] - v for v in col("test_nll")]
            se = [v for v in col("kl_se") if math.isfinite(v)]  # test-set error of one run's KL
            kl_se = f"{statistics.mean(se):.3f}" if se else "–"
            note = f" ({len(failed)} failed)" if failed else ""
            lines.append(
                f"| {d} | {t}{note} | {_stat(col('test_nll'), 3)} | {_stat(col('kl'), 3)} "
                f"| {kl_se} | {_stat(gain, 2)} | {_stat(col('mmd'), 4)} "
                f"| {_stat(col('train_seconds'), 0)} | {_stat([r.cpu for r in ok], 0)} |"
            )
    return "\n".join(lines)


def checks(runs: list[Run], baselines: dict[str, dict[str, float]]) -> list[str]:
    """The targets, one line per miss (empty when all are met)."""
    misses = []
    for r in runs:
        name = f"{r.dataset} {r.trainer} seed {r.seed}"
        if r.error:
            misses.append(f"{name}: {r.error}")
            continue
        gain = baselines[r.dataset]["test_nll"] - r.metrics.get("test_nll", math.nan)
        if not gain > 0.1:
            misses.append(f"{name}: NLL gain over the Gaussian {gain:.3f} nats (want > 0.1)")
        if r.cpu > CPU_LIMIT:
            misses.append(f"{name}: {r.cpu:.0f} s CPU (want <= {CPU_LIMIT:.0f})")
        gaussians = r.dataset in ("two_gaussians", "eight_gaussians")
        if gaussians and (r.trainer.startswith("mle") or r.trainer == "nce"):
            kl = r.metrics.get("kl", math.nan)
            if not kl < KL_TARGET:
                misses.append(f"{name}: KL {kl:.3f} (want < {KL_TARGET})")
    return misses


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=list(TRAINERS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--jobs", type=int, default=1, help="parallel ebm-train processes")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    p.add_argument("--json", type=Path, default=None, help="write every run's numbers here")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep run directories here (default: a temporary directory)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra ebm-train overrides for every run (then not the defaults)")
    args = p.parse_args()
    torch.set_num_threads(1)

    runs = [Run(d, t, s) for d in args.datasets for t in args.trainers for s in args.seeds]
    baselines = {d: gaussian_baseline(d) for d in args.datasets}
    with tempfile.TemporaryDirectory(prefix="bench_trainers_") as tmp:
        root = args.workdir.resolve() if args.workdir else Path(tmp)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for r in pool.map(lambda r: run_one(r, root, args.set), runs):
                kl = r.metrics.get("kl", math.nan)
                status = r.error or f"KL {kl:.3f}, {r.cpu:.0f} s CPU, {r.wall:.0f} s wall"
                print(f"{r.dataset:16s} {r.trainer:13s} seed {r.seed}: {status}", flush=True)
        total = time.perf_counter() - start
    md = table(runs, baselines, args.datasets, args.trainers)
    misses = checks(runs, baselines)
    extra = f", overrides {' '.join(args.set)}" if args.set else " (defaults)"
    footer = (f"\n\n{len(runs)} runs{extra}, seeds {' '.join(map(str, args.seeds))}, "
              f"--jobs {args.jobs}: {total / 60:.1f} min wall.\n")
    footer += ("Targets: all met.\n" if not misses else
               "Targets missed:\n" + "".join(f"- {m}\n" for m in misses))
    print("\n" + md + footer)
    if args.out:
        args.out.write_text(md + footer)
    if args.json:
        args.json.write_text(json.dumps(
            {"baselines": baselines,
             "runs": [{**r.__dict__} for r in runs]}, indent=1, default=str))


if __name__ == "__main__":
    main()
