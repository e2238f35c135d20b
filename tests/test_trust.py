"""Trust: no file from someone else runs code, a resume can neither corrupt nor rewrite a run.

Planted payloads (a checkpoint's stored energy config, a run directory's overrides) must not run;
the resume command the tool prints must work when pasted for any directory name; a resume may
extend a run, never change it; one writer per run directory; signals outside the training loop
and storage failures end with one line. Each refusal: non-zero exit, one ``error:`` line, no
traceback, nothing written before lost.
"""

from __future__ import annotations

import errno
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
from test_faults import _clean_failure, _main_in_process

from ebm_cli.app import resume, rundir

# A run long enough to interrupt, cheap per step (Langevin), checkpoints often.
LONG = [*FAST, "sampler=langevin", "trainer.steps=100000", "checkpoint_every=25",
        "log_every=25", "image_every=0"]
# FAST without its images at steps 10 and 20 (a third of a FAST run's time), for the runs here
# that check what is written, refused or kept, not the images.
PLAIN = [*FAST, "image_every=0"]
PAYLOAD_MODULE = '''
from pathlib import Path

def payload(*args, **kwargs):
    Path({marker!r}).write_text("ran")
    return 1
'''


def _copy(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    return dest


def _payload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A module on sys.path whose ``payload`` would create ``marker`` if anything called it."""
    marker = tmp_path / "pwned"
    (tmp_path / "evil_mod.py").write_text(PAYLOAD_MODULE.format(marker=str(marker)))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "evil_mod.payload", marker


# --- 1. Nothing read from a file becomes code ------------------------------------------------


@pytest.mark.parametrize("plant", ["nested_target", "top_target", "interpolation"])
def test_a_checkpoints_stored_energy_config_never_runs(
    tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch, plant: str
) -> None:
    target, marker = _payload(tmp_path, monkeypatch)
    ckpt = tmp_path / "sent.pt"
    state = torch.load(finished_run / "checkpoint.pt", weights_only=True)
    spec = state["energy_spec"]
    if plant == "nested_target":  # a nested node that Hydra would instantiate
        spec["kwargs"]["width"] = {"_target_": target}
    elif plant == "top_target":  # a class outside the package's energies
        spec["class"] = target
    else:
        spec["kwargs"]["activation"] = "${oc.env:HOME}"
    state.pop("energy_spec")
    state["energy_spec"] = spec
    torch.save(state, ckpt)
    before = ckpt.read_bytes()
    proc = _main_in_process([f"hydra.run.dir={tmp_path / 'run'}", *FAST, "trainer=none",
                             "energy=checkpoint", f"energy.path={ckpt}", "trainer.steps=5"],
                            tmp_path, monkeypatch)
    line = _clean_failure(proc)
    assert str(ckpt) in line and "refused" in line, line
    assert not marker.exists()
    assert ckpt.read_bytes() == before


def test_an_older_checkpoints_energy_config_is_read_as_data(
    tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints from before energy_spec stored a Hydra node: it is checked the same way."""
    target, marker = _payload(tmp_path, monkeypatch)
    ckpt = tmp_path / "old.pt"
    state = torch.load(finished_run / "checkpoint.pt", weights_only=True)
    spec = state.pop("energy_spec")
    state["energy_config"] = {"_target_": spec["class"], **spec["kwargs"],
                              "depth": {"_target_": target, "_partial_": True}}
    torch.save(state, ckpt)
    proc = _main_in_process([f"hydra.run.dir={tmp_path / 'run'}", *FAST, "trainer=none",
                             "energy=checkpoint", f"energy.path={ckpt}", "trainer.steps=5"],
                            tmp_path, monkeypatch)
    assert "refused" in _clean_failure(proc)
    assert not marker.exists()


def test_energy_checkpoint_samples_a_trained_run(tmp_path: Path, finished_run: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    proc = _main_in_process([f"hydra.run.dir={tmp_path / 'run'}", *PLAIN, "trainer=none",
                             "energy=checkpoint", f"energy.path={finished_run}", "trainer.steps=10",
                             "trainer.warmup_steps=5", "trainer.n_chains=64"],
                            tmp_path, monkeypatch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()


@pytest.mark.parametrize("plant", [
    "trainer.optimizer={_target_: evil_mod.payload}",  # a dict value
    "trainer.steps={_target_: evil_mod.payload}",  # a dict where an int is declared
    "hydra.callbacks.x._target_=evil_mod.payload",  # a Hydra setting
    "+trainer.optimizer._target_=evil_mod.payload",  # a key that builds something
    "seed=${oc.env:HOME}",  # an interpolation
])
def test_a_run_directorys_overrides_never_run(
    tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch, plant: str
) -> None:
    _, marker = _payload(tmp_path, monkeypatch)
    run_dir = _copy(finished_run, tmp_path / "sent")
    overrides = run_dir / ".hydra" / "overrides.yaml"
    overrides.write_text(overrides.read_text() + f"- '{plant}'\n")
    before = overrides.read_text()
    line = _clean_failure(_main_in_process([f"resume={run_dir}", "trainer.steps=40"], tmp_path,
                                           monkeypatch))
    assert "refused" in line and str(overrides) in line, line
    assert not marker.exists()
    assert overrides.read_text() == before and (run_dir / "metrics.json").is_file()


# --- 2. Resume that cannot lie ----------------------------------------------------------------


def _paste(command: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run a printed ``ebm-train …`` command through the shell, as a user pasting it would."""
    script = Path(ebm_train_command()[0]) if len(ebm_train_command()) == 1 else None
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR", None)
    if script is not None:
        env["PATH"] = f"{script.parent}{os.pathsep}{env['PATH']}"
    line = command + "".join(f" {e}" for e in extra)
    return subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True,
                          timeout=240, env=env)


def _wait_for(path: Path, proc: subprocess.Popen[str], min_step: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        try:
            if torch.load(path, weights_only=True)["step"] >= min_step:
                return
        except Exception:  # not there yet, or being replaced (atomic rename)
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail(f"no checkpoint at {path} within {timeout} s")


def test_the_printed_resume_command_of_an_interrupted_sweep_job_works(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen(
        [*ebm_train_command(), "-m", f"hydra.sweep.dir={sweep}", *LONG, "trainer.steps=120",
         "sampler.step_size=0.003,0.002"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(1)
    deadline = time.monotonic() + 120
    while not list(sweep.glob("0_*/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.2)
    job = next(sweep.glob("0_*"))
    assert "=" in job.name and "," in job.name  # Hydra's override_dirname
    _wait_for(job / "checkpoint.pt", proc, 25)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "Traceback" not in out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    command = lines[0].split("continue with: ", 1)[1]
    pasted = _paste(command, tmp_path)
    assert pasted.returncode == 0, pasted.stdout + pasted.stderr
    assert json.loads((job / "metrics.json").read_text())["steps"] == 120


@pytest.mark.parametrize("name", ["with space, comma=equals é ü ☃"])
def test_any_directory_name_resumes_with_the_printed_command(
    tmp_path: Path, finished_run: Path, name: str
) -> None:
    run_dir = _copy(finished_run, tmp_path / name)
    pasted = _paste(resume.command(run_dir), tmp_path, "trainer.steps=35")
    assert pasted.returncode == 0, pasted.stdout + pasted.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 35


@pytest.mark.slow
def test_a_config_dir_run_resumes_with_its_config_dir(tmp_path: Path) -> None:
    conf = tmp_path / "myconf" / "energy"
    conf.mkdir(parents=True)
    (conf / "wide.yaml").write_text("_target_: ebm_cli.energies.mlp.MLPEnergy\nwidth: 16\n"
                                    "depth: 1\n")
    run_dir = tmp_path / "run"
    made = run_cli(["--config-dir", str(tmp_path / "myconf"), f"hydra.run.dir={run_dir}", *FAST,
                    "energy=wide"], cwd=tmp_path)
    assert made.returncode == 0, made.stdout + made.stderr
    line = _clean_failure(run_cli([f"resume={run_dir}", "trainer.steps=35"], cwd=tmp_path))
    assert "--config-dir" in line and str(tmp_path / "myconf") in line
    command = line.split("continue it with: ", 1)[1]
    pasted = _paste(command, tmp_path, "trainer.steps=35")
    assert pasted.returncode == 0, pasted.stdout + pasted.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 35


@pytest.mark.parametrize(("extra", "named"), [
    (["sampler.step_size=0.5"], "sampler.step_size"),
    (["seed=3"], "seed"),
    (["data=moons"], "data"),
    (["dtype=float64"], "dtype"),
    (["trainer.steps=10"], "below the checkpoint's step"),
])
def test_a_resume_may_extend_a_run_never_change_it(
    tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str],
    named: str,
) -> None:
    run_dir = _copy(finished_run, tmp_path / "done")
    before = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    line = _clean_failure(_main_in_process([f"resume={run_dir}", *extra], tmp_path, monkeypatch))
    assert named in line, line
    after = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before  # refused before Hydra wrote anything


def test_resuming_a_finished_run_with_nothing_to_do_says_so(
    tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = _copy(finished_run, tmp_path / "done")
    events = sorted(p.name for p in run_dir.glob("events.out.tfevents.*"))
    proc = _main_in_process([f"resume={run_dir}"], tmp_path, monkeypatch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "nothing to do" in proc.stdout
    assert sorted(p.name for p in run_dir.glob("events.out.tfevents.*")) == events  # no eval again


def test_a_second_writer_is_refused_and_a_stale_lock_is_taken_over(
    tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = _copy(finished_run, tmp_path / "done")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (run_dir / rundir.LOCK_FILE).write_text(f"{holder.pid} {socket.gethostname()}\n")
        line = _clean_failure(_main_in_process([f"resume={run_dir}", "trainer.steps=35"],
                                               tmp_path, monkeypatch))
        assert "in use by process" in line and str(holder.pid) in line
        fresh = _main_in_process([f"hydra.run.dir={run_dir}", *FAST, "overwrite=true"],
                                 tmp_path, monkeypatch)
        assert "in use by process" in _clean_failure(fresh)
    finally:
        holder.kill()
        holder.wait()
    # The holder is gone: its lock is stale and the resume goes ahead.
    proc = _main_in_process([f"resume={run_dir}", "trainer.steps=35"], tmp_path, monkeypatch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (run_dir / rundir.LOCK_FILE).exists()  # released at the end


def test_a_fresh_run_never_writes_into_a_directory_holding_a_run(
    tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = _copy(finished_run, tmp_path / "done")
    before = {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    line = _clean_failure(_main_in_process([f"hydra.run.dir={run_dir}", *FAST], tmp_path,
                                           monkeypatch))
    assert "already holds a run" in line and "overwrite=true" in line
    assert {p.name: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()} == before
    (run_dir / "notes.txt").write_text("mine")
    proc = _main_in_process([f"hydra.run.dir={run_dir}", *PLAIN, "overwrite=true"], tmp_path,
                            monkeypatch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # the old run's are gone
    assert (run_dir / "notes.txt").read_text() == "mine"  # the user's own file is not


def test_identical_commands_in_the_same_second_get_their_own_directories(
        tmp_path: Path) -> None:
    base = str(tmp_path / "outputs" / "12-00-00")
    first = rundir.claim(base)
    rundir._claimed.clear()  # as another process would
    second = rundir.claim(base)
    assert first != second and Path(first).is_dir() and Path(second).is_dir()
    assert rundir.claim(base) == second  # one claim per process: Hydra resolves keys twice


def test_leftover_temporary_checkpoints_are_removed_at_the_next_start(
    tmp_path: Path, finished_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = _copy(finished_run, tmp_path / "done")
    (run_dir / "checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    proc = _main_in_process([f"resume={run_dir}", "trainer.steps=35"], tmp_path, monkeypatch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not list(run_dir.glob("checkpoint.pt.*.tmp"))


@pytest.mark.slow
def test_sigterm_during_the_final_evaluation_ends_in_one_line_and_resumes(
        tmp_path: Path) -> None:
    """A SLURM time limit sends SIGTERM exactly there: the checkpoint of the last step is kept,
    and the printed command evaluates the finished_run run."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen(
        [*ebm_train_command(), f"hydra.run.dir={run_dir}", *FAST, "trainer.steps=20",
         "checkpoint_every=0", "eval.sampler_steps=100000"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    _wait_for(run_dir / "checkpoint.pt", proc, 20)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    line = _clean_failure(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    assert "evaluation" in line and "continue with: " in line
    assert not (run_dir / "metrics.json").exists()
    # Evaluation settings may differ on resume (they measure the run, they don't change it).
    pasted = _paste(line.split("continue with: ", 1)[1], tmp_path, "eval.sampler_steps=20")
    assert pasted.returncode == 0, pasted.stdout + pasted.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 20


def test_sigterm_during_start_up_is_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.Popen([*ebm_train_command(), f"hydra.run.dir={tmp_path / 'run'}", *FAST],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)
    time.sleep(1.5)  # importing torch and Hydra
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the run finished_run before the signal arrived")
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    _clean_failure(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))


# --- 3. Storage and streams -------------------------------------------------------------------


def test_a_checkpoint_path_that_is_a_directory_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    (run_dir / "checkpoint.pt").mkdir(parents=True)
    line = _clean_failure(_main_in_process([f"hydra.run.dir={run_dir}", *FAST, "overwrite=true"],
                                           tmp_path, monkeypatch))
    assert "checkpoint.pt" in line
    assert not list(run_dir.glob("events.out.tfevents.*"))


def test_a_full_disk_names_enospc_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    real_save, saves = torch.save, []

    def save(obj, f, *args, **kwargs):  # the second checkpoint finds the disk full
        saves.append(1)
        if len(saves) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    proc = _main_in_process([f"hydra.run.dir={run_dir}", *PLAIN], tmp_path, monkeypatch)
    line = _clean_failure(proc)
    assert proc.returncode == 1 and "ENOSPC" in line and str(run_dir / "checkpoint.pt") in line
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 10  # kept
    assert not list(run_dir.glob("checkpoint.pt.*.tmp"))


def test_an_already_full_disk_is_caught_up_front(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    line = _clean_failure(_main_in_process([f"hydra.run.dir={tmp_path / 'run'}", *FAST],
                                           tmp_path, monkeypatch))
    assert "ENOSPC" in line and str(tmp_path / "run") in line


@pytest.mark.parametrize("shell", ["| head -1", pytest.param(">&-", marks=pytest.mark.slow)])
def test_a_closed_or_broken_stdout_does_not_kill_the_run(tmp_path: Path, shell: str) -> None:
    run_dir = tmp_path / "run"
    command = " ".join([*(f"'{a}'" for a in ebm_train_command()), f"'hydra.run.dir={run_dir}'",
                        *PLAIN])
    proc = subprocess.run(["bash", "-c", f"set -o pipefail; {command} {shell}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 30


@pytest.mark.slow
def test_two_identical_commands_started_together_get_two_directories(tmp_path: Path) -> None:
    """The default run directory is claimed atomically (DIR, then DIR.2): two identical runs in
    the same second never share one."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    procs = [subprocess.Popen([*ebm_train_command(), *FAST, "trainer.steps=5"], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, out + err
    runs = sorted(p.parent for p in (tmp_path / "outputs").rglob("metrics.json"))
    assert len(runs) == 2 and runs[0] != runs[1]
    assert not list((tmp_path / "outputs").rglob("multirun"))  # a single run claims no sweep dir


def test_a_checkpointed_chain_state_rebuilds_only_the_packages_state_classes() -> None:
    """state_from_dict builds ChainState, KineticState and TemperingState and nothing else a
    checkpoint names: not code elsewhere, not another NamedTuple of the samplers (one that
    holds a module, say); a user's state is not saved whole (is_package_state)."""
    from typing import NamedTuple

    from ebm_cli.samplers.base import ChainState
    from ebm_cli.samplers.kinetic import KineticState
    from ebm_cli.trainers.buffer import (
        STATE_CLASS,
        is_package_state,
        state_from_dict,
        state_to_dict,
    )

    x = torch.randn(4, 2)
    for state in (ChainState(x, x.sum(1), None), KineticState(x, x.sum(1), None, -x)):
        back = state_from_dict(state_to_dict(state))
        assert type(back) is type(state) and is_package_state(state)
        for a, b in zip(back, state):
            assert (a is None and b is None) or torch.equal(a, b)
    for name in ("ebm_cli.samplers.compiled:FunctionalEnergy", "os:system",
                 "ebm_cli.samplers.base:ChainState.__new__"):
        with pytest.raises(ValueError, match="not one of"):
            state_from_dict({STATE_CLASS: name, "x": x})

    class UserState(NamedTuple):
        x: torch.Tensor

    assert not is_package_state(UserState(x))
    assert not is_package_state(ChainState(x, UserState(x), None))
