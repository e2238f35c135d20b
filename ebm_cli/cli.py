"""``ebm-train``: compose the config, validate it, build the parts, run, summarise.

Examples::

    ebm-train                                   # MLE with HMC negatives on two_gaussians
    ebm-train sampler=mh data=two_gaussians
    ebm-train -m sampler=mh,hmc                 # a sweep; one job directory per override set
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shlex
import sys
from importlib.resources import files
from pathlib import Path

import hydra
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from ebm_cli import checkpoint
from ebm_cli.checkpoint import CheckpointError
from ebm_cli.config_check import GROUPS, ConfigError, check_config
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


VALUE_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
               "--experimental-rerun", "--package", "-p")


def _overrides(argv: list[str]) -> tuple[list[str], str]:
    """The command line's overrides (each sweep reduced to its first value; Optuna's
    ``interval(…)`` dropped) and the config name, for a trial composition."""
    parser = OverridesParser.create()
    overrides, name, skip = [], "config", False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in VALUE_FLAGS:
            skip = True
            if arg in ("--config-name", "-cn") and i + 1 < len(argv):
                name = argv[i + 1]
            continue
        if arg.startswith("--config-name="):
            name = arg.split("=", 1)[1]
        if arg.startswith("-"):
            continue
        try:
            override = parser.parse_overrides([arg])[0]
            if override.is_sweep_override():
                first = next(iter(override.sweep_string_iterator()))
                arg = f"{override.get_key_element()}={first}"
        except Exception:  # unparsable here: Hydra itself reports it
            continue
        overrides.append(arg)
    return overrides, name


def compose_check(argv: list[str]) -> None:
    """Compose the config as Hydra will and refuse a bad override in one line (``sampler.bogus=1``
    gets Hydra's multi-line 'Could not override' otherwise), naming the keys that exist."""
    if any(a in ("--help", "-h", "--hydra-help", "--info", "--shell-completion", "-sc")
           for a in argv):
        return
    overrides, name = _overrides(argv)
    config_dirs = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config-dir", "-cd")]
    if config_dirs:
        overrides.append(f"hydra.searchpath=[{','.join('file://' + d for d in config_dirs)}]")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("ebm_cli.configs", version_base="1.3"):
            try:
                compose(name, overrides=overrides)
            except HydraException as e:
                bad = re.match(r"Could not override '([^']+)'", str(e))
                if not bad:
                    _fail(" ".join(line.strip() for line in str(e).splitlines() if line.strip()))
                key = bad.group(1)
                parent = key.rpartition(".")[0]
                rest = [o for o in overrides if o.split("=", 1)[0] != key]
                node = OmegaConf.select(compose(name, overrides=rest), parent) if parent else None
                if parent and not isinstance(node, DictConfig):
                    _fail(f"{key} is not a config key: {parent} has no keys")
                if not parent:
                    node = compose(name, overrides=rest)
                keys = ", ".join(k for k in node if not str(k).startswith("_"))
                _fail(f"{key} is not a config key; {parent or 'the top level'} has: {keys}")
    finally:
        GlobalHydra.instance().clear()


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


def check_output_dir(argv: list[str]) -> None:
    """Refuse an output location that cannot be written, before Hydra tries (with a traceback)."""
    given = [a.split("=", 1)[1] for a in argv
             if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
    for target in given or ["outputs"]:
        path = Path(target.split("${", 1)[0] or ".")  # the literal part before interpolations
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".ebm-write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
        except OSError as e:
            _fail(f"cannot write the output directory {path}: {e.strerror or e}")


def main() -> None:
    """The ``ebm-train`` console script."""
    argv = resume_argv(sys.argv[1:])
    preflight(argv)
    compose_check(argv)
    if not any(a in ("--help", "-h", "--cfg", "-c", "--info", "--hydra-help") for a in argv):
        check_output_dir(argv)
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
