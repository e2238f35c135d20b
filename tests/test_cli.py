"""``ebm-train`` end to end, as a subprocess: files, TensorBoard contents, and clean errors.

The run's output is piped with ``COLUMNS=40``: lines and tables must not wrap at that width
(or at rich's default 80 columns for a non-terminal)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, ebm_train_command
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SCALARS = {"loss", "energy/data", "energy/samples", "sampler/acceptance_rate", "grad_norm"}


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


PHASES = ("chains", "mmd", "quadrature", "modes", "figures", "outputs")


@pytest.fixture(scope="module")
def piped(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A FAST run with the held-out NLL curve every 10 steps; (run dir, its piped stdout)."""
    run_dir = tmp_path_factory.mktemp("run")
    env = {**{k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}, "COLUMNS": "40"}
    proc = subprocess.run([*ebm_train_command(), f"hydra.run.dir={run_dir}", *FAST,
                           "eval_every=10"], cwd=run_dir.parent, capture_output=True, text=True,
                          timeout=240, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir, proc.stdout


@pytest.fixture(scope="module")
def default_run(piped: tuple[Path, str]) -> Path:
    return piped[0]


def test_run_writes_every_artifact(default_run: Path) -> None:
    for name in ("samples.png", "energy.png", "samples.npy", "metrics.json", "checkpoint.pt"):
        assert (default_run / name).is_file(), name
    assert (default_run / ".hydra" / "config.yaml").is_file()
    assert list(default_run.glob("events.out.tfevents.*"))
    samples = np.load(default_run / "samples.npy")
    assert samples.shape == (200, 2) and np.isfinite(samples).all()


def test_metrics_json_is_flat_numbers(default_run: Path) -> None:
    metrics = json.loads((default_run / "metrics.json").read_text())
    for key in ("test_nll", "true_nll", "kl", "train_seconds", "steps", "mmd"):
        assert key in metrics
    assert all(isinstance(v, (int, float)) for v in metrics.values())
    assert metrics["steps"] == 30
    assert metrics["kl"] == pytest.approx(metrics["test_nll"] - metrics["true_nll"])
    # MLE with HMC (L = 10): the start's gradient + the shared jittered L_t ∈ 1..10 (mean 5.5;
    # over 30 updates at least 3.5 with probability > 0.999) + the loss's, counted at run time
    # (12 would mean every chain paid for L = 10)
    assert 1 + 3.5 + 1 <= metrics["gradients_per_update"] < 1 + 10 + 1


def test_tensorboard_holds_scalars_images_and_config(default_run: Path) -> None:
    acc = _events(default_run)
    tags = acc.Tags()
    assert SCALARS <= set(tags["scalars"]), tags["scalars"]
    assert {"samples", "energy_landscape"} <= set(tags["images"]), tags["images"]
    steps = [e.step for e in acc.Scalars("loss")]
    assert steps == sorted(steps) and steps[-1] == 30
    assert len(acc.Images("samples")) >= 2  # every image_every steps plus the final one
    assert "config/text_summary" in tags["tensors"]


# Bad overrides (one clean line each, every refusing stage) are tests/test_faults.py's.


def test_piped_output_is_plain_unwrapped_lines(piped: tuple[Path, str]) -> None:
    run_dir, out = piped
    lines = out.splitlines()
    logged = [line for line in lines if re.match(r"\d\d:\d\d:\d\d [A-Z]+ ", line)]
    assert any(re.fullmatch(r"\S+ INFO step 30/30  loss=\S+  accept=\S+  test_nll=\S+", line)
               for line in logged), out  # one whole line each, no rich padding or wrapping
    banner = "\n".join(logged[:4])  # printed when the run starts, before the first step
    assert f"run directory: {run_dir}" in banner
    assert re.search(r"options: data=two_gaussians  energy=mlp  sampler=hmc  trainer=mle  "
                     r"experiment=-  debug=fast", banner), banner
    assert "device: cpu  dtype: float32  threads: 1" in banner
    assert f"tensorboard --logdir {run_dir}" in banner
    for phase in PHASES:  # a line when each phase starts
        assert any(re.search(rf"INFO (evaluation: )?{phase}\b", line) for line in logged)
    # the table is as wide as its content: a row holds a whole number ± its standard error
    row = next(line for line in lines if "│ test_nll " in line)
    assert re.search(r"│ +-?\d+\.\d+ ± \d\.?\d*(e-\d+)? │$", row), row
    assert len(row) > 40
    # the evaluation chains' verdict in words, agreeing with metrics.json's flag
    verdict = next(line for line in lines if "evaluation chains have" in line)
    converged = json.loads((run_dir / "metrics.json").read_text())["eval_converged"]
    assert ("NOT converged" in verdict) == (converged == 0.0), verdict
    times = next(line for line in lines if line.startswith("time: "))
    for phase in ("startup", "training", "NLL curve", *PHASES):
        assert re.search(rf"{phase} [\d.e+-]+ s", times), times


def test_cli_log_holds_the_run_s_lines(default_run: Path) -> None:
    log = (default_run / "cli.log").read_text()
    for text in ("run directory:", "step 30/30", "evaluation: chains", "summary: test_nll =",
                 "time: startup"):
        assert text in log, text


def test_phase_times_in_metrics_and_the_nll_curve_in_tensorboard(default_run: Path) -> None:
    metrics = json.loads((default_run / "metrics.json").read_text())
    for phase in ("startup", "curve", *PHASES):
        assert metrics[f"seconds_{phase}"] >= 0
    assert metrics["seconds_curve"] < metrics["train_seconds"]
    assert metrics["mmd_se"] > 0 and metrics["kl_se"] > 0
    curve = _events(default_run).Scalars("quality/test_nll")
    assert [e.step for e in curve] == [10, 20, 30]
    assert all(math.isfinite(e.value) for e in curve)
    # the coarse-grid NLL of the last step is the final evaluation's (a 2n-grid quadrature)
    assert curve[-1].value == pytest.approx(metrics["test_nll"], abs=1e-3)
