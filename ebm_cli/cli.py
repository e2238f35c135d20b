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
import sys
from importlib.resources import files
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from ebm_cli.checkpoint import CheckpointError
from ebm_cli.config_check import GROUPS, ConfigError, check_config
from ebm_cli.hparams import log_hparams
from ebm_cli.report import CONSOLE, Reporter, summary
from ebm_cli.run import NonFiniteError, train
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


ERRORS = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    """One line on stderr, then exit non-zero (no traceback: this is the user's input)."""
    CONSOLE.file.flush()
    ERRORS.print(f"[bold red]error:[/bold red] {message}", soft_wrap=True, highlight=False)
    if code != 130 and HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise JobFailed(message)  # the sweep goes on; ebm_cli.sweep lists this job as failed
    sys.exit(code)


def _options(group: str, config_dirs: list[str]) -> set[str]:
    """The option names of a config group: the package's configs plus any --config-dir."""
    names = {
        Path(f.name).stem
        for f in (files("ebm_cli.configs") / group).iterdir()
        if f.name.endswith(".yaml")
    } if (files("ebm_cli.configs") / group).is_dir() else set()
    for d in config_dirs:
        names |= {p.stem for p in (Path(d) / group).glob("*.yaml")}
    return names


def preflight(argv: list[str]) -> None:
    """Refuse an unknown group option (``sampler=nonexistent``) in one line, before Hydra
    composes (whose own message spans a screen)."""
    config_dirs = [
        argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config-dir", "-cd")
    ] + [a.split("=", 1)[1] for a in argv if a.startswith("--config-dir=")]
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        group = key.lstrip("+~")
        if group not in (*GROUPS, "experiment") or "(" in value or "${" in value:
            continue
        allowed = _options(group, config_dirs)
        for choice in value.split(","):
            if choice and allowed and choice not in allowed:
                _fail(f"{group}={choice} is not an option; choose one of: "
                      f"{', '.join(sorted(allowed))}")


def main() -> None:
    """The ``ebm-train`` console script."""
    preflight(sys.argv[1:])
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
    reporter = Reporter(run_dir, OmegaConf.to_yaml(cfg), plain["trainer"]["steps"],
                        live=CONSOLE.is_terminal and not multirun)
    notes: list[str] = []
    try:
        metrics = train(plain, run_dir, reporter)
    except (ConfigError, CheckpointError, NonFiniteError) as e:
        reporter.close()
        _fail(str(e), 1 if isinstance(e, NonFiniteError) else 2)
    except KeyboardInterrupt:
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
