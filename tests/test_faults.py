"""Faults: kills, signals, damaged or malicious checkpoints, unwritable outputs, bad input.

Each case asserts a clean exit (non-zero, one ``error:`` line, no traceback) and that nothing
written before the fault is lost. Kills and signals need a real ``ebm-train`` process, and each
stage that can refuse input has one real-process case (IN_SUBPROCESS, a damaged checkpoint); the
other cases call the same entry point in-process (``_main_in_process``), which checks the same
exit code and line without paying Python's and torch's start-up again.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, ebm_train_command, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

# A run long enough to interrupt, with frequent checkpoints; Langevin keeps steps cheap.
LONG = [*FAST, "sampler=langevin", "trainer.steps=100000", "checkpoint_every=25",
        "log_every=25", "image_every=0"]


def _clean_failure(proc: subprocess.CompletedProcess[str]) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Traceback" not in out, out
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:"), proc.stderr
    return errors[0]


def _start(run_dir: Path, extra: list[str]) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.Popen(
        [*ebm_train_command(), f"hydra.run.dir={run_dir}", *LONG, *extra],
        cwd=run_dir.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen[str], min_step: int) -> None:
    deadline = time.monotonic() + 120
    path = run_dir / "checkpoint.pt"
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if path.exists():
            try:
                if torch.load(path, weights_only=True)["step"] >= min_step:
                    return
            except Exception:  # being replaced right now: atomic rename, try again
                pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail("no checkpoint appeared within 120 s")


def _loss_steps(run_dir: Path) -> list[int]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.step for e in acc.Scalars("loss")]


@pytest.fixture(scope="module")
def straight_metrics(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    """metrics.json of the 150-step run that the interrupted runs must reproduce (run once,
    in-process: the run is seeded from its config, whatever ran before in this process)."""
    root = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as monkeypatch:
        proc = _main_in_process([f"hydra.run.dir={root / 'run'}", *LONG, "trainer.steps=150"],
                                root, monkeypatch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads((root / "run" / "metrics.json").read_text())


@pytest.mark.parametrize("signum", [pytest.param(signal.SIGINT, marks=pytest.mark.slow),
                                    signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(
    tmp_path: Path, signum: int, straight_metrics: dict[str, float],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps = ["trainer.steps=150"]
    run_dir = tmp_path / "interrupted"
    proc = _start(run_dir, steps)
    _wait_for_checkpoint(run_dir, proc, 25)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert proc.returncode == 128 + signum, err
    assert "Traceback" not in out + err
    assert "resume=" in err  # tells the user how to continue
    stopped_at = torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"]
    assert 25 <= stopped_at < 150

    # The resume reads everything from the run directory (a fresh process is not the point).
    resumed = _main_in_process([f"resume={run_dir}"], tmp_path, monkeypatch)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a = dict(straight_metrics)
    b = json.loads((run_dir / "metrics.json").read_text())
    for m in (a, b):  # wall times (train_seconds, seconds_<phase>) are what may differ
        for key in [k for k in m if k == "train_seconds" or k.startswith("seconds_")]:
            m.pop(key)
    assert a == b  # bit-exact on CPU: weights, optimizer, chains, data order, RNG streams
    steps_logged = _loss_steps(run_dir)
    assert steps_logged == sorted(set(steps_logged)) and steps_logged[-1] == 150


@pytest.mark.slow
def test_kill_9_loses_at_most_the_steps_since_the_last_checkpoint(tmp_path: Path) -> None:
    run_dir = tmp_path / "killed"
    proc = _start(run_dir, ["trainer.steps=400"])
    _wait_for_checkpoint(run_dir, proc, 50)
    proc.kill()
    proc.communicate(timeout=60)
    saved = torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"]
    resumed = run_cli([f"resume={run_dir}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 400
    logged = _loss_steps(run_dir)
    assert logged == sorted(set(logged)), "a step was logged twice"  # purged after resume
    assert saved in logged and logged[-1] == 400


def _finished_run(tmp_path: Path, finished: Path) -> Path:
    """A copy of the finished run in tmp_path (its .hydra overrides point at no directory)."""
    run_dir = tmp_path / "done"
    shutil.copytree(finished, run_dir)
    return run_dir


@pytest.mark.parametrize("damage", ["truncated", "corrupted", "foreign"])
def test_damaged_checkpoint_is_refused_in_one_line(tmp_path: Path, damage: str,
                                                   finished_run: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = _finished_run(tmp_path, finished_run)
    path = run_dir / "checkpoint.pt"
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "corrupted":
        path.write_bytes(bytes(b ^ 0x5A for b in data[:4096]) + data[4096:])
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    before = path.read_bytes()
    args = [f"resume={run_dir}"]
    # The checkpoint stage's real-process case (cf. IN_SUBPROCESS); the others in-process.
    proc = (run_cli(args, cwd=tmp_path) if damage == "truncated"
            else _main_in_process(args, tmp_path, monkeypatch))
    line = _clean_failure(proc)
    assert "checkpoint" in line and str(path) in line
    assert path.read_bytes() == before  # the evidence is left as it was
    assert (run_dir / "metrics.json").is_file()


class _Evil:
    def __reduce__(self):  # runs `touch` on unpickling if loading were unsafe
        return (os.system, (f"touch {_Evil.marker}",))

    marker = ""


def test_malicious_pickle_in_a_checkpoint_does_not_run(tmp_path: Path, finished_run: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = _finished_run(tmp_path, finished_run)
    marker = tmp_path / "pwned"
    _Evil.marker = str(marker)
    torch.save({"energy": _Evil(), "step": 1}, run_dir / "checkpoint.pt")
    # In-process: had the checkpoint been unpickled unsafely, os.system would have run here.
    line = _clean_failure(_main_in_process([f"resume={run_dir}"], tmp_path, monkeypatch))
    assert "cannot be loaded safely" in line
    assert not marker.exists()


def test_unwritable_output_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    line = _clean_failure(_main_in_process([f"hydra.run.dir={blocker}/run", *FAST], tmp_path,
                                           monkeypatch))
    assert str(blocker) in line
    assert blocker.read_text() == "not a directory"


BAD_OVERRIDES = [
    ("sampler.step_size=abc", "sampler.step_size"),
    ("sampler.step_size=-1", "sampler.step_size"),
    ("sampler=nonexistent", "sampler"),
    ("trainer.steps=-1", "trainer.steps"),
    ("trainer.steps=0", "trainer.steps"),
    ("trainer.batch_size=100000", "trainer.batch_size"),
    ("+sampler.new_key=1", "sampler.new_key"),
    ("+foo=1", "foo"),
    ("sampler.new_key=1", "sampler.new_key"),  # no '+': Hydra's own 'Could not override'
    ("foo=1", "foo"),
    ("trainer.lr_schedule.bogus=1", "trainer.lr_schedule.bogus"),
    ("+seed=3", "seed"),
    ("-m sampler.step_size=0.1,0.2 sampler.nope=1,2", "sampler.nope"),  # before any job starts
    ("seed=abc", "seed"),
    ("dtype=float16", "dtype"),
    ("device=tpu", "device"),
    ("log_every=0", "log_every"),
    ("eval.grid=3", "eval.grid"),
    ("trainer.optimizer.lr=abc", "trainer.optimizer.lr"),
    ("trainer.init=bogus", "trainer.init"),
    ("trainer.reinit_prob=1.5", "trainer.reinit_prob"),
    ("sampler.n_leapfrog=0", "sampler.n_leapfrog"),
    ("sampler.jitter=1.5", "sampler.jitter"),
    ("energy.width=0", "energy.width"),
    ("energy.activation=swish", "energy.activation"),
    ("data.n_train=-5", "data.n_train"),
    ("data.std=-1", "data.std"),
    ("energy=checkpoint", "energy.path"),
    ("resume=/nonexistent/run", "resume"),
    ("trainer=score_matching trainer.method=magic", "trainer.method"),
    ("trainer=none trainer.n_chains=1", "trainer.n_chains"),
    ("energy=rosenbrock data=file data.path=/nonexistent.npy", "data"),
    ("data=digits energy=conv trainer=score_matching trainer.method=exact", "trainer.method"),
]


# One case per stage that can refuse input runs as a real process (the exit code, stderr and the
# absence of a traceback are those a user sees); the rest call the same entry point in-process,
# which checks the same one line at a fraction of the start-up cost.
IN_SUBPROCESS = {
    "sampler=nonexistent",  # pre-flight: group options
    "sampler.new_key=1",  # trial composition: keys
    "-m sampler.step_size=0.1,0.2 sampler.nope=1,2",  # the same, before a sweep starts
    "resume=/nonexistent/run",  # resume
    "seed=abc",  # check_config, inside the Hydra job
    "energy.width=0",  # a constructor's ValueError
    "trainer.batch_size=100000",  # building the run
    "energy=rosenbrock data=file data.path=/nonexistent.npy",  # a data file
}


@pytest.fixture(scope="module")
def bad_override_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The subprocess cases at once, a few processes at a time (each is mostly start-up)."""
    root = tmp_path_factory.mktemp("bad")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    results: dict[str, object] = {}
    pending = [o for o, _ in BAD_OVERRIDES if o in IN_SUBPROCESS]
    running: list[tuple[str, subprocess.Popen[str]]] = []
    while pending or running:
        while pending and len(running) < 4:
            override = pending.pop()
            run_dir = root / f"run{len(results) + len(running)}"
            proc = subprocess.Popen(
                [*ebm_train_command(), f"hydra.run.dir={run_dir}", *override.split()],
                cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            )
            running.append((override, proc))
        override, proc = running.pop(0)
        out, err = proc.communicate(timeout=180)
        results[override] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def _main_in_process(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch
                     ) -> subprocess.CompletedProcess[str]:
    """``ebm-train ARGS`` through ``ebm_cli.app.cli.main`` in this process: exit code and output."""
    from ebm_cli.app import cli

    monkeypatch.chdir(cwd)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["ebm-train", *args])
    out, err = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            cli.main()
        except SystemExit as e:
            code = e.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def test_every_refusing_stage_has_a_subprocess_case() -> None:
    assert IN_SUBPROCESS <= {o for o, _ in BAD_OVERRIDES}


@pytest.mark.parametrize(("override", "key"), BAD_OVERRIDES)
def test_bad_override_is_refused_in_one_line(
    bad_override_runs: dict[str, subprocess.CompletedProcess[str]], override: str, key: str,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    if override in IN_SUBPROCESS:
        proc = bad_override_runs[override]
    else:
        proc = _main_in_process([f"hydra.run.dir={tmp_path / 'run'}", *override.split()],
                                tmp_path, monkeypatch)
    line = _clean_failure(proc)
    assert proc.returncode == 2, proc.returncode
    assert key in line, line


def test_non_finite_loss_stops_cleanly_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "diverged"
    # An absurd learning rate makes the energy overflow within a couple of updates.
    proc = _main_in_process([f"hydra.run.dir={run_dir}", *FAST, "sampler=langevin",
                             "trainer.alpha=0", "trainer.optimizer.lr=1e30", "trainer.steps=50",
                             "checkpoint_every=1"], tmp_path, monkeypatch)
    line = _clean_failure(proc)
    assert proc.returncode == 1
    assert "non-finite" in line and "trainer.optimizer.lr" in line
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert 1 <= state["step"] < 50
    assert all(torch.isfinite(v).all() for v in state["energy"].values())  # never a bad state
    assert not (run_dir / "metrics.json").exists()


def test_diverging_sampler_without_training_gets_a_sampler_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unadjusted Langevin at η = 0.003 overshoots on Rosenbrock's steep valley walls (b = 100)
    # from N(0, I) starting points: no optimizer is involved, so the hint must not name one.
    proc = _main_in_process([f"hydra.run.dir={tmp_path / 'run'}", "trainer=none",
                             "sampler=langevin", "energy=rosenbrock", "trainer.steps=20",
                             "trainer.warmup_steps=0", "log_every=5"], tmp_path, monkeypatch)
    line = _clean_failure(proc)
    assert proc.returncode == 1
    assert "non-finite" in line and "sampler.step_size" in line and "optimizer" not in line
