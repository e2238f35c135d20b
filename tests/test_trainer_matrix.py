"""Every trainer × every 2-D dataset runs cleanly end to end (a 20-step smoke run each).

``ebm-train trainer=X data=Y`` must build, train, evaluate and write finite metrics for every
combination. Each group is one ``ebm-train -m`` sweep through the entry point in-process (no
Python/torch start-up per run; a failed job is recorded in its error.txt and the sweep goes on);
the parametrised tests then check one job directory each. The default tier covers every dataset with
mle+mh (gradient-free, the cheapest); the rest of the full matrix — score matching, NCE, the other
samplers' and energy discrepancy's jobs, each of which also trains in tests/test_trainers.py, the
README commands or its own test file — is marked slow
(``pytest -m slow tests/test_trainer_matrix.py``).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from test_faults import _main_in_process

DATASETS_2D = ("two_gaussians", "eight_gaussians", "moons", "circles", "rings", "checkerboard",
               "spirals", "pinwheel", "swissroll", "rosenbrock")
SAMPLERS = ("hmc", "langevin", "mh", "mala", "independence_mh")
SM_METHODS = ("exact", "sliced", "denoising")

# Tiny runs: 20 updates (MLE: step-size warm-up ends at 10), small data and evaluation.
SMOKE = [
    "trainer.steps=20", "log_every=5", "image_every=0", "checkpoint_every=0",
    "eval.n_samples=100", "eval.sampler_steps=10", "eval.warmup=10", "eval.grid=48",
    "eval.mmd_points=100", "data.n_train=512", "data.n_test=256",
]
MLE = ["trainer=mle", "trainer.warmup_steps=10"]
SM = ["trainer=score_matching"]
NCE = ["trainer=nce"]
ED = ["trainer=energy_discrepancy"]


def _rest(*fast: str) -> str:
    return ",".join(d for d in DATASETS_2D if d not in fast)


# (name, fixed overrides, swept key -> comma list). Each sweep is one ebm-train -m process.
FAST_SWEEPS = [
    ("mle-mh", MLE, {"sampler": "mh", "data": ",".join(DATASETS_2D)}),
]
SLOW_SWEEPS = [
    ("sm", SM, {"trainer.method": ",".join(SM_METHODS), "data": "two_gaussians,checkerboard"}),
    ("nce", NCE, {"data": "two_gaussians,spirals,rosenbrock"}),
    ("mle-samplers", MLE, {"sampler": "hmc,langevin,mala,independence_mh",
                           "data": "two_gaussians,rings"}),
    ("ed", ED, {"data": "two_gaussians"}),
    ("mle-samplers-rest", MLE, {"sampler": "hmc,langevin,mala,independence_mh",
                                "data": _rest("two_gaussians", "rings")}),
    ("sm-rest", SM, {"trainer.method": ",".join(SM_METHODS),
                     "data": _rest("two_gaussians", "checkerboard")}),
    ("nce-rest", NCE, {"data": _rest("two_gaussians", "spirals", "rosenbrock")}),
    ("ed-rest", ED, {"data": _rest("two_gaussians")}),
]
SWEEPS = {name: (fixed, swept) for name, fixed, swept in FAST_SWEEPS + SLOW_SWEEPS}


def _cases() -> list:
    """One pytest param per job: (sweep name, its swept overrides), slow ones marked."""
    params = []
    for tier, sweeps in (("fast", FAST_SWEEPS), ("slow", SLOW_SWEEPS)):
        for name, _, swept in sweeps:
            keys = list(swept)
            for values in itertools.product(*(swept[k].split(",") for k in keys)):
                job = tuple(f"{k}={v}" for k, v in zip(keys, values))
                marks = [pytest.mark.slow] if tier == "slow" else []
                case_id = "-".join([name.split("-")[0], *values])
                params.append(pytest.param(name, job, id=case_id, marks=marks))
    return params


@pytest.fixture(scope="module")
def sweep_dirs(tmp_path_factory: pytest.TempPathFactory):
    """sweep name -> {swept overrides: job directory}, each sweep run once, when first needed."""
    done: dict[str, tuple[dict[tuple[str, ...], Path], str]] = {}

    def get(name: str) -> tuple[dict[tuple[str, ...], Path], str]:
        if name not in done:
            fixed, swept = SWEEPS[name]
            root = tmp_path_factory.mktemp(name)
            args = ["-m", *fixed, *(f"{k}={v}" for k, v in swept.items()), *SMOKE,
                    f"hydra.sweep.dir={root}", "hydra.sweep.subdir=${hydra.job.num}"]
            with pytest.MonkeyPatch.context() as monkeypatch:
                proc = _main_in_process(args, root, monkeypatch)
            jobs = {}
            for job_dir in root.iterdir():
                overrides_file = job_dir / ".hydra" / "overrides.yaml"
                if overrides_file.is_file():
                    given = [str(o) for o in OmegaConf.load(overrides_file)]
                    jobs[tuple(o for o in given if o.split("=")[0] in swept)] = job_dir
            done[name] = (jobs, (proc.stdout + proc.stderr)[-3000:])
        return done[name]

    return get


@pytest.mark.parametrize(("sweep", "job"), _cases())
def test_trainer_runs_on_dataset(sweep: str, job: tuple[str, ...], sweep_dirs) -> None:
    jobs, output = sweep_dirs(sweep)
    assert job in jobs, f"no job directory for {job}:\n{output}"
    job_dir = jobs[job]
    error = job_dir / "error.txt"
    assert not error.exists(), error.read_text()
    metrics = json.loads((job_dir / "metrics.json").read_text())
    for key in ("test_nll", "mmd", "train_seconds", "log_z"):
        assert math.isfinite(metrics[key]), (key, metrics)
    assert metrics["steps"] == 20
    assert metrics["samples_finite_fraction"] == 1.0
    samples = np.load(job_dir / "samples.npy")
    assert samples.shape == (100, 2) and np.isfinite(samples).all()
    for name in ("checkpoint.pt", "samples.png", "energy.png"):
        assert (job_dir / name).is_file(), name
