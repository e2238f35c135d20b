"""``ebm-train``: compose the config, validate it, build the parts, run, summarise.

Examples::

    ebm-train                                   # MLE with HMC negatives on two_gaussians
    ebm-train sampler=mh data=two_gaussians
    ebm-train -m sampler=mh,hmc                 # a sweep; one job directory per override set
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.markup import escape

from ebm_cli import checkpoint
from ebm_cli.app import preflight, resume, rundir, usercode
from ebm_cli.app.config_check import ConfigError, check_config
from ebm_cli.app.entry import Signalled, raise_signalled
from ebm_cli.app.sweep import JobFailed
from ebm_cli.checkpoint import CheckpointError
from ebm_cli.evaluation.convergence import convergence_notes
from ebm_cli.reporting.hparams import log_hparams
from ebm_cli.reporting.report import CONSOLE, Reporter, fit_console, summary
from ebm_cli.reporting.streams import SafeStream
from ebm_cli.run import Interrupted, NonFiniteError, train

log = logging.getLogger("ebm_cli")

MAX_DIRNAME = 80


def dirname_from_overrides(overrides: str, prefix: str = "") -> str:
    """A safe directory-name suffix from Hydra's override_dirname: no '/', bounded length."""
    if not overrides:
        return ""
    name = re.sub(r"[^A-Za-z0-9=,._+-]", "_", overrides.replace("/", "_"))
    if len(name) > MAX_DIRNAME:
        digest = hashlib.sha1(overrides.encode()).hexdigest()[:8]
        name = f"{name[: MAX_DIRNAME - 9]}~{digest}"
    return prefix + name


OmegaConf.register_new_resolver("ebm_dirname", dirname_from_overrides, replace=True)


OmegaConf.register_new_resolver("ebm_run_dir", rundir.run_dir_of, replace=True, use_cache=True)

ERRORS = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit non-zero (no traceback: this is the user's input)."""
    CONSOLE.file.flush()
    ERRORS.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True,
                 highlight=False)
    signalled = code in (128 + signal.SIGINT, 128 + signal.SIGTERM)
    if (not signalled and HydraConfig.initialized()
            and HydraConfig.get().mode == RunMode.MULTIRUN):
        raise JobFailed(message)  # the sweep goes on; ebm_cli.app.sweep lists this job as failed
    sys.exit(code)


def legacy(arg: str) -> str:
    """``+experiment=x``, the form from before ``experiment`` was a default group, is
    ``experiment=x``."""
    return arg[1:] if arg.startswith("+experiment=") else arg


def _literal_run_dir(argv: list[str]) -> Path | None:
    """The ``hydra.run.dir=`` of a single run when it is a plain path (no interpolation)."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.run.dir=")]
    if not given or "${" in given[-1] or any(a in ("-m", "--multirun") for a in argv):
        return None
    return Path(given[-1].strip("'\""))


def _prepare_fresh(argv: list[str]) -> None:
    """A fresh run never writes into a directory that holds a run, unless ``overwrite=true``
    (then the earlier run's own files are removed first); the output location must take bytes."""
    if any(a in ("--help", "-h", "--cfg", "-c", "--info", "--hydra-help") for a in argv):
        return
    target = _literal_run_dir(argv)
    if target is not None:
        rundir.mark_new(target)  # a refused start removes it again if this run makes it
    if target is not None and rundir.holds_a_run(target):
        if "overwrite=true" not in argv:
            raise ConfigError(
                f"{target} already holds a run; choose another hydra.run.dir, continue it with "
                f"{resume.command(target, preflight.config_dirs(argv))}, or add overwrite=true")
        rundir.lock(target)
        rundir.clear_run(target)
    outputs = [a.split("=", 1)[1] for a in argv
               if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    for location in outputs or ["outputs"]:
        rundir.probe(Path(location.split("${", 1)[0] or "."))


def main() -> None:
    """The ``ebm-train`` console script."""
    for fd, stream in ((1, sys.stdout), (2, sys.stderr)):
        if stream is None:  # started with the descriptor closed (`>&-`): hold it
            null = os.open(os.devnull, os.O_WRONLY)  # with /dev/null, or the next file opened
            if null != fd:  # would become "stdout"
                os.dup2(null, fd)
                os.close(null)
    if not isinstance(sys.stdout, SafeStream):
        sys.stdout = SafeStream(sys.stdout)
    fit_console()  # piped or logged: lines and tables are not wrapped at 80 columns
    previous = {s: signal.signal(s, raise_signalled) for s in (signal.SIGINT, signal.SIGTERM)}
    argv = [legacy(a) for a in sys.argv[1:]]
    try:
        try:
            resuming = resume.requested(argv) is not None
            argv = resume.prepare(argv)
            preflight.check_options(argv)
            preflight.check_keys(argv)
            if not resuming:
                _prepare_fresh(argv)
        except ConfigError as e:
            _fail(str(e))
        except CheckpointError as e:
            _fail(str(e))
        except resume.NothingToDo as e:
            CONSOLE.print(str(e), soft_wrap=True, highlight=False)
            sys.exit(0)
        sys.argv = [sys.argv[0], *argv]
        rundir.claiming = not any(a in ("-m", "--multirun") for a in argv)
        hydra_main()
    except Signalled as e:
        _fail(f"stopped by {e} {_where_stopped(argv)}", 128 + e.signum)
    finally:
        rundir.unlock_all()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _where_stopped(argv: list[str]) -> str:
    """Where a signal outside any job's own handling stopped ebm-train: before a run, or in a
    sweep (whose parallel jobs keep their last checkpoints: each resumes on its own)."""
    if not any(a in ("-m", "--multirun") for a in argv):
        return "before any run started"
    return ("during the sweep; a job interrupted after a checkpoint continues with "
            "ebm-train resume=<its job directory> (those without metrics.json)")


def _config_dirs() -> list[str]:
    """The ``--config-dir`` paths of this run (Hydra records them as command-line sources)."""
    sources = HydraConfig.get().runtime.config_sources
    return [str(s.path) for s in sources if s.provider == "command-line" and s.schema == "file"]


def _start(run_dir: Path, resuming: bool) -> None:
    """Before any work: take the directory's lock, clear a killed save's temporary files, and
    refuse a checkpoint path that is not a file."""
    rundir.lock(run_dir)
    for path in rundir.remove_leftovers(run_dir):
        log.info("removed %s, left by a save that was interrupted", path.name)
    ckpt = run_dir / "checkpoint.pt"
    if ckpt.exists() and not ckpt.is_file():
        raise ConfigError(f"{ckpt} is not a file (a directory?); checkpoints could not be saved "
                          "there: remove it or choose another hydra.run.dir")
    if not resuming and (ckpt.exists() or (run_dir / "metrics.json").exists()):
        raise ConfigError(f"{run_dir} already holds a run; continue it with "
                          f"{resume.command(run_dir, _config_dirs())} or add overwrite=true")


def job(cfg: DictConfig) -> float | None:
    """One run (a sweep's job); returns test_nll (for sweepers that optimise it)."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        _start(run_dir, bool(cfg.get("resume")))
        plain = check_config(cfg)
    except ConfigError as e:
        _refused(run_dir, multirun)
        _fail(str(e))
    try:
        return _job(cfg, plain, run_dir, multirun, list(hc.overrides.task))
    finally:
        rundir.unlock(run_dir)


def _refused(run_dir: Path, multirun: bool) -> None:
    """A single run refused before its first step leaves no directory behind: the one this
    process made is removed (never one that existed before: a resumed run, an overwrite target;
    a sweep's job directory stays, it lists the failure)."""
    if not multirun and rundir.discard_new(run_dir):
        log.debug("removed %s, made for the refused run", run_dir)


def _choices() -> dict[str, str | None]:
    """The chosen option of each config group of this run (Hydra's runtime choices)."""
    return {k: v for k, v in HydraConfig.get().runtime.choices.items()
            if not k.startswith("hydra/")}


def _job(cfg: DictConfig, plain: dict[str, Any], run_dir: Path, multirun: bool,
         overrides: list[str]) -> float | None:
    continue_with = resume.command(run_dir, _config_dirs())
    resume_state = None
    if plain.get("resume"):
        try:
            resume_state = checkpoint.load(run_dir / "checkpoint.pt")
        except CheckpointError as e:
            _fail(str(e))
        log.info("resuming %s from step %d", run_dir, resume_state["step"])
    reporter = Reporter(run_dir, OmegaConf.to_yaml(cfg), plain["trainer"]["steps"],
                        live=CONSOLE.is_terminal and not multirun,
                        start_step=int(resume_state["step"]) if resume_state else 0)
    notes: list[str] = []
    stored = OmegaConf.to_container(cfg, resolve=False)
    try:
        metrics = train(plain, run_dir, reporter, resume_state, stored, _choices())
    except (ConfigError, CheckpointError, NonFiniteError) as e:
        reporter.close()
        if reporter.phase == "start-up" and resume_state is None:
            _refused(run_dir, multirun)
        code = 1 if isinstance(e, (NonFiniteError, checkpoint.CheckpointWriteError)) else 2
        _fail(str(e), code)
    except Interrupted as e:
        reporter.close()
        _fail(f"{e}: checkpoint saved; continue with: {continue_with}", 128 + e.signum)
    except KeyboardInterrupt as e:  # outside the training loop (start-up, evaluation)
        reporter.close()
        signum = e.signum if isinstance(e, Signalled) else signal.SIGINT
        name = signal.Signals(signum).name
        if (run_dir / "checkpoint.pt").is_file():
            _fail(f"stopped by {name} during {reporter.phase}; the checkpoint is saved; "
                  f"continue with: {continue_with}", 128 + signum)
        _fail(f"stopped by {name} during {reporter.phase}, before a checkpoint was saved; "
              f"what was written so far is in {run_dir}", 128 + signum)
    except usercode.UserCodeError as e:
        reporter.close()
        _fail(str(e), 1)
    except OSError as e:
        if e.errno not in STORAGE_ERRORS:
            _blame_user_code(e, plain)
            raise
        reporter.close()
        _fail(f"cannot write {e.filename or run_dir}: {rundir.describe(e)}", 1)
    except Exception as e:  # a bug: in the user's own class (one line), else ours (traceback)
        _blame_user_code(e, plain)
        raise
    log_hparams(reporter.writer, plain, overrides, metrics, _choices())  # HParams dashboard
    reporter.close()
    temperature = metrics.get("sampler_temperature", 1.0)
    if abs(temperature - 1.0) > 1e-9:
        notes.append(
            f"the sampler draws from exp(−E/T) with T = σ²/(2η) = {temperature:.4g}, not from "
            "exp(−E): a likelihood read from this model is not that of the model that was sampled"
        )
    notes.extend(convergence_notes(metrics))  # converged or not, and which diagnostic says so
    summary(metrics, run_dir, notes)
    return metrics.get("test_nll")


def _blame_user_code(e: BaseException, plain: dict[str, Any]) -> None:
    """If the user's own class raised ``e``, stop with one line naming it (usercode.py)."""
    where = usercode.blame(e, usercode.user_modules(plain))
    if where and not usercode.show_tracebacks():
        _fail(str(usercode.UserCodeError(where, e)), 1)


# Storage failures (full disk, quota, read-only, I/O): one line naming the file, exit status 1.
STORAGE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EFBIG)


# Decorated here, not with @: launchers that pickle the task (joblib, submitit) then send `job` by
# reference instead of by value with its module globals (the rich consoles hold locks).
hydra_main = hydra.main(version_base="1.3", config_path="pkg://ebm_cli.configs",
                        config_name="config")(job)


if __name__ == "__main__":
    main()
