"""Sweeps: the ranked summary (ebm_cli/app/sweep.py) and tiny sweeps through every launcher/sweeper.

The end-to-end sweeps are ``ebm-train -m`` runs kept to a few seconds per job: ``trainer=none``
with 20 steps (sampling only), or ``trainer=mle`` with conftest's FAST settings where the sweep
needs ``test_nll``. Those whose launcher starts processes (joblib, submitit) run ``ebm-train`` as
a subprocess; the rest call its entry point in-process (stdout and stderr kept apart), which pays
no Python/torch start-up.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from conftest import FAST, run_cli
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_faults import _main_in_process

from ebm_cli.app.sweep import (
    COMPARISON_PNG,
    SUMMARY_CSV,
    SUMMARY_MD,
    collect_jobs,
    rank_jobs,
    summarize,
)
from ebm_cli.app.sweep import cli as sweep_cli
from ebm_cli.reporting import joblog

BASIC = joblog.BASIC_SWEEPER
OPTUNA = joblog.OPTUNA_SWEEPER

# Sampling only, on a known mixture: about a second per job.
SAMPLING = [
    "trainer=none", "energy=gaussian_mixture", "trainer.steps=20", "trainer.warmup_steps=20",
    "trainer.n_chains=128", "trainer.trace_chains=64",
]


def _fake_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None,
              error: str | None = None) -> Path:
    job = sweep / f"{num}_job"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    hydra_cfg = OmegaConf.create({"hydra": {"job": {"num": num}}})
    OmegaConf.save(hydra_cfg, job / ".hydra" / "hydra.yaml")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (job / "error.txt").write_text(error)
    return job


def _csv_rows(sweep: Path) -> list[dict[str, str]]:
    with (sweep / SUMMARY_CSV).open() as f:
        return list(csv.DictReader(f))


def _job_logs(sweep: Path) -> dict[int, list[str]]:
    """{job number: the lines of its cli.log}."""
    return {int(p.parent.name.split("_", 1)[0]): p.read_text().splitlines()
            for p in sweep.glob("*/cli.log")}


def _started_lines(out: str) -> dict[str, str]:
    """{"[job 1/4]": the rest of that job's ``started:`` log line} from a sweep's stdout."""
    found = {}
    for line in out.splitlines():
        if "] started: " in line:
            label = line[line.index("[job "):line.index("]") + 1]
            found[label] = line.split("] started: ", 1)[1]
    return found


def _board_images(sweep: Path) -> dict[str, tuple[int, int]]:
    """{tag: (width, height)} of the images in the sweep directory's own event file."""
    acc = EventAccumulator(str(sweep))
    acc.Reload()
    return {tag: (acc.Images(tag)[-1].width, acc.Images(tag)[-1].height)
            for tag in acc.Tags()["images"]}


def _job_metrics(sweep: Path) -> dict[str, dict]:
    """{job directory name: metrics.json} for the jobs that wrote one."""
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}


# --- the summary, from job directories alone -----------------------------------------------------

def test_summary_ranks_lists_failures_and_writes_files(tmp_path: Path) -> None:
    _fake_job(tmp_path, 0, ["sampler=mh", "data=moons"], {"test_nll": 2.5, "kl": 0.3})
    _fake_job(tmp_path, 1, ["sampler=hmc", "data=moons"], {"test_nll": 2.1, "kl": 0.1})
    _fake_job(tmp_path, 2, ["sampler=mala", "data=moons"], None,
              "Traceback (most recent call last):\n  ...\nRuntimeError: boom | bang\n")
    _fake_job(tmp_path, 3, ["sampler=langevin", "data=moons"], {"kl": 0.2})  # no test_nll
    _fake_job(tmp_path, 4, ["+sampler.extra=1", "data=moons"], None)  # died without a word

    jobs = summarize(tmp_path, "test_nll", "min", ["kl"], show=False)
    assert [j.num for j in jobs] == [1, 0, 3, 2, 4]  # best first, then no metric, then failed
    assert [j.rank for j in jobs] == [1, 2, None, None, None]
    assert jobs[3].error == "RuntimeError: boom | bang"  # the exception line of a traceback
    assert "no metrics.json" in jobs[4].error

    rows = _csv_rows(tmp_path)
    assert [r["job"] for r in rows] == ["1", "0", "3", "2", "4"]
    assert [r["status"] for r in rows] == ["ok", "ok", "ok", "failed", "failed"]
    assert float(rows[0]["test_nll"]) == 2.1 and rows[2]["test_nll"] == ""
    assert rows[0]["sampler"] == "hmc" and rows[4]["sampler.extra"] == "1"

    md = (tmp_path / SUMMARY_MD).read_text()
    assert "ranked by test_nll (lower is better)" in md
    assert "Common to all jobs: `data=moons`" in md  # constant overrides are not columns
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert table[0].split("|")[1:-1] == [
        " rank ", " job ", " status ", " sampler ", " sampler.extra ", " test_nll ", " kl ",
        " error ",
    ]
    assert len(table) == 2 + 5
    assert r"RuntimeError: boom \| bang" in table[5]  # a '|' in a cell is escaped
    assert f"`tensorboard --logdir {tmp_path.resolve()}`" in md  # every job, side by side


def test_rank_max_and_bad_mode(tmp_path: Path) -> None:
    _fake_job(tmp_path, 0, ["sampler=mh"], {"ess_bulk_min": 100.0})
    _fake_job(tmp_path, 1, ["sampler=hmc"], {"ess_bulk_min": 900.0})
    jobs = rank_jobs(collect_jobs(tmp_path), "ess_bulk_min", "max")
    assert [j.num for j in jobs] == [1, 0]
    with pytest.raises(ValueError, match="sweep_summary.mode must be min or max"):
        rank_jobs(jobs, "ess_bulk_min", "best")


# --- real sweeps ---------------------------------------------------------------------------------

def test_basic_sweep_keeps_going_past_a_failed_job(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Two good and two bad jobs: all four run, the bad ones are listed as failed, exit 1."""
    sweep = tmp_path / "sweep"
    proc = _main_in_process(["-m", f"hydra.sweep.dir={sweep}", *SAMPLING, "sampler=mh,hmc",
                             "sampler.step_size=-1,0.3",
                             "hydra.callbacks.sweep_summary.metric=mean_error"],
                            tmp_path, monkeypatch)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    assert "sweep summary: 4 jobs ranked by mean_error" in proc.stdout
    assert "2 of 4 jobs failed (job 0, 2)" in proc.stderr
    assert f"tensorboard --logdir {sweep.resolve()}" in proc.stdout  # the whole sweep
    rows = _csv_rows(sweep)
    ok = [r for r in rows if r["status"] == "ok"]
    assert [r["sampler.step_size"] for r in ok] == ["0.3", "0.3"]
    assert [float(r["mean_error"]) for r in ok] == sorted(float(r["mean_error"]) for r in ok)
    failed = [r for r in rows if r["status"] == "failed"]
    assert {r["job"] for r in failed} == {"0", "2"}
    assert all("sampler.step_size must be" in r["error"] for r in failed)
    for r in failed:
        assert (sweep / r["dir"] / "error.txt").is_file()
        assert not (sweep / r["dir"] / "metrics.json").exists()
    # which job of how many: the start line of each, and every line of its log
    started = _started_lines(proc.stdout)
    assert sorted(started) == [f"[job {n}/4]" for n in range(4)], proc.stdout
    logs = _job_logs(sweep)
    assert sorted(logs) == [0, 1, 2, 3]
    for num, lines in logs.items():
        assert lines and all(f"] - [job {num}/4] " in ln for ln in lines), lines
    # one comparison figure: in the sweep directory and in its own TensorBoard run
    assert (sweep / COMPARISON_PNG).is_file()
    assert "comparison.png" in (sweep / SUMMARY_MD).read_text()
    width, height = _board_images(sweep)["sweep/comparison"]
    assert width >= 4 * 300 and height >= 300  # four panels, each readable


def test_joblib_launcher_ranks_jobs_from_worker_processes(tmp_path: Path) -> None:
    """Two jobs in two joblib worker processes; the summary ranks them (here: ESS, max first)."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", f"hydra.sweep.dir={sweep}", "hydra/launcher=joblib",
                    "hydra.launcher.n_jobs=2", *SAMPLING, "sampler=mh,hmc",
                    "hydra.callbacks.sweep_summary.metric=ess_bulk_min",
                    "hydra.callbacks.sweep_summary.mode=max"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr
    metrics = _job_metrics(sweep)
    assert len(metrics) == 2
    rows = _csv_rows(sweep)
    best = max(metrics, key=lambda d: metrics[d]["ess_bulk_min"])
    assert rows[0]["dir"] == best and rows[0]["rank"] == "1" and rows[1]["rank"] == "2"
    assert float(rows[0]["ess_bulk_min"]) == metrics[best]["ess_bulk_min"]
    assert "ranked by ess_bulk_min (higher is better)" in proc.stdout
    # lines of the two parallel jobs each carry their own job number
    started = _started_lines(proc.stdout)
    assert started.keys() == {"[job 0/2]", "[job 1/2]"}, proc.stdout
    assert "sampler=mh" in started["[job 0/2]"] and "sampler=hmc" in started["[job 1/2]"]
    for num, lines in _job_logs(sweep).items():
        assert lines and all(f"] - [job {num}/2] " in ln for ln in lines), lines
    stdout_labels = {ln[ln.index("[job "):ln.index("[job ") + 10] for ln in
                     proc.stdout.splitlines() if "[job " in ln}
    assert stdout_labels == {"[job 0/2] ", "[job 1/2] "}


@pytest.mark.slow
def test_submitit_local_summary_comes_from_files(tmp_path: Path) -> None:
    """submitit_local: job output goes to .submitit/ logs only; the summary still has both jobs."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", f"hydra.sweep.dir={sweep}", "hydra/launcher=submitit_local",
                    "hydra.launcher.timeout_min=5", *SAMPLING, "sampler=mh,hmc",
                    "hydra.callbacks.sweep_summary.metric=mean_error"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ebm-train summary" not in proc.stdout  # the jobs' own tables are in their logs
    logs = list((sweep / ".submitit").rglob("*_log.out"))
    assert len(logs) == 2 and all("ebm-train summary" in p.read_text() for p in logs)
    rows = _csv_rows(sweep)
    assert sorted(r["sampler"] for r in rows) == ["hmc", "mh"]
    assert all(r["status"] == "ok" and r["rank"] for r in rows)
    assert "sweep summary: 2 jobs ranked by mean_error" in proc.stdout


@pytest.mark.slow  # Optuna also runs in the default tier: every-trial-failed, pre-flight, README
def test_optuna_sweeper_minimises_the_returned_test_nll(tmp_path: Path) -> None:
    """hydra/sweeper=optuna_mle with a sqlite study: 2 trials, then a rerun adds a third."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    optuna = pytest.importorskip("optuna")
    db = tmp_path / "optuna.db"
    args = ["hydra/sweeper=optuna_mle", f"hydra.sweeper.storage=sqlite:///{db}", *FAST,
            "trainer.steps=20"]
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=2", *args],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = _job_metrics(sweep)
    assert len(metrics) == 2
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    best = min(m["test_nll"] for m in metrics.values())
    assert math.isclose(result.best_value, best, rel_tol=1e-12)  # the value cli.job returned
    assert set(result.best_params) == {"trainer.optimizer.lr", "trainer.alpha", "sampler"}
    rows = _csv_rows(sweep)
    assert float(rows[0]["test_nll"]) == best and rows[0]["rank"] == "1"

    again = run_cli(["-m", f"hydra.sweep.dir={tmp_path / 'again'}", "hydra.sweeper.n_trials=1",
                     *args], cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    study = optuna.load_study(study_name="ebm_mle", storage=f"sqlite:///{db}")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3  # the study was continued


def test_optuna_sweep_whose_every_trial_failed_still_summarises(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two diverging trials: Optuna has no best trial to report, and the sweep still ends with
    the summary, one ``error:`` line and status 1 instead of optuna's traceback."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    sweep = tmp_path / "sweep"
    proc = _main_in_process(["-m", f"hydra.sweep.dir={sweep}", "hydra/sweeper=optuna_mle",
                             "hydra.sweeper.n_trials=2", *FAST, "trainer.steps=50",
                             "sampler=langevin", "trainer.alpha=0", "trainer.optimizer.lr=1e30"],
                            tmp_path, monkeypatch)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out and "No trials are completed" not in out, out
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert errors[-1].startswith("error: 2 of 2 jobs failed"), proc.stderr
    assert len(errors) == 3  # each job's own line, then the sweep's
    rows = _csv_rows(sweep)
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all("non-finite" in r["error"] for r in rows), rows
    assert "tensorboard --logdir" in (sweep / SUMMARY_MD).read_text()
    assert not (sweep / "optimization_results.yaml").exists()  # no best trial to write


def test_slurm_launcher_config_composes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No cluster here: check that hydra/launcher=slurm composes onto submitit's SLURM launcher."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = _main_in_process(["hydra/launcher=slurm", "hydra.launcher.partition=cpu", "--cfg",
                             "hydra", "--package", "hydra.launcher"], tmp_path, monkeypatch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    launcher = OmegaConf.create(proc.stdout)  # --package: just the hydra.launcher node
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "cpu" and launcher.cpus_per_task == 2


def test_rerank_a_finished_sweep_from_the_command_line(tmp_path: Path) -> None:
    _fake_job(tmp_path, 0, ["sampler=mh"], {"test_nll": 2.0, "kl": 0.5})
    _fake_job(tmp_path, 1, ["sampler=hmc"], {"test_nll": 2.2, "kl": 0.1})
    sweep_cli([str(tmp_path), "--metric", "kl"])
    assert [r["sampler"] for r in _csv_rows(tmp_path)] == ["hmc", "mh"]


@pytest.mark.parametrize("sweeper, args, params, plan", [
    (BASIC, ["sampler=mh,hmc", "seed=range(3)", "debug=fast"], None, (6, ["sampler", "seed"])),
    (BASIC, ["seed=1,2"], {"sampler": "mh,hmc,mala"}, (6, ["sampler", "seed"])),
    (BASIC, ["sampler=glob(*)"], None, (None, ["sampler"])),  # needs the config loader
    (OPTUNA, ["trainer.steps=20"], {"sampler": "choice(hmc,mh)"}, (4, ["sampler"])),
])
def test_the_plan_counts_the_jobs_and_names_the_swept_keys(
        sweeper: str, args: list[str], params: dict | None,
        plan: tuple[int | None, list[str]]) -> None:
    config = OmegaConf.create({"hydra": {"sweeper": {"_target_": sweeper, "n_trials": 4,
                                                     "params": params},
                                         "overrides": {"task": args}}})
    assert joblog.plan_of(config) == joblog.SweepPlan(*plan)
