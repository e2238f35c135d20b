"""``ebm-train`` end to end, as a subprocess: files, TensorBoard contents, and clean errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SCALARS = {"loss", "energy/data", "energy/samples", "sampler/acceptance_rate", "grad_norm"}


def _events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    proc = run_cli([f"hydra.run.dir={run_dir}", *FAST], cwd=run_dir.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir


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
