"""TensorBoard HParams: a run's hyperparameters, written into the run's own event file.

``SummaryWriter.add_hparams`` writes into a new timestamped sub-run, so a sweep would show two runs
per job; here the HParams summaries go through the run's own writer, and TensorBoard's HParams
dashboard lists every run under ``--logdir`` (all jobs of a sweep) in one table, with the last
value of each of the run's scalars (the final metrics are the ``eval/*`` scalars run.py logs) as
metric columns.

Only the session summaries (start: the hyperparameters; end: the status) are written, not the
experiment summary: the dashboard takes the experiment summary of ONE arbitrary run when any run
has one, so runs whose hyperparameter keys differ (``sampler=mh,hmc``: HMC has ``n_leapfrog``)
would lose columns; without it the dashboard takes the union over all runs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tensorboard.plugins.hparams import metadata
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

HYDRA_KEYS = ("_partial_", "_recursive_", "_convert_", "_args_")

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


def hparams_of(plain_cfg: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, HParam]:
    """The config flattened, plus the overrides that are not config values (group choices such
    as ``sampler=hmc``, ``+experiment=...``)."""
    flat = flatten(plain_cfg)
    for text in overrides:
        if text.startswith("~"):
            continue
        key, _, value = text.lstrip("+").partition("=")
        if key not in flat:
            flat[key] = value
    return flat


def log_hparams(writer: SummaryWriter, plain_cfg: Mapping[str, Any], overrides: Sequence[str],
                metrics: Mapping[str, Any]) -> dict[str, HParam]:
    """Write the run's hyperparameters (session start) and its status (session end) with
    ``writer``, into the run's own directory; returns the hyperparameters written.

    ``metrics`` are the run's final metrics: the status is success when all are finite. Their
    values reach the dashboard as the ``eval/*`` scalars of the same run.
    """
    values = hparams_of(plain_cfg, overrides)
    _, start, end = hparams(values, {})  # (experiment, session start, session end) summaries
    ok = all(math.isfinite(v) for v in metrics.values() if isinstance(v, (int, float)))
    if not ok:
        end = _session_end(failed=True)
    file_writer = writer._get_file_writer()
    file_writer.add_summary(start)
    file_writer.add_summary(end)
    file_writer.flush()
    return values


def _session_end(failed: bool) -> Any:
    """A session-end summary with STATUS_FAILURE (torch's ``hparams`` always writes success)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    status = Status.Value("STATUS_FAILURE" if failed else "STATUS_SUCCESS")
    content = HParamsPluginData(session_end_info=SessionEndInfo(status=status),
                                version=metadata.PLUGIN_DATA_VERSION)
    smd = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(
        plugin_name=metadata.PLUGIN_NAME, content=content.SerializeToString()))
    return Summary(value=[Summary.Value(tag=metadata.SESSION_END_INFO_TAG, metadata=smd)])
