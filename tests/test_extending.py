"""The worked examples of docs/extending.md run end to end, as a user runs them.

Each case is ``PYTHONPATH=docs/examples ebm-train --config-dir docs/examples/conf …`` in a
subprocess with short settings: it must exit 0 and write metrics.json. The classes are the
user's own (``_target_: my_energy.QuadraticMLP`` …), found through PYTHONPATH only.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import ebm_train_command

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "docs" / "examples"
CONF = EXAMPLES / "conf"

# Short runs: a few updates, small evaluations (about 4 s of work each on top of start-up).
SHORT = [
    "trainer.steps=20", "log_every=5", "image_every=0", "checkpoint_every=10",
    "eval.n_samples=100", "eval.sampler_steps=10", "eval.warmup=10", "eval.grid=64",
    "eval.mmd_points=100", "data.n_train=512", "data.n_test=256",
]
SAMPLING = [  # trainer=none has no data set: only the chain settings
    "trainer.steps=40", "trainer.warmup_steps=10", "trainer.n_chains=128",
    "trainer.trace_chains=64", "log_every=10", "image_every=0", "checkpoint_every=0",
]


def run_example(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """``ebm-train --config-dir docs/examples/conf ARGS`` with docs/examples on PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(EXAMPLES), *([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])])
    env["COLUMNS"] = "200"
    return subprocess.run([*ebm_train_command(), "--config-dir", str(CONF), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=240, env=env)


def metrics_of(result: subprocess.CompletedProcess[str], run_dir: Path) -> dict[str, float]:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert (run_dir / "metrics.json").is_file(), output[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow  # each example also runs in the next test, all three together
@pytest.mark.parametrize("choice", [
    pytest.param(["energy=my_energy"], id="energy"),
    pytest.param(["sampler=my_sampler"], id="sampler"),
])
def test_example_trains(choice: list[str], tmp_path: Path) -> None:
    """The energy (under HMC) and the sampler (under MLE) alone, the other groups at their
    defaults; the trainer runs with both in the next test."""
    run_dir = tmp_path / "run"
    result = run_example([*choice, *SHORT, f"hydra.run.dir={run_dir}"], tmp_path)
    metrics = metrics_of(result, run_dir)
    assert metrics["steps"] == 20
    assert "test_nll" in metrics  # 2-D data: quadrature NLL of the trained energy


@pytest.mark.slow
def test_all_three_together_and_resume(tmp_path: Path) -> None:
    """Energy, sampler and trainer all the user's own; the trainer's state_dict resumes."""
    run_dir = tmp_path / "run"
    args = ["energy=my_energy", "sampler=my_sampler", "trainer=my_trainer", *SHORT]
    metrics = metrics_of(run_example([*args, f"hydra.run.dir={run_dir}"], tmp_path), run_dir)
    assert metrics["steps"] == 20
    # a run made with --config-dir is resumed with it (run_example passes it)
    resumed = run_example([f"resume={run_dir}", "trainer.steps=30"], tmp_path)
    assert metrics_of(resumed, run_dir)["steps"] == 30


@pytest.mark.slow  # tests/test_plugins.py samples user and known energies in the default tier
def test_sampling_a_user_energy_that_knows_its_truth(tmp_path: Path) -> None:
    """``trainer=none``: the dimension comes from the energy's ``event_shape`` (3, not the
    default data's 2), and ``truth()`` gives mean/covariance errors."""
    run_dir = tmp_path / "run"
    args = ["trainer=none", "energy=my_gaussian", "energy.dim=3", "sampler=my_sampler",
            *SAMPLING, f"hydra.run.dir={run_dir}"]
    metrics = metrics_of(run_example(args, tmp_path), run_dir)
    assert metrics["steps"] == 40
    assert 0 < metrics["acceptance_rate"] < 1
    assert "mean_error" in metrics and "cov_error" in metrics, sorted(metrics)
