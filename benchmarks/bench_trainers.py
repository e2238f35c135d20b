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

    PYTHONPATH=. python benchmarks/bench_trainers.py --jobs 2 --seeds 0 1 2 \
        --jsonl build/trainers.jsonl --out bench_trainers.md   # the docs' table (stoppable)
    PYTHONPATH=. python benchmarks/bench_trainers.py --peer --seeds 0 1 2 --jobs 2  # peer's moons
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
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from ebm_cli.evaluation.mmd import mmd_with_se

ROOT = Path(__file__).resolve().parent.parent
DATASETS = ("two_gaussians", "eight_gaussians", "moons", "circles", "rings", "checkerboard",
            "pinwheel", "spirals", "swissroll")
TRAINERS: dict[str, list[str]] = {
    "mle-langevin": ["trainer=mle", "sampler=langevin"],
    "mle-hmc": ["trainer=mle", "sampler=hmc"],
    "mle-mh": ["trainer=mle", "sampler=mh"],
    "mle-mala": ["trainer=mle", "sampler=mala"],
    "sm-exact": ["trainer=score_matching", "trainer.method=exact"],
    "sm-sliced": ["trainer=score_matching", "trainer.method=sliced"],
    "sm-denoising": ["trainer=score_matching", "trainer.method=denoising"],
    "nce": ["trainer=nce"],
    "energy_discrepancy": ["trainer=energy_discrepancy"],
    "ncsn": ["experiment=ncsn"],
    "drl": ["experiment=drl"],
}
# The default set: every trainer once, MLE with its default sampler (HMC); mle-langevin, mle-mh
# and mle-mala are the same trainer with other samplers (--trainers to add them).
DEFAULT_TRAINERS = ("mle-hmc", "sm-exact", "sm-sliced", "sm-denoising", "nce",
                    "energy_discrepancy", "ncsn", "drl")
# The peer library's own moons setting: MLP 2-128-128-1, 6000 updates, MMD² with one Gaussian
# kernel of bandwidth 0.3 in make_moons units (our moons are 2·make_moons: h = 0.6 here).
PEER_SET = ["energy.width=128", "energy.depth=2", "trainer.steps=6000"]
PEER_TRAINERS: dict[str, list[str]] = {
    "cd (langevin, k=1, from data)": ["trainer=mle", "sampler=langevin", "trainer.init=data"],
    "pcd (langevin)": ["trainer=mle", "sampler=langevin"],
    "nce": ["trainer=nce"],
    "sm-sliced": ["trainer=score_matching", "trainer.method=sliced"],
    "ncsn": ["experiment=ncsn"],
    "drl": ["experiment=drl"],
    "energy_discrepancy": ["trainer=energy_discrepancy"],
}
PEER_BANDWIDTH = 0.3 * 2.0  # make_moons units × moons' scale
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
    peer_mmd: float = math.nan  # --peer: MMD² at the peer's single bandwidth

    @property
    def key(self) -> str:
        return f"{self.dataset}|{self.trainer}|{self.seed}"


def ebm_train() -> list[str]:
    script = Path(sys.executable).parent / "ebm-train"
    return [str(script)] if script.exists() else [sys.executable, "-m", "ebm_cli.app.cli"]


def run_one(run: Run, root: Path, extra: list[str], trainers: dict[str, list[str]]) -> Run:
    """One ebm-train subprocess; its CPU time from os.wait4 (this child only)."""
    slug = "".join(c if c.isalnum() or c in "-_" else "_" for c in run.trainer)
    run_dir = root / f"{run.dataset}-{slug}-s{run.seed}"
    args = [*trainers[run.trainer], f"data={run.dataset}", f"seed={run.seed}", "image_every=0",
            f"hydra.run.dir={run_dir}", "overwrite=true", *extra]
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
        if (run_dir / "samples.npy").exists() and run.dataset == "moons":
            run.peer_mmd = peer_mmd(run_dir / "samples.npy")
    return run


def load_dataset(dataset: str) -> Any:
    """The dataset as every run builds it (its split has its own data.seed, not the run's)."""
    return instantiate(OmegaConf.load(ROOT / "configs" / "data" / f"{dataset}.yaml"))


def peer_mmd(samples_file: Path) -> float:
    """MMD² (unbiased) of a moons run's samples against the held-out points, one Gaussian kernel
    of width PEER_BANDWIDTH: the peer library's metric, in our units."""
    ds = load_dataset("moons")
    samples = torch.from_numpy(np.load(samples_file)).double()
    test = ds.to_original(ds.test).double()
    value, _ = mmd_with_se(samples, test, bandwidths=[PEER_BANDWIDTH], max_points=2000)
    return float(value)


def gaussian_baseline(dataset: str) -> dict[str, float]:
    """Test NLL and KL (nats) of N(mean, cov) fitted by maximum likelihood to the training data."""
    ds = load_dataset(dataset)
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
    """mean ± sd (sample sd, n − 1) of the finite values; one value alone; – for none."""
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


COLUMNS = ("n", "test NLL", "KL", "KL s.e.", "MMD", "precision", "recall", "train s",
           "grads/update", "CPU s")


def table(runs: list[Run], baselines: dict[str, dict[str, float]], datasets: list[str],
          trainers: list[str]) -> str:
    """Markdown: dataset × trainer, mean ± sd over seeds (n in the trainer cell when < seeds);
    the Gaussian baseline first."""
    lines = ["| dataset | trainer | " + " | ".join(COLUMNS) + " |",
             "|---|---|" + "---:|" * len(COLUMNS)]
    for d in datasets:
        base = baselines[d]
        lines.append(f"| {d} | *Gaussian fit* | | {base['test_nll']:.3f} | "
                     f"{base.get('kl', math.nan):.3f} |" + " |" * (len(COLUMNS) - 3))
        for t in trainers:
            cell = [r for r in runs if r.dataset == d and r.trainer == t]
            if not cell:
                continue
            ok = [r for r in cell if not r.error]
            failed = [f"seed {r.seed}: {r.error}" for r in cell if r.error]
            if not ok:
                lines.append(f"| {d} | {t} | failed: {'; '.join(failed)} |"
                             + " |" * (len(COLUMNS) - 1))
                continue

            def col(key: str, rs: list[Run] = ok) -> list[float]:
                return [float(r.metrics.get(key, math.nan)) for r in rs]

            se = [v for v in col("kl_se") if math.isfinite(v)]  # test-set error of one run's KL
            kl_se = f"{statistics.mean(se):.3f}" if se else "–"
            note = f" ({len(failed)} of {len(cell)} failed)" if failed else ""
            cells = [str(len(ok)), _stat(col("test_nll"), 3), _stat(col("kl"), 3), kl_se,
                     _stat(col("mmd"), 4),
                     _stat(col("precision"), 2), _stat(col("recall"), 2),
                     _stat(col("train_seconds"), 0), _stat(col("gradients_per_update"), 1),
                     _stat([r.cpu for r in ok], 0)]
            lines.append(f"| {d} | {t}{note} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def peer_table(runs: list[Run], trainers: list[str]) -> str:
    """Markdown for --peer: moons at the peer's setting, MMD² at its bandwidth, mean ± sd."""
    lines = ["| trainer | MMD² (h = 0.3, make_moons units) | KL | test NLL | CPU s |",
             "|---|---:|---:|---:|---:|"]
    for t in trainers:
        ok = [r for r in runs if r.trainer == t and not r.error]
        failed = [r for r in runs if r.trainer == t and r.error]
        if not ok:
            lines.append(f"| {t} | failed: {'; '.join(r.error for r in failed)} | | | |")
            continue
        note = f" ({len(failed)} failed)" if failed else ""
        lines.append(f"| {t}{note} | {_stat([r.peer_mmd for r in ok], 4)} | "
                     f"{_stat([float(r.metrics.get('kl', math.nan)) for r in ok], 3)} | "
                     f"{_stat([float(r.metrics.get('test_nll', math.nan)) for r in ok], 3)} | "
                     f"{_stat([r.cpu for r in ok], 0)} |")
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


def load_done(path: Path | None) -> dict[str, Run]:
    """Runs already in a --jsonl file (one JSON object per line), by key; later lines win."""
    done: dict[str, Run] = {}
    if path is None or not path.exists():
        return done
    for line in path.read_text().splitlines():
        if line.strip():
            r = Run(**json.loads(line))
            done[r.key] = r
    return done


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--trainers", nargs="+", default=None,
                   help=f"of {', '.join(TRAINERS)} (default: {' '.join(DEFAULT_TRAINERS)}); "
                        f"with --peer: of {', '.join(PEER_TRAINERS)}")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--jobs", type=int, default=1, help="parallel ebm-train processes")
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    p.add_argument("--json", type=Path, default=None, help="write every run's numbers here")
    p.add_argument("--jsonl", type=Path, default=None,
                   help="append each finished run here and skip runs already in it (a long "
                        "table can be stopped, continued and extended)")
    p.add_argument("--no-run", action="store_true",
                   help="only print the table of the runs already in --jsonl")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep run directories here (default: a temporary directory)")
    p.add_argument("--peer", action="store_true",
                   help="moons at the peer library's setting (" + " ".join(PEER_SET) + ") and "
                        "its MMD² at one bandwidth, for its trainers")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra ebm-train overrides for every run (then not the defaults)")
    args = p.parse_args()
    torch.set_num_threads(1)
    catalogue = PEER_TRAINERS if args.peer else TRAINERS
    trainers = args.trainers or list(PEER_TRAINERS if args.peer else DEFAULT_TRAINERS)
    unknown = [t for t in trainers if t not in catalogue]
    if unknown:
        p.error(f"unknown trainers {unknown}; choose from {list(catalogue)}")
    datasets = ["moons"] if args.peer else args.datasets
    extra = [*(PEER_SET if args.peer else []), *args.set]

    # seed-major: a table stopped early has every cell at the first seeds
    runs = [Run(d, t, s) for s in args.seeds for d in datasets for t in trainers]
    done = {k: r for k, r in load_done(args.jsonl).items() if not r.error}  # failed: again
    todo = [r for r in runs if r.key not in done]  # run_one fills these objects in place
    if args.no_run:  # the table of what is there
        runs, todo = [r for r in runs if r.key in done], []
    runs = [done.get(r.key, r) for r in runs]
    baselines = {d: gaussian_baseline(d) for d in datasets}
    print(f"{len(runs)} runs, {len(runs) - len(todo)} already in {args.jsonl}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_trainers_") as tmp:
        root = args.workdir.resolve() if args.workdir else Path(tmp)
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            for r in pool.map(lambda r: run_one(r, root, extra, catalogue), todo):
                kl = r.metrics.get("kl", math.nan)
                status = r.error or f"KL {kl:.3f}, {r.cpu:.0f} s CPU, {r.wall:.0f} s wall"
                print(f"{r.dataset:16s} {r.trainer:18s} seed {r.seed}: {status}", flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(r.__dict__, default=str) + "\n")
        total = time.perf_counter() - start
    md = peer_table(runs, trainers) if args.peer else table(runs, baselines, datasets, trainers)
    misses = [] if args.peer else checks(runs, baselines)
    what = f", overrides {' '.join(extra)}" if extra else " (defaults)"
    footer = (f"\n\n{len(runs)} runs{what}, seeds {' '.join(map(str, args.seeds))}, "
              f"--jobs {args.jobs}: {total / 60:.1f} min wall for the {len(todo)} runs done now.\n")
    if not args.peer:
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
