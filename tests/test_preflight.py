"""Pre-flight (ebm_cli/app/preflight.py): a bad command line is refused in one ``error:`` line, exit
status 2, before Hydra starts — for a sweep, whichever trial it would have reached.

Every case runs ``ebm_cli.app.cli.main`` in this process (tests/test_faults.py's helper): the
refusal comes before any job, so there is nothing a subprocess would add but its start-up.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_faults import _clean_failure, _main_in_process

from ebm_cli.app import preflight


def _refused(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, key: str) -> str:
    proc = _main_in_process(args, tmp_path, monkeypatch)
    line = _clean_failure(proc)  # non-zero, no traceback, exactly one non-empty "error:" line
    assert proc.returncode == 2, proc.returncode
    assert key in line, line
    return line


def _nothing_ran(out_dir: Path) -> None:
    assert not out_dir.exists() or not any(out_dir.iterdir()), sorted(out_dir.rglob("*"))


# --- 1: every value of every swept key, before the first job -------------------------------------

@pytest.mark.parametrize(("sweep", "key"), [
    (["sampler.step_size=0.1,abc"], "sampler.step_size"),  # job 1's value; job 0 would train
    (["sampler=mh,hmc", "eval.grid=400,3"], "eval.grid"),  # the second key's second value
    (["trainer=score_matching,mle", "trainer.method=exact"], "trainer.method"),  # a group sweep's
    # second option (mle has no method)
    (["sampler=hmc,mh", "sampler.n_leapfrog=4"], "sampler.n_leapfrog"),  # mh has no n_leapfrog
])
def test_sweep_checks_every_value_before_any_job(
    sweep: list[str], key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "sweep"
    line = _refused(["-m", f"hydra.sweep.dir={out}", *sweep], tmp_path, monkeypatch, key)
    if sweep[0].startswith("sampler=hmc"):
        assert "sampler=mh" in line  # names the jobs it comes from
    _nothing_ran(out)
    assert not list(tmp_path.rglob("metrics.json"))


def test_single_run_value_is_refused_before_hydra_makes_the_run_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_dir = tmp_path / "run"
    _refused([f"hydra.run.dir={run_dir}", "seed=abc"], tmp_path, monkeypatch, "seed")
    assert not run_dir.exists()


def test_sweep_checks_cost_the_sum_of_the_values_not_their_product(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """3 × 2 × 3 = 18 jobs: one composition for the first, one per further group option (the
    sampler's 2, the data's 1); the seeds are set on the first config, as Hydra's override is."""
    calls: list[list[str]] = []
    compose = preflight.compose

    def counted(name: str, overrides: list[str], **kwargs: object) -> object:
        calls.append(overrides)
        return compose(name, overrides=overrides, **kwargs)

    checked: list[object] = []
    check_config = preflight.check_config
    monkeypatch.setattr(preflight, "compose", counted)
    monkeypatch.setattr(preflight, "check_config",
                        lambda cfg: checked.append(cfg.seed) or check_config(cfg))
    preflight.check_keys(["-m", "sampler=mh,hmc,mala", "data=two_gaussians,moons",
                          "seed=1,2,3"])
    assert len(calls) == 4, calls
    assert len(checked) == 1 + 2 + 1 + 2 and sorted(set(checked)) == [1, 2, 3]


def test_good_sweeps_pass() -> None:
    preflight.check_keys(["-m", "sampler=mh,hmc", "data=two_gaussians,moons",
                          "trainer.optimizer.lr=1e-3,3e-3"])
    preflight.check_keys(["-m", "trainer=none", "energy=gaussian_mixture", "sampler=glob(m*)",
                          "trainer.steps=range(10,30,10)"])


# --- 2: an Optuna search space, before the first trial -------------------------------------------

@pytest.mark.parametrize(("space", "key"), [
    (["sampler.step_size=interval(1, 0.1)"], "sampler.step_size"),  # low > high
    (["sampler.step_size=tag(log, interval(-1, 1))"], "sampler.step_size"),  # log of ≤ 0
    (["sampler=hmc", "sampler.n_leapfrog=interval(1, 10)"], "sampler.n_leapfrog"),  # floats
    (["sampler.step_size=choice(0.2, abc)"], "sampler.step_size"),  # a choice check_config refuses
    (["trainer=none"], "trainer.optimizer.lr"),  # optuna_mle's own params need a trainer with lr
])
def test_optuna_search_space_is_checked_before_the_first_trial(
    space: list[str], key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    out = tmp_path / "sweep"
    line = _refused(["-m", f"hydra.sweep.dir={out}", "hydra/sweeper=optuna_mle", *space],
                    tmp_path, monkeypatch, key)
    if "interval(1, 10)" in space[-1]:
        assert "range(" in line  # says how to sweep integers
    _nothing_ran(out)


def test_optuna_default_search_space_passes() -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    preflight.check_keys(["-m", "hydra/sweeper=optuna_mle", "sampler=mh",
                          "sampler.step_size=interval(0.05, 0.5)"])


# --- 4: Hydra's own grammar, in one line that says how to quote ---------------------------------

@pytest.mark.parametrize(("args", "key", "says"), [
    (["data.path=données.npy"], "data.path", "data.path='données.npy'"),
    (["data.path=a\nb.npy"], "data.path", "data.path='a\\nb.npy'"),
    (["sampler.step_size=("], "sampler.step_size", "sampler.step_size='('"),
    (["sampler.step_size=0.1,0.2"], "sampler.step_size", "-m"),  # a sweep without -m
    (["sampler=mh", "-m", "seed=1,2"], "seed=1,2", "before the overrides"),  # Hydra's usage text
])
def test_grammar_error_is_one_line(
    args: list[str], key: str, says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    run_dir = tmp_path / "run"
    line = _refused([f"hydra.run.dir={run_dir}", *args], tmp_path, monkeypatch, key)
    assert says in line, line
    assert not run_dir.exists()
