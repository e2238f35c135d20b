"""Sweeps that compare: a Hydra callback that ranks the jobs of a multirun by one metric.

Registered in configs/config.yaml as ``hydra.callbacks.sweep_summary``; its parameters are
overridable on the command line, e.g. ``hydra.callbacks.sweep_summary.metric=mmd``.

At the end of a sweep (``on_multirun_end``, on the machine that launched it) it reads every job
directory's ``metrics.json`` and ``.hydra/overrides.yaml`` — files, never stdout: launchers such as
submitit send a job's output to their own log files — prints the ranked table with rich and writes
``summary.md`` and ``summary.csv`` into the sweep directory. A job without ``metrics.json`` is
listed as failed with the first line of its error, never dropped. The sweep directory also gets
its own TensorBoard run (``write_board``): ``comparison.png``, every job's samples side by side
(ebm_cli/reporting/comparison.py), and the HParams experiment of its jobs, key metrics first
(ebm_cli/reporting/hparams.py).

A sweep over ``seed`` (``seed=0,1,2``, where some configuration has several seeds) is summarised
per configuration (the jobs' overrides other than ``seed``): one row each with ``n`` (finished /
all jobs), and every metric as mean ± sample sd over its finished seeds, ranked by the mean
(ebm_cli/app/seeds.py). summary.csv then holds ``<metric>_mean``, ``_sd`` and ``_n`` of every
numeric metric per configuration, ``jobs.csv`` the per-job table, and summary.md both tables.

``on_multirun_start`` counts the jobs and names the swept keys for the jobs
(ebm_cli/reporting/joblog.py): every log line of a job starts with ``[job 3/8]``, and
``on_job_start`` logs which job starts, with its overrides and directory.

By default (``keep_going: true``) one failed job does not stop the sweep: ``on_job_end`` (which
runs wherever the job runs) writes the error to the job's ``error.txt`` and hands the launcher a
completed job with no return value (an Optuna trial then counts as failed); the sweep exits with
status 1 after the summary when any job failed — also when every trial of an Optuna sweep failed,
where the sweeper itself would stop with a traceback (``on_multirun_start``, below).
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from ebm_cli.app.seeds import (
    SEED_NOTE,
    build_config_table,
    rank_configs,
    seed_configs,
    write_config_csv,
)
from ebm_cli.app.sweep_table import MODES, Job, SummaryTable, format_cell, short_value, varying_keys
from ebm_cli.reporting import joblog
from ebm_cli.reporting.report import CONSOLE

log = logging.getLogger("ebm_cli")

ERROR_FILE = "error.txt"
SUMMARY_MD = "summary.md"
SUMMARY_CSV = "summary.csv"
JOBS_CSV = "jobs.csv"  # a seed sweep's per-job table (summary.csv is then per configuration)
COMPARISON_PNG = "comparison.png"
BOARD_SUFFIX = ".sweep"  # the sweep directory's own event file: events.out.tfevents.*.sweep
ERRORS = Console(stderr=True)
OPTUNA_SWEEPER = joblog.OPTUNA_SWEEPER
NO_COMPLETED_TRIAL = "No trials are completed yet."  # optuna's ValueError from Study.best_trial


class JobFailed(Exception):
    """One sweep job stopped with a user-facing error (one line, already printed by the job)."""


def parse_override(text: str) -> tuple[str, str]:
    """``+sampler.x=1`` -> ("sampler.x", "1"); ``~key`` -> ("key", "~deleted")."""
    if text.startswith("~"):
        return text[1:].split("=", 1)[0], "~deleted"
    key, _, value = text.lstrip("+").partition("=")
    return key, value


def _job_num(job_dir: Path, fallback: int) -> int:
    hydra_yaml = job_dir / ".hydra" / "hydra.yaml"
    if hydra_yaml.is_file():
        num = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.job.num", default=None)
        if isinstance(num, int):
            return num
    prefix = job_dir.name.split("_", 1)[0]
    return int(prefix) if prefix.isdigit() else fallback


def _first_error_line(job_dir: Path) -> str:
    error_file = job_dir / ERROR_FILE
    if error_file.is_file():
        lines = [ln.strip() for ln in error_file.read_text().splitlines() if ln.strip()]
        if lines:  # a traceback ends with the exception line; a JobFailed message is one line
            return lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return "no metrics.json (the job's log is in its directory or the launcher's log folder)"


def collect_jobs(sweep_dir: Path) -> list[Job]:
    """Every job directory under ``sweep_dir`` (one holding ``.hydra/overrides.yaml``)."""
    jobs = []
    found = sorted(p.parent.parent for p in sweep_dir.rglob("overrides.yaml")
                   if p.parent.name == ".hydra")
    for i, job_dir in enumerate(found):
        overrides = OmegaConf.to_container(OmegaConf.load(job_dir / ".hydra" / "overrides.yaml"))
        assert isinstance(overrides, list)
        pairs = dict(parse_override(str(o)) for o in overrides)
        metrics, error = None, ""
        try:
            metrics = json.loads((job_dir / "metrics.json").read_text())
        except FileNotFoundError:
            error = _first_error_line(job_dir)
        except json.JSONDecodeError as e:  # e.g. a job killed while writing it
            error = f"metrics.json is not valid JSON ({e})"
        jobs.append(Job(_job_num(job_dir, i), job_dir, pairs, metrics, error))
    return sorted(jobs, key=lambda j: (j.num, str(j.path)))


def rank_jobs(jobs: list[Job], metric: str, mode: str = "min") -> list[Job]:
    """Jobs with a finite ``metric`` best first (ranks 1, 2, ...), then completed jobs without it,
    then failed jobs, each group in job order."""
    if mode not in MODES:
        raise ValueError(f"hydra.callbacks.sweep_summary.mode must be min or max, got {mode!r}")

    sign = 1.0 if mode == "min" else -1.0
    keyed: list[tuple[float, int, Job]] = []
    rest: list[Job] = []
    for job in jobs:
        job.rank = None
        v = (job.metrics or {}).get(metric)
        if isinstance(v, (int, float)) and math.isfinite(v):
            keyed.append((sign * float(v), job.num, job))
        else:
            rest.append(job)
    scored = [job for *_, job in sorted(keyed, key=lambda t: t[:2])]
    for r, job in enumerate(scored, start=1):
        job.rank = r
    return scored + [j for j in rest if not j.failed] + [j for j in rest if j.failed]


def build_table(jobs: list[Job], metric: str, columns: list[str]) -> tuple[SummaryTable,
                                                                           dict[str, str]]:
    """Ranked rows: rank, job, status, the varying overrides, ``metric`` and ``columns``."""
    varying, common = varying_keys(jobs)
    reported = {k for j in jobs for k in (j.metrics or {})}
    shown = [metric] + [c for c in columns if c != metric and c in reported]
    header = ["rank", "job", "status", *varying, *shown]
    rows = []
    for job in jobs:
        m = job.metrics or {}
        rows.append([
            str(job.rank) if job.rank is not None else "—",
            str(job.num),
            "failed" if job.failed else "ok",
            *(short_value(job.overrides.get(k, "")) for k in varying),
            *(format_cell(m.get(k)) for k in shown),
        ])
    return SummaryTable(header, rows, [j.error if j.failed else None for j in jobs]), common


def _markdown_table(table: SummaryTable) -> list[str]:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    failures = any(e is not None for e in table.errors)
    header = table.header + (["error"] if failures else [])
    lines = ["| " + " | ".join(cell(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    for row, error in zip(table.rows, table.errors):
        cells = row + ([error or ""] if failures else [])
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return lines


def write_markdown(path: Path, table: SummaryTable, title: str, common: dict[str, str],
                   footer: list[str] | None = None,
                   sections: list[tuple[str, SummaryTable]] | None = None) -> None:
    """``# title``, the common overrides, ``table``, then each ``## heading`` and its table of
    ``sections``, then the ``footer`` lines."""
    lines = [f"# {title}", ""]
    if common:
        lines += ["Common to all jobs: " + " ".join(f"`{k}={v}`" for k, v in common.items()), ""]
    lines += _markdown_table(table)
    for heading, section in sections or []:
        lines += ["", f"## {heading}", "", *_markdown_table(section)]
    if footer:
        lines += ["", *footer]
    path.write_text("\n".join(lines) + "\n")


def write_csv(path: Path, jobs: list[Job], metric: str) -> None:
    """Every override key and every metric of every job, best first (machine-readable)."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    names = sorted({k for j in jobs for k in (j.metrics or {})} - {metric})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rank", "job", "status", *keys, metric, *names, "error", "dir"])
        for job in jobs:
            m = job.metrics or {}
            w.writerow([
                "" if job.rank is None else job.rank, job.num,
                "failed" if job.failed else "ok", *(job.overrides.get(k, "") for k in keys),
                *(repr(m[k]) if k in m else "" for k in [metric, *names]),
                job.error, job.path.name,
            ])


def print_table(table: SummaryTable, title: str, common: dict[str, str]) -> None:
    rich_table = Table(title=title, header_style="bold")
    numeric = {"rank", "job"}
    for h in table.header:
        rich_table.add_column(h, justify="right" if h in numeric else "left", overflow="fold",
                              no_wrap=h == "status")
    styles = table.styles or ["red" if e is not None else None for e in table.errors]
    for row, style in zip(table.rows, styles):
        rich_table.add_row(*row, style=style)
    CONSOLE.print(rich_table)
    failures = table.failures
    if failures is None:
        failures = [(f"job {row[1]}", e) for row, e in zip(table.rows, table.errors)
                    if e is not None]
    for who, error in failures:
        CONSOLE.print(f"[red]{who} failed:[/red] {error}", soft_wrap=True, highlight=False)
    if common:
        CONSOLE.print("common to all jobs: " + " ".join(f"{k}={v}" for k, v in common.items()),
                      soft_wrap=True, highlight=False)


def write_board(sweep_dir: Path, jobs: list[Job]) -> Path:
    """The sweep's own TensorBoard run, in ``sweep_dir``: the comparison figure (also saved as
    comparison.png) and the HParams experiment of its jobs (key metrics first); returns the
    figure's path. An earlier board of the same sweep (a re-ranking) is replaced."""
    import matplotlib.pyplot as plt
    from torch.utils.tensorboard import SummaryWriter

    from ebm_cli.reporting import comparison, hparams

    varying, _ = varying_keys(jobs)
    panels = []
    for job in sorted(jobs, key=lambda j: j.num):
        shown = [f"{k}={short_value(job.overrides[k])}" for k in varying if k in job.overrides]
        title = " ".join([f"#{job.num}", *shown])
        panels.append(comparison.panel_of(job.path, title, job.error))
    fig = comparison.comparison_figure(panels, f"samples of every job of {sweep_dir}")
    image = comparison.render(fig)  # drawn once, for the file and for TensorBoard
    figure_path = sweep_dir / COMPARISON_PNG
    plt.imsave(figure_path, image)
    for old in sweep_dir.glob(f"events.out.tfevents.*{BOARD_SUFFIX}"):
        old.unlink()
    with SummaryWriter(log_dir=str(sweep_dir), filename_suffix=BOARD_SUFFIX) as writer:
        writer.add_image("sweep/comparison", image, 0, dataformats="HWC")
        hparams.write_experiment(writer, [j.path for j in jobs])
    return figure_path


def summarize(sweep_dir: Path, metric: str = "test_nll", mode: str = "min",
              columns: list[str] | None = None, show: bool = True,
              board: bool = False) -> list[Job]:
    """Rank the jobs of ``sweep_dir``, write summary.md and summary.csv there, print the table;
    ``board``: also the sweep's comparison figure and HParams experiment (:func:`write_board`).
    A seed sweep (:func:`seed_configs`) is ranked per configuration, mean ± sd over its seeds,
    with the per-job table in summary.md and jobs.csv. Returns the jobs, best first."""
    jobs = rank_jobs(collect_jobs(sweep_dir), metric, mode)
    if not jobs:
        CONSOLE.print(f"sweep summary: no job directories under {sweep_dir}", highlight=False)
        return jobs
    direction = "lower" if mode == "min" else "higher"
    columns = list(columns or [])
    job_title = f"{len(jobs)} jobs ranked by {metric} ({direction} is better)"
    job_table, common = build_table(jobs, metric, columns)
    configs = seed_configs(jobs)
    board_cmd = tensorboard_command(sweep_dir)
    footer = [f"Every job in TensorBoard (the HParams tab compares them): `{board_cmd}`"]
    figure = write_board(sweep_dir, jobs) if board else None
    if figure is not None:
        footer.append(f"The samples of every job side by side: {figure.name} (also in "
                      "TensorBoard, image sweep/comparison).")
    if configs is None:
        title, table = f"sweep summary: {job_title}", job_table
        write_markdown(sweep_dir / SUMMARY_MD, table, title, common, footer)
        write_csv(sweep_dir / SUMMARY_CSV, jobs, metric)
        files = f"{sweep_dir / SUMMARY_MD} and {SUMMARY_CSV}"
    else:
        configs = rank_configs(configs, metric, mode)
        title = (f"sweep summary: {len(configs)} configurations × seeds ({len(jobs)} jobs) "
                 f"ranked by mean {metric} ({direction} is better)")
        table = build_config_table(configs, jobs, metric, columns)
        footer.insert(0, SEED_NOTE)
        write_markdown(sweep_dir / SUMMARY_MD, table, title, common, footer,
                       sections=[(f"Every job: {job_title}", job_table)])
        write_config_csv(sweep_dir / SUMMARY_CSV, configs, metric)
        write_csv(sweep_dir / JOBS_CSV, jobs, metric)
        files = (f"{sweep_dir / SUMMARY_MD} (also every job), {SUMMARY_CSV} (per "
                 f"configuration: mean, sd, n of every metric) and {JOBS_CSV} (per job)")
    if show:
        print_table(table, title, common)
        if configs is not None:
            CONSOLE.print(SEED_NOTE, soft_wrap=True, highlight=False)
        if all(j.rank is None for j in jobs if not j.failed) and any(not j.failed for j in jobs):
            reported = sorted({k for j in jobs for k in (j.metrics or {})})
            CONSOLE.print(f"[yellow]note:[/yellow] no job reported {metric}; rank by another "
                          f"with hydra.callbacks.sweep_summary.metric=<{'|'.join(reported)}>",
                          soft_wrap=True, highlight=False)
        CONSOLE.print(f"summary: {files}", soft_wrap=True, highlight=False)
        if figure is not None:
            CONSOLE.print(f"samples of every job side by side: {figure}", soft_wrap=True,
                          highlight=False)
        CONSOLE.print(f"every job in TensorBoard: {board_cmd}", soft_wrap=True, highlight=False,
                      markup=False)
    return jobs


def tensorboard_command(sweep_dir: Path) -> str:
    """The shell command that shows every job of a sweep in TensorBoard (from any directory)."""
    return f"tensorboard --logdir {shlex.quote(str(sweep_dir.resolve()))}"


_WRAPPED: set[type] = set()


def _end_optuna_without_a_best_trial() -> None:
    """Let Optuna's sweeper finish when no trial completed.

    After its last batch the sweeper reads ``study.best_trial`` to write
    optimization_results.yaml; when every trial failed (here: each failed job is handed back as
    completed with no value, which the sweeper records as a failed trial) optuna raises
    ``ValueError("No trials are completed yet.")``, Hydra prints its traceback and
    ``on_multirun_end`` never runs. The sweeper is a plugin class Hydra builds itself, so this
    wraps its ``sweep`` (once per process, in the process that runs the sweep) to end normally
    in that one case, without the results file; the summary then lists every trial as failed
    and the sweep exits with status 1.
    """
    from hydra_plugins.hydra_optuna_sweeper._impl import OptunaSweeperImpl

    if OptunaSweeperImpl in _WRAPPED:
        return
    _WRAPPED.add(OptunaSweeperImpl)
    sweep = OptunaSweeperImpl.sweep

    @functools.wraps(sweep)
    def sweep_to_the_end(self: Any, arguments: list[str]) -> None:
        try:
            return sweep(self, arguments)
        except ValueError as e:
            if str(e) != NO_COMPLETED_TRIAL:
                raise
            log.warning("no trial completed, so Optuna has no best trial: "
                        "optimization_results.yaml is not written")
            return None

    OptunaSweeperImpl.sweep = sweep_to_the_end  # type: ignore[method-assign]


class SweepSummary(Callback):
    """Hydra callback: the ranked summary at the end of a multirun (see the module docstring).

    metric: a metrics.json key to rank by; mode: min | max; columns: further metrics to show in
    the printed table and summary.md (summary.csv holds them all); keep_going: a failed job
    does not stop the sweep (the sweep exits with status 1 at the end instead).
    """

    def __init__(self, metric: str = "test_nll", mode: str = "min",
                 columns: list[str] | None = None, keep_going: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"hydra.callbacks.sweep_summary.mode must be min or max, got {mode!r}")
        self.metric = str(metric)
        self.mode = mode
        self.columns = [str(c) for c in (columns or [])]
        self.keep_going = bool(keep_going)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if OmegaConf.select(config, "hydra.sweeper._target_") == OPTUNA_SWEEPER:
            _end_optuna_without_a_best_trial()
        joblog.announce(joblog.plan_of(config))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """In a sweep job: which job of how many, its overrides and its directory (the line
        carries the ``[job 3/8]`` prefix like every other line of the job)."""
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        overrides = " ".join(str(o) for o in config.hydra.overrides.task
                             if not str(o).startswith("hydra."))
        log.info("started: %s in %s", overrides or "(no overrides)",
                 config.hydra.runtime.output_dir)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or job_return.status != JobStatus.FAILED:
            return
        # The exception itself: the public `return_value` would re-raise it (and print a line).
        e = job_return._return_value
        if isinstance(e, JobFailed):  # a user error; its line is already on stderr
            text = str(e)
        else:  # a bug: keep the traceback
            text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            log.error("job %s failed:\n%s", config.hydra.job.num, text)
        (Path(config.hydra.runtime.output_dir) / ERROR_FILE).write_text(text.rstrip() + "\n")
        if self.keep_going:
            job_return.status = JobStatus.COMPLETED
            job_return.return_value = None

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        jobs = summarize(sweep_dir, self.metric, self.mode, self.columns, board=True)
        failed = [j for j in jobs if j.failed]
        if failed:
            ERRORS.print(
                f"[bold red]error:[/bold red] {len(failed)} of {len(jobs)} jobs failed "
                f"(job {', '.join(str(j.num) for j in failed)}); see {sweep_dir / SUMMARY_MD}",
                soft_wrap=True, highlight=False,
            )
            sys.exit(1)


def cli(argv: list[str] | None = None) -> None:
    """``python -m ebm_cli.app.sweep SWEEP_DIR [--metric M] [--mode max]``: (re)rank a finished or
    interrupted sweep, e.g. by another metric, without running anything."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ebm_cli.app.sweep", description=cli.__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", default="test_nll")
    parser.add_argument("--mode", choices=MODES, default="min")
    parser.add_argument("--columns", nargs="*", default=[])
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    summarize(args.sweep_dir, args.metric, args.mode, args.columns, board=True)


if __name__ == "__main__":
    cli()
