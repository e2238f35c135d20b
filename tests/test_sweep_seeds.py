"""Seed sweeps (ebm_cli/app/sweep.py): one summary row per configuration, every metric as
mean ± sample sd over its seeds, ranked by the mean.

The default tier builds sweeps from fake job directories (``metrics.json`` and
``.hydra/overrides.yaml``, what ``collect_jobs`` reads); one real ``ebm-train -m`` seed sweep is
in the slow tier.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST, run_cli
from omegaconf import OmegaConf

from ebm_cli.app.seeds import Stat, _seed_list, format_stat, mean_sd, seed_configs, stat_of
from ebm_cli.app.sweep import JOBS_CSV, SUMMARY_CSV, SUMMARY_MD, collect_jobs, summarize
from ebm_cli.reporting.report import CONSOLE


def _fake_job(sweep: Path, num: int, overrides: list[str], metrics: dict | None,
              error: str | None = None) -> None:
    job = sweep / f"{num}_job"
    (job / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": num}}}),
                   job / ".hydra" / "hydra.yaml")
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if error is not None:
        (job / "error.txt").write_text(error)


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _md_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table line (header and separator included)."""
    return [[c.strip() for c in ln.split("|")[1:-1]] for ln in text.splitlines()
            if ln.startswith("|")]


# mle: a steady configuration; nce: one lucky seed (the best single job of the sweep) but the
# worse mean, one seed without mmd, and one seed that failed.
MLE = [2.31, 2.35, 2.29]
MLE_MMD = [0.01, 0.02, 0.04]
NCE = [2.10, 2.70]


def _seed_sweep(root: Path) -> None:
    num = 0
    for seed, nll in enumerate(MLE):
        _fake_job(root, num, ["trainer=mle", f"seed={seed}", "data=moons"],
                  {"test_nll": nll, "mmd": MLE_MMD[seed], "steps": 30})
        num += 1
    _fake_job(root, num, ["trainer=nce", "seed=0", "data=moons"],
              {"test_nll": NCE[0], "mmd": 0.05, "steps": 30})
    _fake_job(root, num + 1, ["trainer=nce", "seed=1", "data=moons"],
              {"test_nll": NCE[1], "steps": 30})
    _fake_job(root, num + 2, ["trainer=nce", "seed=2", "data=moons"], None,
              "error: trainer.loss is non-finite at step 12\n")


def test_a_seed_sweep_is_ranked_per_configuration_by_the_mean(tmp_path: Path) -> None:
    _seed_sweep(tmp_path)
    jobs = summarize(tmp_path, "test_nll", "min", ["mmd"], show=False)
    assert len(jobs) == 6 and jobs[0].overrides["trainer"] == "nce"  # the best single job

    rows = _csv(tmp_path / SUMMARY_CSV)
    assert [(r["rank"], r["trainer"]) for r in rows] == [("1", "mle"), ("2", "nce")]  # by mean
    mle, nce = rows
    assert "seed" not in mle and mle["seeds"] == "0 1 2" and mle["data"] == "moons"
    assert (mle["n_jobs"], mle["n_ok"], mle["failed_jobs"]) == ("3", "3", "")
    assert float(mle["test_nll_mean"]) == pytest.approx(np.mean(MLE), rel=1e-15)
    assert float(mle["test_nll_sd"]) == pytest.approx(np.std(MLE, ddof=1), rel=1e-12)
    assert mle["test_nll_n"] == "3"
    assert float(mle["steps_mean"]) == 30 and float(mle["steps_sd"]) == 0  # not a shown column
    # the failed job is counted and named, not averaged; mmd came from one of the two finished
    assert (nce["n_jobs"], nce["n_ok"], nce["failed_jobs"]) == ("3", "2", "5")
    assert nce["error"] == "job 5 (seed=2): error: trainer.loss is non-finite at step 12"
    assert float(nce["test_nll_mean"]) == pytest.approx(np.mean(NCE), rel=1e-15)
    assert float(nce["test_nll_sd"]) == pytest.approx(np.std(NCE, ddof=1), rel=1e-12)
    assert (nce["mmd_mean"], nce["mmd_sd"], nce["mmd_n"]) == ("0.05", "", "1")

    md = (tmp_path / SUMMARY_MD).read_text()
    assert md.startswith("# sweep summary: 2 configurations × seeds (6 jobs) ranked by mean "
                         "test_nll (lower is better)")
    assert "Common to all jobs: `data=moons`" in md
    tables = _md_rows(md)
    assert tables[0] == ["rank", "trainer", "seeds", "n", "test_nll", "mmd", "error"]
    assert tables[2] == ["1", "mle", "0–2", "3/3", "2.317 ± 0.031", "0.023 ± 0.015", ""]
    assert tables[3] == ["2", "nce", "0–2", "2/3", "2.40 ± 0.42", "0.05 (n=1)",
                         "job 5 (seed=2): error: trainer.loss is non-finite at step 12"]
    # nothing is lost: every job, with its seed, in summary.md and jobs.csv
    assert "## Every job: 6 jobs ranked by test_nll (lower is better)" in md
    assert tables[4] == ["rank", "job", "status", "trainer", "seed", "test_nll", "mmd", "error"]
    assert [r[:5] for r in tables[6:]] == [
        ["1", "3", "ok", "nce", "0"], ["2", "2", "ok", "mle", "2"],
        ["3", "0", "ok", "mle", "0"], ["4", "1", "ok", "mle", "1"],
        ["5", "4", "ok", "nce", "1"], ["—", "5", "failed", "nce", "2"],
    ]
    per_job = _csv(tmp_path / JOBS_CSV)
    assert [(r["job"], r["seed"], r["status"]) for r in per_job] == [
        ("3", "0", "ok"), ("2", "2", "ok"), ("0", "0", "ok"), ("1", "1", "ok"), ("4", "1", "ok"),
        ("5", "2", "failed"),
    ]
    assert float(per_job[0]["test_nll"]) == NCE[0]


def test_the_printed_table_names_the_failed_job_and_explains_the_cells(tmp_path: Path) -> None:
    _seed_sweep(tmp_path)
    width = CONSOLE.width
    CONSOLE.width = 200
    try:
        with CONSOLE.capture() as captured:
            summarize(tmp_path, "test_nll", "min", ["mmd"], show=True)
    finally:
        CONSOLE.width = width
    out = captured.get()
    flat = " ".join(out.split())  # the title wraps at the table's width
    assert "2 configurations × seeds (6 jobs) ranked by mean test_nll (lower is better)" in flat
    line = next(ln for ln in out.splitlines() if " mle " in ln)
    assert "2.317 ± 0.031" in line and "3/3" in line
    assert "job 5 (seed=2) failed: error: trainer.loss is non-finite at step 12" in out
    assert "mean ± sample sd (n − 1)" in out
    assert f"{SUMMARY_CSV} (per configuration" in out and JOBS_CSV in out


def test_mode_max_ranks_by_the_largest_mean_and_all_failed_configurations_come_last(
        tmp_path: Path) -> None:
    ess = {"mh": [100.0, 300.0], "hmc": [900.0, 700.0]}
    num = 0
    for sampler, values in ess.items():
        for seed, v in enumerate(values):
            _fake_job(tmp_path, num, [f"sampler={sampler}", f"seed={seed}"],
                      {"ess_bulk_min": v})
            num += 1
    for seed in range(2):  # a configuration none of whose jobs finished
        _fake_job(tmp_path, num + seed, ["sampler=mala", f"seed={seed}"], None,
                  f"error: sampler.step_size must be > 0, got -{seed}")
    _fake_job(tmp_path, num + 2, ["sampler=langevin", "seed=0"], {"kl": 0.1})  # no ess_bulk_min
    summarize(tmp_path, "ess_bulk_min", "max", show=False)
    rows = _csv(tmp_path / SUMMARY_CSV)
    assert [(r["rank"], r["sampler"]) for r in rows] == [
        ("1", "hmc"), ("2", "mh"), ("", "langevin"), ("", "mala")]
    assert rows[0]["ess_bulk_min_mean"] == "800.0" and rows[2]["ess_bulk_min_n"] == "0"
    assert rows[2]["kl_mean"] == "0.1" and rows[2]["kl_sd"] == ""  # one seed: no sd
    assert rows[3]["n_ok"] == "0" and rows[3]["failed_jobs"] == "4 5"
    md_rows = _md_rows((tmp_path / SUMMARY_MD).read_text())
    assert md_rows[2][:5] == ["1", "hmc", "0,1", "2/2", "800 ± 141"]
    assert md_rows[4][:5] == ["—", "langevin", "0", "1/1", ""]
    assert md_rows[5][:4] == ["—", "mala", "0,1", "0/2"]
    assert md_rows[5][-1] == ("job 4 (seed=0): error: sampler.step_size must be > 0, got -0; "
                              "job 5 (seed=1): error: sampler.step_size must be > 0, got -1")


def test_sweeps_without_seed_variation_keep_the_per_job_summary(tmp_path: Path) -> None:
    cases = {
        "common_seed": [["sampler=mh", "seed=1"], ["sampler=hmc", "seed=1"]],
        # seed varies, but every configuration ran one seed only
        "one_seed_each": [["sampler=mh", "seed=0"], ["sampler=hmc", "seed=1"]],
        "no_seed": [["sampler=mh"], ["sampler=hmc"]],
    }
    for name, overrides in cases.items():
        sweep = tmp_path / name
        for num, ov in enumerate(overrides):
            _fake_job(sweep, num, ov, {"test_nll": 2.0 + num})
        assert seed_configs(collect_jobs(sweep)) is None, name
        summarize(sweep, show=False)
        assert not (sweep / JOBS_CSV).exists(), name
        rows = _csv(sweep / SUMMARY_CSV)
        assert [(r["rank"], r["job"], r["status"]) for r in rows] == [
            ("1", "0", "ok"), ("2", "1", "ok")], name
        md = (sweep / SUMMARY_MD).read_text()
        assert md.startswith("# sweep summary: 2 jobs ranked by test_nll"), name
        assert "Every job:" not in md and "mean ±" not in md, name


def test_one_configuration_over_seeds_is_one_row(tmp_path: Path) -> None:
    for seed, v in enumerate([1.0, 2.0, 4.0]):
        _fake_job(tmp_path, seed, [f"seed={seed}", "debug=fast"], {"test_nll": v})
    summarize(tmp_path, show=False)
    (row,) = _csv(tmp_path / SUMMARY_CSV)
    assert row["rank"] == "1" and row["seeds"] == "0 1 2"
    assert float(row["test_nll_sd"]) == pytest.approx(math.sqrt(7 / 3), rel=1e-12)
    assert _md_rows((tmp_path / SUMMARY_MD).read_text())[2] == ["1", "0–2", "3/3", "2.3 ± 1.5"]


def test_stat_of_is_mean_and_sample_sd_of_the_finite_values() -> None:
    values = [0.3, 1.7, -0.4, 2.2, 0.9]
    stat = stat_of([*values, math.nan, math.inf])
    assert stat.n == 5
    assert stat.mean == pytest.approx(np.mean(values), rel=1e-14)
    assert stat.sd == pytest.approx(np.std(values, ddof=1), rel=1e-12)
    assert stat_of([2.5]) == Stat(2.5, None, 1)
    assert stat_of([]) == stat_of([math.nan]) == Stat(None, None, 0)


@pytest.mark.parametrize("mean, sd, text", [
    (2.3166666, 0.0305505, "2.317 ± 0.031"),
    (1296.4, 85.3, "1296 ± 85"),
    (0.5, 0.96, "0.50 ± 0.96"),
    (-1.25, 0.1, "-1.25 ± 0.10"),
    (3.7102e-5, 1.2e-6, "3.7102e-05 ± 1.2e-06"),  # would need 7 decimals
    (5.0, 0.0, "5 ± 0"),
])
def test_mean_sd_rounds_the_mean_to_the_sd(mean: float, sd: float, text: str) -> None:
    assert mean_sd(mean, sd) == text


def test_cells_and_seed_lists() -> None:
    assert format_stat(Stat(2.5, None, 1), finished=1) == "2.5"
    assert format_stat(Stat(2.5, 0.25, 2), finished=3) == "2.50 ± 0.25 (n=2)"
    assert format_stat(Stat(None, None, 0), finished=2) == "" == format_stat(None, 2)
    assert _seed_list(["0", "1", "2", "5", "7", "8"]) == "0–2,5,7,8"
    assert _seed_list(["3"]) == "3"
    assert _seed_list(["b", "a"]) == "b,a"  # not integers: as given


@pytest.mark.slow
def test_a_real_seed_sweep_of_two_trainers(tmp_path: Path) -> None:
    """``ebm-train -m trainer=mle,nce seed=0,1``: two rows, each the mean of its two jobs."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", f"hydra.sweep.dir={sweep}", *FAST, "trainer=mle,nce", "seed=0,1"],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 configurations × seeds (4 jobs) ranked by mean test_nll" in proc.stdout
    per_job = _csv(sweep / JOBS_CSV)
    assert sorted((r["trainer"], r["seed"]) for r in per_job) == [
        ("mle", "0"), ("mle", "1"), ("nce", "0"), ("nce", "1")]
    rows = _csv(sweep / SUMMARY_CSV)
    assert sorted(r["trainer"] for r in rows) == ["mle", "nce"]
    means = [float(r["test_nll_mean"]) for r in rows]
    assert means == sorted(means) and [r["rank"] for r in rows] == ["1", "2"]
    for row in rows:
        jobs = [json.loads((sweep / r["dir"] / "metrics.json").read_text())
                for r in per_job if r["trainer"] == row["trainer"]]
        values = [m["test_nll"] for m in jobs]
        assert values[0] != values[1]  # the seeds differ
        assert float(row["test_nll_mean"]) == pytest.approx(np.mean(values), rel=1e-12)
        assert float(row["test_nll_sd"]) == pytest.approx(np.std(values, ddof=1), rel=1e-9)
        assert row["test_nll_n"] == "2" and row["n_ok"] == "2"
        common = set.intersection(*(set(m) for m in jobs))
        assert all(row[f"{k}_n"] == "2" for k in common)  # every metric, not only the shown
