"""Seed sweeps: one summary row per configuration, every metric as mean ± sd over its seeds.

A configuration is a sweep job's overrides other than ``seed`` (:func:`group_by_config`); a sweep
is summarised this way when some configuration ran several seeds (:func:`seed_configs`), ranked
by the mean (:func:`rank_configs`). Each metric is the mean ± sample sd over its finished seeds
(:func:`stat_of`, shown by :func:`mean_sd`). ebm_cli/app/sweep.py prints and writes the rows
(:func:`build_config_table`) and summary.csv (:func:`write_config_csv`).
"""

from __future__ import annotations

import csv
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebm_cli.app.sweep_table import MODES, Job, SummaryTable, format_cell, short_value, varying_keys

SEED = "seed"
SEED_NOTE = ("Each configuration: mean ± sample sd (n − 1) over its finished seeds; n = finished "
             "/ all jobs; (n=k): only k of them reported that metric; failed jobs are listed, "
             "never averaged.")


@dataclass(frozen=True)
class Stat:
    """One metric over a configuration's finished seeds: mean, sample sd s (n − 1 in the
    denominator, s² = Σ(xᵢ − x̄)² / (n − 1); None for n < 2) and n, the number of finite values."""

    mean: float | None
    sd: float | None
    n: int


def stat_of(values: list[float]) -> Stat:
    """Mean, sample sd and count of the finite values among ``values`` (NaN/inf left out)."""
    finite = [float(v) for v in values if math.isfinite(v)]
    if not finite:
        return Stat(None, None, 0)
    sd = statistics.stdev(finite) if len(finite) > 1 else None
    return Stat(statistics.fmean(finite), sd, len(finite))


def _numeric(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class Config:
    """A configuration of a seed sweep: its overrides other than ``seed`` and its jobs (one per
    seed); ``stats``: every numeric metric over the finished jobs that report it."""

    overrides: dict[str, str]
    jobs: list[Job]
    stats: dict[str, Stat] = field(default_factory=dict)
    rank: int | None = field(default=None, compare=False)

    @property
    def finished(self) -> list[Job]:
        return [j for j in self.jobs if not j.failed]

    @property
    def failed(self) -> list[Job]:
        return [j for j in self.jobs if j.failed]

    @property
    def seeds(self) -> list[str]:
        return [j.overrides.get(SEED, "") for j in self.jobs]


def group_by_config(jobs: list[Job]) -> list[Config]:
    """The jobs grouped by their overrides other than ``seed`` (in order of their first job, jobs
    in job order), each metric aggregated with :func:`stat_of`."""
    groups: dict[tuple[tuple[str, str], ...], list[Job]] = {}
    for job in sorted(jobs, key=lambda j: (j.num, str(j.path))):
        key = tuple(sorted((k, v) for k, v in job.overrides.items() if k != SEED))
        groups.setdefault(key, []).append(job)
    configs = []
    for members in groups.values():
        names = sorted({k for j in members for k, v in (j.metrics or {}).items() if _numeric(v)})
        stats = {k: stat_of([m[k] for j in members if _numeric((m := j.metrics or {}).get(k))])
                 for k in names}
        overrides = {k: v for k, v in members[0].overrides.items() if k != SEED}
        configs.append(Config(overrides, members, stats))
    return configs


def seed_configs(jobs: list[Job]) -> list[Config] | None:
    """The configurations of a seed sweep, or None when the jobs are no seed sweep: ``seed``
    takes more than one value among the job overrides and some configuration ran more than
    one seed (``sampler=mh,hmc seed=1`` or ``seed=0`` alone keep the per-job summary)."""
    if len({j.overrides.get(SEED) for j in jobs}) < 2:
        return None
    configs = group_by_config(jobs)
    if not any(len(set(c.seeds)) > 1 for c in configs):
        return None
    return configs


def rank_configs(configs: list[Config], metric: str, mode: str = "min") -> list[Config]:
    """Configurations by the mean of ``metric`` over their finished seeds, best first (ranks
    1, 2, ...; ties in job order), then those none of whose finished jobs reported it, then
    those all of whose jobs failed."""
    if mode not in MODES:
        raise ValueError(f"hydra.callbacks.sweep_summary.mode must be min or max, got {mode!r}")
    sign = 1.0 if mode == "min" else -1.0
    keyed: list[tuple[float, int, Config]] = []
    rest: list[Config] = []
    for config in configs:
        config.rank = None
        stat = config.stats.get(metric)
        if stat is not None and stat.mean is not None:
            keyed.append((sign * stat.mean, config.jobs[0].num, config))
        else:
            rest.append(config)
    scored = [c for *_, c in sorted(keyed, key=lambda t: t[:2])]
    for r, config in enumerate(scored, start=1):
        config.rank = r
    return (scored + [c for c in rest if c.finished]
            + [c for c in rest if not c.finished])


def _seed_list(seeds: list[str]) -> str:
    """``["0", "1", "2", "5"]`` -> ``0–2,5``: the seeds of a row, runs of integers shortened."""
    try:
        numbers = sorted({int(s) for s in seeds})
    except ValueError:
        return ",".join(seeds)
    parts: list[str] = []
    start = prev = numbers[0]
    for n in [*numbers[1:], None]:
        if n is not None and n == prev + 1:
            prev = n
            continue
        parts.append(str(start) if start == prev else
                     f"{start},{prev}" if prev == start + 1 else f"{start}–{prev}")
        if n is not None:
            start = prev = n
    return ",".join(parts)


def mean_sd(mean: float, sd: float) -> str:
    """``2.317 ± 0.031``: sd to 2 significant digits and the mean to the same decimal place
    (``1296 ± 85``); very small or large numbers as ``3.7102e-05 ± 1.2e-06``."""
    if sd > 0 and abs(mean) < 1e6:
        decimals = max(0, 1 - math.floor(math.log10(sd)))
        if decimals <= 6:
            return f"{mean:.{decimals}f} ± {sd:.{decimals}f}"
    return f"{mean:.5g} ± {sd:.2g}"


def format_stat(stat: Stat | None, finished: int) -> str:
    """A table cell: ``mean ± sd`` (:func:`mean_sd`), one value without ``±``, nothing without a
    value; ``(n=2)`` appended when fewer than the ``finished`` jobs reported the metric."""
    if stat is None or stat.mean is None:
        return ""
    text = format_cell(stat.mean) if stat.sd is None else mean_sd(stat.mean, stat.sd)
    return text if stat.n == finished else f"{text} (n={stat.n})"


def _failure_of(job: Job) -> str:
    seed = job.overrides.get(SEED)
    return f"job {job.num}" + (f" ({SEED}={seed})" if seed is not None else "")


def build_config_table(configs: list[Config], jobs: list[Job], metric: str,
                       columns: list[str]) -> SummaryTable:
    """Ranked rows: rank, the varying overrides but ``seed``, seeds, n (finished/all jobs),
    ``metric`` and ``columns`` as mean ± sd; a row's error cell names its failed jobs."""
    varying = [k for k in varying_keys(jobs)[0] if k != SEED]
    reported = {k for c in configs for k in c.stats}
    shown = [metric] + [c for c in columns if c != metric and c in reported]
    header = ["rank", *varying, "seeds", "n", *shown]
    rows, errors, styles, failures = [], [], [], []
    for config in configs:
        done = len(config.finished)
        rows.append([
            str(config.rank) if config.rank is not None else "—",
            *(short_value(config.overrides.get(k, "")) for k in varying),
            _seed_list(config.seeds), f"{done}/{len(config.jobs)}",
            *(format_stat(config.stats.get(k), done) for k in shown),
        ])
        failed = config.failed
        errors.append("; ".join(f"{_failure_of(j)}: {j.error}" for j in failed)
                      if failed else None)
        styles.append(None if not failed else "red" if not done else "yellow")
        failures += [(_failure_of(j), j.error) for j in failed]
    return SummaryTable(header, rows, errors, styles, failures)


def write_config_csv(path: Path, configs: list[Config], metric: str) -> None:
    """One row per configuration, best first: its overrides but ``seed``, its seeds, job counts,
    and ``<m>_mean``, ``<m>_sd`` (empty for n < 2), ``<m>_n`` of every numeric metric."""
    keys: list[str] = []
    for config in configs:
        keys += [k for k in config.overrides if k not in keys]
    names = sorted({k for c in configs for k in c.stats} - {metric})
    stat_cols = [f"{m}_{part}" for m in [metric, *names] for part in ("mean", "sd", "n")]
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", *keys, "seeds", "n_jobs", "n_ok", *stat_cols, "failed_jobs",
                    "error"])
        for config in configs:
            cells: list[Any] = []
            for m in [metric, *names]:
                stat = config.stats.get(m, Stat(None, None, 0))
                cells += ["" if stat.mean is None else repr(stat.mean),
                          "" if stat.sd is None else repr(stat.sd), stat.n]
            w.writerow([
                "" if config.rank is None else config.rank,
                *(config.overrides.get(k, "") for k in keys), " ".join(config.seeds),
                len(config.jobs), len(config.finished), *cells,
                " ".join(str(j.num) for j in config.failed),
                "; ".join(f"{_failure_of(j)}: {j.error}" for j in config.failed),
            ])
