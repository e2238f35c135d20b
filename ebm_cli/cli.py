"""``ebm-train``: compose the config, validate it, build the parts, run, summarise.

Examples::

    ebm-train                                   # MLE with HMC negatives on two_gaussians
    ebm-train sampler=mh data=two_gaussians
    ebm-train -m sampler=mh,hmc                 # a sweep; one job directory per override set
"""

from __future__ import annotations

import hashlib
import logging
import re
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from ebm_cli import checkpoint, preflight
from ebm_cli.checkpoint import CheckpointError
from ebm_cli.config_check import ConfigError, check_config
from ebm_cli.hparams import log_hparams
from ebm_cli.report import CONSOLE, Reporter, summary
from ebm_cli.run import Interrupted, NonFiniteError, train
from ebm_cli.sweep import JobFailed

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
OmegaConf.register_new_resolver("ebm_or", lambda a, b: b if a is None else a, replace=True)


ERRORS = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit non-zero (no traceback: this is the user's input)."""
    CONSOLE.file.flush()
    ERRORS.print(f"[bold red]error:[/bold red] {message}", soft_wrap=True, highlight=False)
    if code != 130 and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise JobFailed(message)  # the sweep goes on; ebm_cli.sweep lists this job as failed
    sys.exit(code)


def resume_argv(argv: list[str]) -> list[str]:
    """``resume=DIR``: DIR's own overrides, then the user's others (e.g. a larger
    ``trainer.steps``), then ``resume=DIR`` — so Hydra composes the run's config again and the
    job continues in DIR (configs/hydra/output/ebm.yaml) from its checkpoint."""
    given = [a for a in argv if a.startswith("resume=")]
    if not given or given[-1] == "resume=null":
        return argv
    run_dir = Path(given[-1].split("=", 1)[1]).expanduser().resolve()
    if any(a in ("-m", "--multirun") for a in argv):
        _fail("resume= continues one run; it cannot be combined with --multirun")
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if not overrides.is_file():
        _fail(f"resume={run_dir}: not an ebm-train run directory (no .hydra/overrides.yaml)")
    if not (run_dir / "checkpoint.pt").is_file():
        _fail(f"resume={run_dir}: the run has no checkpoint.pt to continue from")
    try:
        original = [str(o) for o in OmegaConf.load(overrides)]
    except Exception:
        _fail(f"resume={run_dir}: {overrides} cannot be read")
    keep = [o for o in original if not o.startswith("resume=")]
    others = [a for a in argv if not a.startswith("resume=")]
    return keep + others + [f"resume={run_dir}"]


def main() -> None:
    """The ``ebm-train`` console script."""
    argv = resume_argv(sys.argv[1:])
    try:
        preflight.check_options(argv)
        preflight.check_keys(argv)
        if not any(a in ("--help", "-h", "--cfg", "-c", "--info", "--hydra-help") for a in argv):
            preflight.check_output_dir(argv)
    except ConfigError as e:
        _fail(str(e))
    sys.argv = [sys.argv[0], *argv]
    hydra_main()


def job(cfg: DictConfig) -> float | None:
    """One run (a sweep's job); returns test_nll (for sweepers that optimise it)."""
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    try:
        plain = check_config(cfg)
    except ConfigError as e:
        _fail(str(e))
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
    try:
        metrics = train(plain, run_dir, reporter, resume_state)
    except (ConfigError, CheckpointError, NonFiniteError) as e:
        reporter.close()
        _fail(str(e), 1 if isinstance(e, NonFiniteError) else 2)
    except Interrupted as e:
        reporter.close()
        _fail(f"{e}: checkpoint saved; continue with: ebm-train resume={shlex.quote(str(run_dir))}",
              128 + e.signum)
    except KeyboardInterrupt:  # outside the training loop (building, evaluating)
        reporter.close()
        _fail(f"interrupted; what was written so far is in {run_dir}", 130)
    log_hparams(reporter.writer, plain, list(hc.overrides.task), metrics)  # HParams dashboard
    reporter.close()
    temperature = metrics.get("sampler_temperature", 1.0)
    if abs(temperature - 1.0) > 1e-9:
        notes.append(
            f"the sampler draws from exp(−E/T) with T = σ²/(2η) = {temperature:.4g}, not from "
            "exp(−E): a likelihood read from this model is not that of the model that was sampled"
        )
    summary(metrics, run_dir, notes)
    return metrics.get("test_nll")


# Decorated here, not with @: launchers that pickle the task (joblib, submitit) then send `job` by
# reference instead of by value with its module globals (the rich consoles hold locks).
hydra_main = hydra.main(version_base="1.3", config_path="pkg://ebm_cli.configs",
                        config_name="config")(job)


if __name__ == "__main__":
    main()
