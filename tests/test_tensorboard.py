"""A real TensorBoard reads what a sweep writes: runs, scalars, images and the HParams table.

The sweep runs where a user's would (``outputs/multirun/<date>/<time>/<job>``) and TensorBoard
reads ``--logdir outputs``, as for every run of a project. TensorBoard is started on 127.0.0.1
and a free port, polled for a bounded time, queried over its HTTP API, and stopped by its
process id (terminate, then kill after a timeout).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import FAST
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import api_pb2, metadata
from test_faults import _main_in_process
from torch.utils.tensorboard import SummaryWriter

from ebm_cli.reporting import hparams as hp
from ebm_cli.reporting.hparams import log_hparams

SCALARS = {"loss", "energy/data", "energy/samples", "sampler/acceptance_rate", "eval/test_nll"}
IMAGES = {"samples", "energy_landscape"}
STARTUP_S = 90.0
TRIAL_ID_CHARS = 13  # what the dashboard's Trial ID column (10em wide) shows of a name


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-job MLE sweep (sampler=mh,hmc) with FAST settings, in the default sweep directory
    under ``<project>/outputs``; returns the sweep directory."""
    project = tmp_path_factory.mktemp("tb")
    with pytest.MonkeyPatch.context() as monkeypatch:  # ebm-train's entry point, in-process
        proc = _main_in_process(["-m", *FAST, "sampler=mh,hmc"], project, monkeypatch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sweep_dir,) = (project / "outputs" / "multirun").glob("*/*")
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


@dataclass
class Board:
    """A TensorBoard on ``outputs``: its URL, the sweep's run and the job runs (names relative
    to the logdir, as TensorBoard names them)."""

    base: str
    sweep_run: str
    jobs: list[str]


@pytest.fixture(scope="module")
def tensorboard(sweep: Path) -> Iterator[Board]:
    """TensorBoard on the project's ``outputs`` directory, holding the sweep."""
    logdir = sweep.parents[2]
    assert logdir.name == "outputs"
    sweep_run = sweep.relative_to(logdir).as_posix()
    jobs = sorted(f"{sweep_run}/{p.name}" for p in sweep.iterdir()
                  if (p / "metrics.json").is_file())
    assert len(jobs) == 2
    binary = Path(sys.executable).parent / "tensorboard"
    command = [str(binary)] if binary.exists() else [sys.executable, "-m", "tensorboard.main"]
    port = _free_port()
    log = (logdir.parent / "tensorboard.log").open("w")
    proc = subprocess.Popen(
        [*command, "--logdir", str(logdir), "--host", "127.0.0.1", "--port", str(port),
         "--load_fast=false", "--reload_interval=2"],
        stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:  # until every run is loaded (the first load runs in the background)
            assert proc.poll() is None, (logdir.parent / "tensorboard.log").read_text()
            try:
                if sorted(_get(f"{base}/data/runs")) == sorted([sweep_run, *jobs]):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            assert time.monotonic() < deadline, "TensorBoard did not list every run in time"
            time.sleep(0.5)
        yield Board(base, sweep_run, jobs)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def test_runs_scalars_and_images_are_served(tensorboard: Board) -> None:
    scalars = _get(f"{tensorboard.base}/data/plugin/scalars/tags")
    images = _get(f"{tensorboard.base}/data/plugin/images/tags")
    for job in tensorboard.jobs:
        assert SCALARS <= set(scalars[job]), scalars[job]
        assert IMAGES <= set(images[job]), images[job]
    assert set(images[tensorboard.sweep_run]) == {"sweep/comparison"}  # the sweep's own run


def test_jobs_keep_the_data_their_samples_are_compared_with(sweep: Path) -> None:
    for job in (p for p in sweep.iterdir() if (p / "metrics.json").is_file()):
        data = np.load(job / "data.npy", allow_pickle=False)
        samples = np.load(job / "samples.npy", allow_pickle=False)
        assert data.shape == (256, 2) and samples.shape[1:] == (2,)  # FAST: data.n_test=256
    assert (sweep / "comparison.png").is_file()


def test_hparams_table_compares_the_jobs(tensorboard: Board, sweep: Path) -> None:
    base = tensorboard.base
    experiment = _get(f"{base}/data/plugin/hparams/experiment", {"experimentName": ""})
    names = {h["name"] for h in experiment["hparamInfos"]}
    # the union over runs: HMC's n_leapfrog as well as keys both samplers have, and every
    # group's choice, also those that came from the defaults
    assert {"sampler", "sampler.step_size", "sampler.n_leapfrog", "trainer.optimizer.lr",
            "data", "energy", "trainer", "experiment", "debug"} <= names
    assert experiment["hparamInfos"][0]["name"] == "sampler"  # what differs comes first
    tags = [m["name"]["tag"] for m in experiment["metricInfos"]]
    key = [t for t in tags if t.removeprefix("eval/") in hp.KEY_METRICS]
    assert key[:3] == ["eval/test_nll", "eval/kl", "eval/mmd"]
    assert tags[: len(key)] == key  # the key metrics first, then every other scalar
    assert "loss" in tags and tags.index("loss") > len(key)

    groups = _get(f"{base}/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 10,
        "allowedStatuses": ["STATUS_SUCCESS"],
        "colParams": [{"hparam": "sampler"}, {"metric": {"tag": "eval/test_nll"}}],
    })["sessionGroups"]
    assert sorted(s["name"] for g in groups for s in g["sessions"]) == tensorboard.jobs
    by_sampler = {g["hparams"]["sampler"]: g for g in groups}
    assert sorted(by_sampler) == ["hmc", "mh"]  # one row per job, none in a sub-run
    trials = sorted(g["name"] for g in groups)
    assert trials[0].startswith("#0 sampler=mh · outputs/multirun/"), trials
    assert trials[1].startswith("#1 sampler=hmc · outputs/multirun/"), trials
    assert len({t[:TRIAL_ID_CHARS] for t in trials}) == 2  # told apart in the narrow column
    for group in groups:
        assert (group["hparams"]["energy"], group["hparams"]["trainer"],
                group["hparams"]["data"], group["hparams"]["experiment"]) == (
                    "mlp", "mle", "two_gaussians", "null")  # defaults, filled in
        (session,) = group["sessions"]
        job_dir = sweep / Path(session["name"]).name
        nll = json.loads((job_dir / "metrics.json").read_text())["test_nll"]
        shown = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        assert math.isclose(shown["eval/test_nll"], nll, rel_tol=1e-6)  # float32 scalar


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


def test_log_hparams_fills_group_choices_and_names_the_trial(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path.parent)
    run = tmp_path / "08-00-00_sampler=hmc"
    with SummaryWriter(log_dir=str(run)) as writer:
        values = log_hparams(writer, {"seed": 0}, ["sampler=hmc"], {"test_nll": 2.0},
                             choices={"sampler": "hmc", "energy": "mlp", "experiment": None})
    assert values == {"seed": 0, "sampler": "hmc", "energy": "mlp", "experiment": "null"}
    read, _ = hp.read_run(run)
    assert read == values
    acc = EventAccumulator(str(run))
    acc.Reload()
    content = acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.SESSION_START_INFO_TAG]
    start = metadata.parse_session_start_info_plugin_data(content)
    # a single run: its directory's own name first, then where it is
    assert start.group_name == f"08-00-00_sampler=hmc · {tmp_path.name}"


def test_sweep_experiment_unites_the_runs_and_puts_key_metrics_first(tmp_path: Path) -> None:
    runs = []
    for name, sampler, extra in (("0_mh", "mh", {}), ("1_hmc", "hmc", {"n_leapfrog": 5})):
        with SummaryWriter(log_dir=str(tmp_path / name)) as writer:
            for tag in ("loss", "eval/acceptance_rate", "eval/mmd", "eval/test_nll", "eval/kl"):
                writer.add_scalar(tag, 1.0, 3)
            log_hparams(writer, {"sampler": {"step_size": 0.1, **extra}}, [], {"kl": 0.1},
                        choices={"sampler": sampler, "energy": "mlp"})
        runs.append(tmp_path / name)
    with SummaryWriter(log_dir=str(tmp_path / "sweep")) as writer:
        assert hp.write_experiment(writer, [*runs, tmp_path / "not_a_run"]) == 2
    acc = EventAccumulator(str(tmp_path / "sweep"))
    acc.Reload()
    exp = metadata.parse_experiment_plugin_data(
        acc.PluginTagToContent(metadata.PLUGIN_NAME)[metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in exp.metric_infos] == [
        "eval/test_nll", "eval/kl", "eval/mmd", "eval/acceptance_rate", "loss"]
    infos = {i.name: i for i in exp.hparam_infos}
    assert set(infos) == {"sampler", "energy", "sampler.step_size", "sampler.n_leapfrog"}
    assert [i.name for i in exp.hparam_infos][:2] == ["sampler", "sampler.n_leapfrog"]  # differ
    assert sorted(infos["sampler"].domain_discrete) == ["hmc", "mh"]
    assert infos["sampler.step_size"].type == api_pb2.DATA_TYPE_FLOAT64
    assert not infos["energy"].differs and infos["sampler.n_leapfrog"].differs
