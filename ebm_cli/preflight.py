"""Checks of the command line before Hydra runs: group options, keys, output locations.

Each raises :class:`ConfigError` with one line naming what is wrong and what is allowed; the
command-line application turns it into an ``error:`` line and exit status 2.
"""

from __future__ import annotations

import os
import re
from importlib.resources import files
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from ebm_cli.config_check import GROUPS, ConfigError

VALUE_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
               "--experimental-rerun", "--package", "-p")
INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "--shell-completion", "-sc")


def config_dirs(argv: list[str]) -> list[str]:
    """The ``--config-dir`` / ``-cd`` values of a command line, in order."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config-dir", "-cd")] + [
        a.split("=", 1)[1] for a in argv if a.startswith("--config-dir=")]


def _options(group: str, dirs: list[str]) -> set[str]:
    """The option names of a config group: the package's configs plus any --config-dir."""
    names = {
        Path(f.name).stem
        for f in (files("ebm_cli.configs") / group).iterdir()
        if f.name.endswith(".yaml")
    } if (files("ebm_cli.configs") / group).is_dir() else set()
    for d in dirs:
        names |= {p.stem for p in (Path(d) / group).glob("*.yaml")}
    return names


def check_options(argv: list[str]) -> None:
    """Refuse an unknown group option (``sampler=nonexistent``) in one line, before Hydra
    composes (whose own message spans a screen)."""
    dirs = config_dirs(argv)
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        group = key.lstrip("+~")
        if group not in (*GROUPS, "experiment") or "(" in value or "${" in value:
            continue
        allowed = _options(group, dirs)
        for choice in value.split(","):
            if choice and allowed and choice not in allowed:
                raise ConfigError(f"{group}={choice} is not an option; choose one of: "
                                  f"{', '.join(sorted(allowed))}")


def trial_overrides(argv: list[str]) -> tuple[list[str], str]:
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


def check_keys(argv: list[str]) -> None:
    """Compose the config as Hydra will and refuse a bad override in one line (``sampler.bogus=1``
    gets Hydra's multi-line 'Could not override' otherwise), naming the keys that exist."""
    if any(a in INFO_FLAGS for a in argv):
        return
    overrides, name = trial_overrides(argv)
    dirs = config_dirs(argv)
    if dirs:
        overrides.append(f"hydra.searchpath=[{','.join('file://' + d for d in dirs)}]")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("ebm_cli.configs", version_base="1.3"):
            try:
                compose(name, overrides=overrides)
            except HydraException as e:
                bad = re.match(r"Could not override '([^']+)'", str(e))
                if not bad:
                    raise ConfigError(" ".join(
                        line.strip() for line in str(e).splitlines() if line.strip())) from None
                key = bad.group(1)
                parent = key.rpartition(".")[0]
                rest = [o for o in overrides if o.split("=", 1)[0] != key]
                node = OmegaConf.select(compose(name, overrides=rest), parent) if parent else None
                if parent and not isinstance(node, DictConfig):
                    raise ConfigError(f"{key} is not a config key: {parent} has no keys") from None
                if not parent:
                    node = compose(name, overrides=rest)
                keys = ", ".join(k for k in node if not str(k).startswith("_"))
                raise ConfigError(
                    f"{key} is not a config key; {parent or 'the top level'} has: {keys}"
                ) from None
    finally:
        GlobalHydra.instance().clear()


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
            raise ConfigError(
                f"cannot write the output directory {path}: {e.strerror or e}") from None
