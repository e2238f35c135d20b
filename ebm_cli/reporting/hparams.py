"""TensorBoard HParams: a run's hyperparameters, written into the run's own event file.

``SummaryWriter.add_hparams`` writes into a new timestamped sub-run, so a sweep would show two runs
per job; here the HParams summaries go through the run's own writer, and TensorBoard's HParams
dashboard lists every run under ``--logdir`` (all jobs of a sweep) in one table, with the last
value of each of the run's scalars (the final metrics are the ``eval/*`` scalars run.py logs) as
metric columns.

A run writes only the session summaries (start: the hyperparameters; end: the status), not an
experiment summary: the dashboard takes the experiment summary of ONE arbitrary run when any run
has one, so runs whose hyperparameter keys differ (``sampler=mh,hmc``: HMC has ``n_leapfrog``)
would lose columns; without one it takes the union over all runs, with the metrics sorted by
name. A sweep writes one at its end, in the sweep directory's own run (:func:`write_experiment`,
from ebm_cli/app/sweep.py): the union of its jobs' hyperparameters, and the key metrics
(:data:`KEY_METRICS`) before every other scalar. Under a ``--logdir`` holding several sweeps
the dashboard uses one of their experiments: a run outside that sweep keeps its row and its
metrics, but a hyperparameter key that no job of that sweep has is not a column.

Each run is one trial, named by :func:`trial_id` so that the dashboard's narrow "Trial ID"
column tells runs apart: its distinctive part first (``#0 sampler=mh`` in a sweep, the run
directory's own name otherwise), then where it lives.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2
from tensorboard.plugins.hparams.summary_v2 import hparams_pb
from torch.utils.tensorboard import SummaryWriter

from ebm_cli.reporting import joblog

HYDRA_KEYS = ("_partial_", "_recursive_", "_convert_", "_args_")
# Metric columns of a sweep's HParams table, in this order, before every other scalar.
KEY_METRICS = ("test_nll", "kl", "mmd", "ess_bulk_min", "eval_ess_bulk_min", "converged",
               "eval_converged")
EVAL_PREFIX = "eval/"  # run.py logs the final metrics as eval/<name> scalars

HParam = str | float | int


def _plain(value: Any) -> HParam:
    """An HParams value: numbers stay numbers, everything else becomes a string."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def flatten(node: Mapping[str, Any], prefix: str = "") -> dict[str, HParam]:
    """Nested config -> {"sampler.step_size": 0.1, ...}; ``_target_`` becomes its class name."""
    flat: dict[str, HParam] = {}
    for key, value in node.items():
        if key in HYDRA_KEYS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        elif key == "_target_" and isinstance(value, str):
            flat[name] = value.rsplit(".", 1)[-1]  # ebm_cli.samplers.hmc.HMC -> HMC
        else:
            flat[name] = _plain(value)
    return flat


def hparams_of(plain_cfg: Mapping[str, Any], overrides: Sequence[str],
               choices: Mapping[str, str | None] | None = None) -> dict[str, HParam]:
    """The config flattened, every group's chosen option (``sampler: hmc`` also when it came
    from the defaults; ``experiment: null`` when none was chosen), and the overrides that are
    not config values (``+key=value`` of a key the config does not keep)."""
    flat = flatten(plain_cfg)
    for group, option in (choices or {}).items():
        flat.setdefault(group, "null" if option is None else str(option))
    for text in overrides:
        if text.startswith("~"):
            continue
        key, _, value = text.lstrip("+").partition("=")
        if key not in flat:
            flat[key] = value
    return flat


def trial_id(run_dir: Path, overrides: Sequence[str]) -> str:
    """The run's name in the HParams table, distinctive part first; unique per run directory.

    A sweep job: ``#3 sampler=hmc lr=0.01 · outputs/multirun/2026-12-01/08-00-00`` (the swept
    overrides, or all of them when the sweep did not say which were swept); a single run:
    ``08-00-00_sampler=hmc · outputs/2026-12-01`` (its directory's name, then its parent).
    """
    run_dir = Path(run_dir).absolute()
    parent = run_dir.parent
    where = os.path.relpath(parent) if parent.is_relative_to(Path.cwd()) else str(parent)
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return f"{run_dir.name} · {where}"
    num = HydraConfig.get().job.num
    given = [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]
    swept = joblog.current_plan().swept
    shown = [o for o in given if o.lstrip("+~").split("=", 1)[0] in swept] if swept else given
    return " ".join([f"#{num}", *shown, "·", where])


def log_hparams(writer: SummaryWriter, plain_cfg: Mapping[str, Any], overrides: Sequence[str],
                metrics: Mapping[str, Any], choices: Mapping[str, str | None] | None = None,
                ) -> dict[str, HParam]:
    """Write the run's hyperparameters (session start, named by :func:`trial_id`) and its
    status (session end) with ``writer``, into the run's own directory; returns the
    hyperparameters written.

    ``metrics`` are the run's final metrics: the status is success when all are finite. Their
    values reach the dashboard as the ``eval/*`` scalars of the same run. ``choices``: group ->
    chosen option (the caller passes its Hydra job's; nothing is read from global state).
    """
    values = hparams_of(plain_cfg, overrides, choices)
    start = hparams_pb(values, trial_id=trial_id(Path(writer.log_dir), overrides))
    ok = all(math.isfinite(v) for v in metrics.values() if isinstance(v, (int, float)))
    file_writer = writer._get_file_writer()
    file_writer.add_summary(start)
    file_writer.add_summary(_session_end(failed=not ok))
    file_writer.flush()
    return values


def _summary(tag: str, content: plugin_data_pb2.HParamsPluginData) -> Summary:
    smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=tag, metadata=smd)])


def read_run(run_dir: Path) -> tuple[dict[str, HParam], list[str]]:
    """A run's hyperparameters (its last session start) and the tags of its scalars, from the
    event files directly in ``run_dir`` (protocol buffers only: nothing in them is executed)."""
    values: dict[str, HParam] = {}
    tags: list[str] = []
    for path in sorted(Path(run_dir).glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for v in event.summary.value:
                plugin = v.metadata.plugin_data.plugin_name
                if plugin == metadata.PLUGIN_NAME and v.tag == metadata.SESSION_START_INFO_TAG:
                    start = metadata.parse_session_start_info_plugin_data(
                        v.metadata.plugin_data.content)
                    values = {k: _from_value(x) for k, x in start.hparams.items()}
                elif (v.HasField("simple_value") or plugin == "scalars") and v.tag not in tags:
                    tags.append(v.tag)
    return values, tags


def _from_value(value: Any) -> HParam:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        return value.number_value
    if kind == "bool_value":
        return str(value.bool_value)
    return value.string_value


def metric_order(tags: Iterable[str]) -> list[str]:
    """Scalar tags for the HParams columns: the key metrics (eval/test_nll, eval/kl, …) in
    :data:`KEY_METRICS` order, then the other eval/* metrics, then the rest, each sorted."""
    tags = set(tags)
    key = [EVAL_PREFIX + k for k in KEY_METRICS if EVAL_PREFIX + k in tags]
    rest = sorted(tags - set(key), key=lambda t: (not t.startswith(EVAL_PREFIX), t))
    return key + rest


def experiment(runs: Sequence[tuple[Mapping[str, HParam], Iterable[str]]]) -> Summary:
    """The experiment summary of a set of runs ((hyperparameters, scalar tags) each): every
    hyperparameter of any run (typed, with its values as the domain; the ones that differ
    between runs first, as TensorBoard orders them) and the metrics in :func:`metric_order`."""
    names = sorted({k for values, _ in runs for k in values})
    infos = []
    for name in names:
        seen = [values[name] for values, _ in runs if name in values]
        info = api_pb2.HParamInfo(name=name)
        if all(isinstance(v, (int, float)) for v in seen):
            info.type = api_pb2.DATA_TYPE_FLOAT64
            info.domain_interval.min_value = float(min(seen))
            info.domain_interval.max_value = float(max(seen))
        else:
            info.type = api_pb2.DATA_TYPE_STRING
            info.domain_discrete.extend(sorted({str(v) for v in seen}))
        info.differs = len({str(v) for v in seen}) > 1 or len(seen) < len(runs)
        infos.append(info)
    infos.sort(key=lambda i: (not i.differs, i.name))
    tags = metric_order(t for _, run_tags in runs for t in run_tags)
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=t),
                                       display_name=t.removeprefix(EVAL_PREFIX)) for t in tags]
    content = plugin_data_pb2.HParamsPluginData(
        experiment=api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos),
        version=metadata.PLUGIN_DATA_VERSION)
    return _summary(metadata.EXPERIMENT_TAG, content)


def write_experiment(writer: SummaryWriter, run_dirs: Sequence[Path]) -> int:
    """Write the experiment summary of the runs in ``run_dirs`` (those with hyperparameters)
    with ``writer``, e.g. into a sweep's own directory; returns how many runs it covers."""
    runs = [run for run in map(read_run, run_dirs) if run[0]]
    if runs:
        file_writer = writer._get_file_writer()
        file_writer.add_summary(experiment(runs))
        file_writer.flush()
    return len(runs)


def _session_end(failed: bool) -> Summary:
    """A session-end summary with STATUS_SUCCESS or STATUS_FAILURE."""
    status = api_pb2.Status.Value("STATUS_FAILURE" if failed else "STATUS_SUCCESS")
    content = plugin_data_pb2.HParamsPluginData(
        session_end_info=plugin_data_pb2.SessionEndInfo(status=status),
        version=metadata.PLUGIN_DATA_VERSION)
    return _summary(metadata.SESSION_END_INFO_TAG, content)
