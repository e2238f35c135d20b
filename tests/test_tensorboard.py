"""A real TensorBoard reads what a sweep writes: runs, scalars, images and the HParams table.

TensorBoard is started on 127.0.0.1 and a free port, polled for a bounded time, queried over its
HTTP API, and stopped by its process id (terminate, then kill after a timeout).
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import FAST, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata
from torch.utils.tensorboard import SummaryWriter

from ebm_cli.reporting.hparams import log_hparams

SCALARS = {"loss", "energy/data", "energy/samples", "sampler/acceptance_rate", "eval/test_nll"}
IMAGES = {"samples", "energy_landscape"}
STARTUP_S = 90.0


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-job MLE sweep (sampler=mh,hmc) with FAST settings."""
    sweep_dir = tmp_path_factory.mktemp("tb") / "sweep"
    proc = run_cli(["-m", f"hydra.sweep.dir={sweep_dir}", *FAST, "sampler=mh,hmc"],
                   cwd=sweep_dir.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return sweep_dir


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def tensorboard(sweep: Path) -> Iterator[tuple[str, list[str]]]:
    """TensorBoard on the sweep directory; yields (base URL, job directory names)."""
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert len(jobs) == 2
    binary = Path(sys.executable).parent / "tensorboard"
    command = [str(binary)] if binary.exists() else [sys.executable, "-m", "tensorboard.main"]
    port = _free_port()
    log = (sweep.parent / "tensorboard.log").open("w")
    proc = subprocess.Popen(
        [*command, "--logdir", str(sweep), "--host", "127.0.0.1", "--port", str(port),
         "--load_fast=false", "--reload_interval=2"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:  # until both runs are loaded (the first load runs in the background)
            assert proc.poll() is None, (sweep.parent / "tensorboard.log").read_text()
            try:
                if sorted(_get(f"{base}/data/runs")) == jobs:
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "TensorBoard did not list both runs in time"
            time.sleep(0.5)
        yield base, jobs
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_runs_scalars_and_images_are_served(tensorboard: tuple[str, list[str]]) -> None:
    base, jobs = tensorboard
    scalars = _get(f"{base}/data/plugin/scalars/tags")
    images = _get(f"{base}/data/plugin/images/tags")
    for job in jobs:
        assert SCALARS <= set(scalars[job]), scalars[job]
        assert IMAGES <= set(images[job]), images[job]


def test_hparams_table_compares_the_jobs(tensorboard: tuple[str, list[str]], sweep: Path) -> None:
    base, jobs = tensorboard
    experiment = _get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
    names = {h["name"] for h in experiment["hparamInfos"]}
    # the union over runs: HMC's n_leapfrog as well as keys both samplers have
    assert {"sampler", "sampler.step_size", "sampler.n_leapfrog", "trainer.optimizer.lr"} <= names
    assert "eval/test_nll" in {m["name"]["tag"] for m in experiment["metricInfos"]}

    groups = _get(f"{base}/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 10,
        "allowedStatuses": ["STATUS_SUCCESS"],
        "colParams": [{"hparam": "sampler"}, {"metric": {"tag": "eval/test_nll"}}],
    })["sessionGroups"]
    assert sorted(g["name"] for g in groups) == jobs  # one row per job, none in a sub-run
    for group in groups:
        nll = json.loads((sweep / group["name"] / "metrics.json").read_text())["test_nll"]
        shown = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert math.isclose(shown["eval/test_nll"], nll, rel_tol=1e-6)  # float32 scalar
    assert sorted(g["hparams"]["sampler"] for g in groups) == ["hmc", "mh"]


def test_log_hparams_writes_into_the_run_itself(tmp_path: Path) -> None:
    plain = {"seed": 0, "sampler": {"_target_": "ebm_cli.samplers.hmc.HMC", "step_size": 0.1,
                                    "inv_mass": None, "jitter_n_leapfrog": False},
             "data": {"means": [[-2.0, 0.0], [2.0, 0.0]]}}
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        values = log_hparams(writer, plain, ["sampler=hmc", "+experiment=fig1", "~seed"],
                             {"test_nll": 2.0})
    assert values == {"seed": 0, "sampler._target_": "HMC", "sampler.step_size": 0.1,
                      "sampler.inv_mass": "None", "sampler.jitter_n_leapfrog": "False",
                      "data.means": "[[-2.0, 0.0], [2.0, 0.0]]", "sampler": "hmc",
                      "experiment": "fig1"}
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == []  # no timestamped sub-run
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)
    assert set(content) == {metadata.SESSION_START_INFO_TAG, metadata.SESSION_END_INFO_TAG}
    start = metadata.parse_session_start_info_plugin_data(
        content[metadata.SESSION_START_INFO_TAG])
    assert start.hparams["sampler.step_size"].number_value == 0.1
    assert start.hparams["sampler"].string_value == "hmc"
    end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
    assert end.status == api_pb2.Status.Value("STATUS_SUCCESS")


def test_log_hparams_marks_a_non_finite_metric_as_failure(tmp_path: Path) -> None:
    with SummaryWriter(log_dir=str(tmp_path)) as writer:
        log_hparams(writer, {"seed": 0}, [], {"test_nll": float("nan"), "steps": 3})
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_END_INFO_TAG]
    end = metadata.parse_session_end_info_plugin_data(content)
    assert end.status == api_pb2.Status.Value("STATUS_FAILURE")
