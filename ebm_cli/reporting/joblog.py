"""Which job of a sweep a log line comes from: ``[job 3/8] step 25/200  loss=…``.

Parallel jobs (``hydra/launcher=joblib``) write to one terminal; the prefix keeps their lines
apart. The job number is Hydra's ``hydra.job.num`` (0-based, like the job directories ``3_…``
and the summary's ``job`` column); the total and the swept keys are found once, in the process
that launches the sweep (:func:`plan_of`, from ``SweepSummary.on_multirun_start``), and reach
the jobs — in-process, joblib workers, submitit — through the environment variable
``EBM_SWEEP`` (JSON).

Wired through ``configs/hydra/job_logging/rich.yaml``: :class:`JobFilter` sets ``record.job``
on every record its handler emits, and the formats start with ``%(job)s``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field

from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

PLAN_ENV = "EBM_SWEEP"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
OPTUNA_SWEEPER = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"


@dataclass(frozen=True)
class SweepPlan:
    """What the launching process knows of a multirun: how many jobs (None: unknown) and the
    keys whose values differ between jobs (the swept overrides and the sweeper's params)."""

    jobs: int | None = None
    swept: list[str] = field(default_factory=list)


def plan_of(config: DictConfig) -> SweepPlan:
    """The plan of a multirun from its config: the basic sweeper's jobs are the product of its
    value lists (``hydra.sweeper.params`` and the command line), Optuna's are ``n_trials``;
    the count is None for other sweepers and for sweeps that need the config loader to expand
    (``glob(…)``)."""
    target = OmegaConf.select(config, "hydra.sweeper._target_")
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    args = [f"{k}={v}" for k, v in params.items()] + list(config.hydra.overrides.task)
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = OverridesParser.create().parse_overrides(args)
    except HydraException:
        return SweepPlan()
    swept = [o.get_key_element() for o in overrides if o.is_sweep_override()]
    if target == OPTUNA_SWEEPER:
        n = OmegaConf.select(config, "hydra.sweeper.n_trials")
        return SweepPlan(int(n) if isinstance(n, int) else None, swept)
    if target != BASIC_SWEEPER:
        return SweepPlan(None, swept)
    try:
        return SweepPlan(len(BasicSweeper.split_arguments(overrides, None)[0]), swept)
    except HydraException:
        return SweepPlan(None, swept)


def announce(plan: SweepPlan) -> None:
    """Hand the plan to the jobs (call before the launcher starts any worker)."""
    os.environ[PLAN_ENV] = json.dumps(asdict(plan))


def current_plan() -> SweepPlan:
    """The plan announced by the launching process (empty when none was)."""
    try:
        raw = json.loads(os.environ.get(PLAN_ENV, "{}"))
    except json.JSONDecodeError:
        return SweepPlan()
    jobs = raw.get("jobs") if isinstance(raw, dict) else None
    swept = raw.get("swept") if isinstance(raw, dict) else None
    return SweepPlan(jobs if isinstance(jobs, int) else None,
                     [str(k) for k in swept] if isinstance(swept, list) else [])


def job_label() -> str:
    """``job 3/8`` inside job 3 of an 8-job multirun (``job 3`` when the total is unknown);
    ``""`` in a single run or outside Hydra."""
    if not HydraConfig.initialized():
        return ""
    hc = HydraConfig.get()
    num = OmegaConf.select(hc, "job.num", default=None)
    if hc.mode != RunMode.MULTIRUN or not isinstance(num, int):
        return ""
    total = current_plan().jobs
    return f"job {num}/{total}" if total is not None else f"job {num}"


class JobFilter(logging.Filter):
    """Sets ``record.job`` to ``"[job 3/8] "`` in a sweep job, ``""`` otherwise.

    Hydra builds the job's logging after it has set the job's HydraConfig, so the label is
    read once, here; the basic launcher rebuilds logging for every job.
    """

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        label = job_label()
        self.prefix = f"[{label}] " if label else ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job = self.prefix
        return True
