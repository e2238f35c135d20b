"""What a sweep summary table is made of, shared by ebm_cli/app/sweep.py (one row per job) and
ebm_cli/app/seeds.py (one row per configuration of a seed sweep): a job directory (:class:`Job`),
the overrides that tell jobs apart (:func:`varying_keys`), cell text and the table itself
(:class:`SummaryTable`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODES = ("min", "max")  # hydra.callbacks.sweep_summary.mode: lower or higher is better


@dataclass
class Job:
    """One job directory of a sweep: its overrides, its metrics (None: failed) and its error."""

    num: int
    path: Path
    overrides: dict[str, str]
    metrics: dict[str, float] | None
    error: str = ""
    rank: int | None = field(default=None, compare=False)

    @property
    def failed(self) -> bool:
        return self.metrics is None


def varying_keys(jobs: list[Job]) -> tuple[list[str], dict[str, str]]:
    """Override keys whose value differs between jobs (table columns), and the common ones."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    common = {k: jobs[0].overrides[k] for k in keys
              if all(j.overrides.get(k) == jobs[0].overrides.get(k) for j in jobs)}
    varying = [k for k in keys if k not in common]
    if not varying and len(jobs) == 1:  # a sweep of one: show what was set
        return keys, {}
    return varying, common


def format_cell(v: Any) -> str:
    """A metric for the table: a float to 5 significant digits, None as nothing."""
    if isinstance(v, float):
        return f"{v:.5g}"
    return "" if v is None else str(v)


def short_value(value: str) -> str:
    """An override value for the table: Optuna's 0.0010615360772719654 -> 0.0010615."""
    try:
        number = float(value)
    except ValueError:
        return value
    return f"{number:.5g}" if len(value) > 8 and "." in value else value


@dataclass
class SummaryTable:
    """The rows and columns shared by the rich, markdown and CSV renderings."""

    header: list[str]
    rows: list[list[str]]
    errors: list[str | None]  # per row: None (completed) or the failed job's error line
    styles: list[str | None] | None = None  # per row's rich style; default: red where failed
    failures: list[tuple[str, str]] | None = None  # (who, error) lines under the printed
    #                                                  table; default: each failed row's job
