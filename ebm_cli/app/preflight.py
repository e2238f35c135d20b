"""Checks of the command line before Hydra runs: its grammar, group options, keys, values, and
every trial of a sweep.

Each raises :class:`ConfigError` with one line naming what is wrong and what is allowed; the
command-line application turns it into an ``error:`` line and exit status 2.

:func:`check_keys` composes the config as Hydra will and runs :func:`check_config` on it — for a
sweep on every trial that can differ: the first value of every swept key, then each further value
of each swept key with the others at their first value (O(sum of the values) checks, not their
product). Group values (``sampler=mh,hmc``) are composed; plain values are set on a copy of the
first trial's config, as Hydra's override does. An Optuna search space (``interval(…)``, ``tag(log,
…)``, ``choice(…)``, on the command line or in ``hydra.sweeper.params``) is built with the
sweeper's own code first, then each bound of an interval and each choice is checked the same way.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.types import Glob, IntervalSweep, Override
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict

from ebm_cli.app.commandline import (
    PARSER,
    CommandLine,
    check_order,
    config_dirs,
    parse_command_line,
    parse_override,
    sweep_not_in_a_run,
)
from ebm_cli.app.config_check import GROUPS, ConfigError, check_config
from ebm_cli.app.sweep import OPTUNA_SWEEPER

INFO_FLAGS = ("--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc",
              "--version", "--experimental-rerun")
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# Launchers whose jobs run on this machine: only there do check_config's machine-dependent limits
# (threads, memory) hold, so a sweep sent elsewhere (SLURM) has its values checked by each job.
LOCAL_LAUNCHERS = ("hydra._internal.core_plugins.basic_launcher.BasicLauncher",
                   "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
                   "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher")


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
        if group not in (*GROUPS, "experiment", "debug") or "(" in value or "${" in value:
            continue
        allowed = _options(group, dirs)
        for choice in value.split(","):
            if choice and allowed and choice not in allowed:
                raise ConfigError(f"{group}={choice} is not an option; choose one of: "
                                  f"{', '.join(sorted(allowed))}")


# --- the command line, as Hydra reads it ----------------------------------------------------------

@dataclass
class Dimension:
    """One swept key: the values its trials take (the first is the first trial's)."""

    override: Override
    values: list[str]
    origin: str = ""  # an Optuna search space as written (and where, if not the command line)

    @property
    def key(self) -> str:
        return self.override.get_key_element()

    def trial(self, value: str) -> str:
        return f"{self.key}={value}"


def _is_hydra_key(o: Override) -> bool:
    return o.key_or_group == "hydra" or o.key_or_group.startswith(("hydra.", "hydra/"))


def _optuna_dimension(o: Override, where: str) -> Dimension | None:
    """The trial values of an Optuna search space: each choice, or each bound of an interval or
    range (as the sweeper writes a trial: ``key=value``). None for a fixed value."""
    from hydra_plugins.hydra_optuna_sweeper import _impl
    from optuna import distributions as od

    written = o.input_line or o.get_key_element()
    try:
        dist = _impl.create_optuna_distribution_from_override(o)
    except (ValueError, AssertionError, NotImplementedError) as e:
        reason = str(e) or ("Optuna takes choice(…), range(…), interval(…) and "
                            "tag(log, interval(…))")
        raise ConfigError(f"{written}{where} is not a valid Optuna search space for "
                          f"{o.get_key_element()}: {reason}") from None
    ranges = (od.UniformDistribution, od.LogUniformDistribution, od.DiscreteUniformDistribution,
              od.IntUniformDistribution, od.IntLogUniformDistribution)  # optuna 2.x: low, high
    if isinstance(dist, od.CategoricalDistribution):
        return Dimension(o, [str(c) for c in dist.choices], written + where)
    if not isinstance(dist, ranges):
        return None  # a fixed value: part of every trial
    return Dimension(o, list(dict.fromkeys([str(dist.low), str(dist.high)])), written + where)


def _grid_dimension(o: Override, sweeper: str, dirs: list[str]) -> Dimension | None:
    """The values of a basic sweep (a,b · range · glob over a group's options)."""
    value = o.value()
    if isinstance(value, Glob):
        return Dimension(o, value.filter(sorted(_options(o.key_or_group, dirs))))
    if isinstance(value, IntervalSweep):
        if sweeper == BASIC_SWEEPER:
            raise ConfigError(
                f"{o.input_line}: interval(…) is a search range for Optuna; the basic sweeper "
                "runs lists (a,b) and range(…): add hydra/sweeper=optuna_mle, or list values")
        return None  # another sweeper's own sweep: left to it
    try:
        return Dimension(o, list(o.sweep_string_iterator()))
    except HydraException:
        return None


@dataclass
class Plan:
    """A sweep's overrides in command-line order: fixed ones (text) and swept dimensions."""

    entries: list[str | Dimension]

    @property
    def dims(self) -> list[Dimension]:
        return [e for e in self.entries if isinstance(e, Dimension)]

    def trial(self, dim: Dimension | None = None, value: str = "") -> list[str]:
        """The overrides of the trial with ``dim`` at ``value``, every other at its first."""
        return [e if isinstance(e, str) else e.trial(value if e is dim else e.values[0])
                for e in self.entries]


def plan_trials(line: CommandLine, parsed: list[Override], hydra: DictConfig | None) -> Plan:
    """The trials of ``line``: the command line's sweeps and the sweeper's configured
    ``params`` (the command line's own value of a key wins, as in Hydra's sweepers)."""
    sweeper = str(OmegaConf.select(hydra, "sweeper._target_", default="")) if hydra else ""
    params = (OmegaConf.select(hydra, "sweeper.params", default=None)
              if hydra and line.multirun else None)
    given = {o.get_key_element() for o in parsed}
    extra = []
    for k, v in (params or {}).items():
        o = parse_override(f"{k}={v}")
        if o.get_key_element() not in given:
            extra.append((o, " (hydra.sweeper.params)"))
    entries: list[str | Dimension] = []
    for o, where in [*((o, "") for o in parsed), *extra]:
        text = o.input_line or ""
        if not o.is_sweep_override() or not line.multirun or _is_hydra_key(o):
            entries.append(text)
            continue
        dim = (_optuna_dimension(o, where) if sweeper == OPTUNA_SWEEPER
               else _grid_dimension(o, sweeper, line.dirs))
        if dim is None:
            continue  # another sweeper's own kind of sweep: left to it
        if not dim.values:
            raise ConfigError(f"{text}: the sweep has no values")
        entries.append(dim)
    return Plan(entries)


def trial_overrides(argv: list[str]) -> tuple[list[str], str]:
    """The command line's overrides (each sweep reduced to its first value; Optuna's
    ``interval(…)`` dropped) and the config name, for a trial composition."""
    try:
        line = parse_command_line(argv)
    except ConfigError:  # options Hydra refuses (check_keys says so): the plain words
        line = CommandLine([a for a in argv if not a.startswith("-")])
    overrides = []
    for arg in line.overrides:
        try:
            o = PARSER.parse_overrides([arg])[0]
        except Exception:  # unparsable: check_keys refuses it
            continue
        if o.is_sweep_override():
            try:
                arg = f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"
            except HydraException:
                continue
        overrides.append(arg)
    return overrides, line.config_name


# --- composing and checking -----------------------------------------------------------------------

def _hydra_error(e: HydraException) -> ConfigError:
    """Hydra's own composition error in one line (without its config search path)."""
    text = str(e).split("Config search path:", 1)[0]
    line = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if "hydra/sweeper/optuna" in line:
        line += " (the Optuna sweeper is an optional extra: pip install \".[sweep]\")"
    return ConfigError(line)


def _has_key(cfg: DictConfig, key: str) -> bool:
    """Does dotted ``key`` exist in ``cfg`` (a ``???`` value counts)?"""
    node: object = cfg
    for part in key.split("."):
        if not isinstance(node, DictConfig) or part not in node.keys():
            return False
        node = node._get_node(part)
    return True


def _not_a_key(cfg: DictConfig, key: str) -> ConfigError:
    """``key`` does not exist: name the nearest node that does and its keys."""
    parent, node = key, None
    while "." in parent and not isinstance(node, DictConfig):
        parent = parent.rpartition(".")[0]
        node = OmegaConf.select(cfg, parent) if _has_key(cfg, parent) else None
    if not isinstance(node, DictConfig):
        parent, node = "", cfg
    keys = ", ".join(str(k) for k in node.keys() if not str(k).startswith("_") and k != "hydra")
    return ConfigError(f"{key} is not a config key; {parent or 'the top level'} has: {keys}")


def _compose(name: str, overrides: list[str], dirs: list[str]) -> DictConfig:
    """Hydra's composition with its hydra node (GlobalHydra initialised by the caller), or a
    one-line refusal. When Hydra refuses, every value override's key is looked up in the config
    composed from the group choices alone, so a key that does not exist is named with the keys
    that do (without reading Hydra's error text); any other refusal is Hydra's, in one line."""
    search = [f"hydra.searchpath=[{','.join('file://' + d for d in dirs)}]"] if dirs else []
    try:
        return compose(name, overrides=overrides + search, return_hydra_config=True)
    except HydraException as e:
        error = e
    parsed = [PARSER.parse_overrides([o])[0] for o in overrides]
    structural = [o for o, p in zip(overrides, parsed)
                  if _is_group(p) or p.is_add() or p.is_delete()]
    try:
        base = compose(name, overrides=structural + search, return_hydra_config=True)
    except HydraException as e:
        raise _hydra_error(e) from None
    for o, p in zip(overrides, parsed):
        if o not in structural and not _has_key(base, p.key_or_group):
            raise _not_a_key(base, p.key_or_group)
    raise _hydra_error(error)


def _job_part(cfg: DictConfig) -> DictConfig:
    job = copy.deepcopy(cfg)
    with open_dict(job):
        job.pop("hydra", None)
    return job


def _check_values(job: DictConfig) -> None:
    """check_config on a composed job config; one that reads Hydra's runtime (``${hydra:…}``)
    resolves only inside a job, so only its job checks that."""
    try:
        check_config(job)
    except ConfigError as e:
        if str(e).startswith("the config cannot be resolved") and "${hydra" in OmegaConf.to_yaml(
                job):
            return
        raise


def _is_group(o: Override) -> bool:
    """A config group override (``sampler=mh``, ``hydra/launcher=joblib``), not a value."""
    return ("/" in o.key_or_group or o.package is not None
            or (files("ebm_cli.configs") / o.key_or_group).is_dir())


def _names(text: str, key: str) -> bool:
    """Does a message name ``key`` (as ``key=…`` or as the key it is about)?"""
    return f"{key}=" in text or text.startswith(f"{key} ")


def _explain(error: ConfigError, trial: list[tuple[Dimension, str]]) -> ConfigError:
    """The error of one trial, with the swept values it came from where it does not say."""
    text = str(error)
    named = [d for d, _ in trial if _names(text, d.override.key_or_group)]
    for d in named:
        if d.origin:
            hint = ("; interval(…) draws floats, range(…) integers"
                    if "interval(" in d.origin and "type int" in text else "")
            return ConfigError(f"{text} (a trial of the Optuna search space {d.origin}{hint})")
    if named:
        return error
    groups = [d.trial(v) for d, v in trial if _is_group(d.override)]
    return ConfigError(f"{text} (in the jobs with {', '.join(groups)})") if groups else error


def _check_trial(name: str, line: CommandLine, first: DictConfig, plan: Plan, dim: Dimension,
                 value: str, values: bool) -> None:
    """Check the trial with ``dim`` at ``value`` and every other dimension at its first: a group
    value (or a list, a deletion) is composed; a plain value is set on the first trial's config,
    as Hydra applies an override. ``values``: run check_config too."""
    o = parse_override(dim.trial(value))
    try:
        if (_is_group(o) or o.key_or_group in first.hydra.runtime.choices or o.is_delete()
                or isinstance(o.value(), (dict, list))):
            job = _job_part(_compose(name, plan.trial(dim, value), line.dirs))
        elif values:
            job = _job_part(first)
            OmegaConf.update(job, o.key_or_group, o.value(), merge=True, force_add=True)
        else:
            return
        if values:
            _check_values(job)
    except ConfigError as e:
        raise _explain(e, [(dim, value)]) from None


def check_keys(argv: list[str]) -> None:
    """Compose the config as Hydra will and refuse a bad command line in one line — an override
    Hydra's grammar cannot read, a key that does not exist (looked up in the config, not read off
    Hydra's multi-line 'Could not override'), a value check_config refuses, options after the
    overrides — before Hydra starts; for a sweep, in every trial that can differ (module
    docstring), before its first job."""
    if any(a in INFO_FLAGS or a.startswith(("--info=", "--experimental-rerun=")) for a in argv):
        return
    line = parse_command_line(argv)
    parsed = [parse_override(a) for a in line.overrides]
    for o in parsed:
        if o.is_sweep_override() and not line.multirun:
            raise sweep_not_in_a_run(o)
        if o.is_sweep_override() and line.multirun and _is_hydra_key(o):
            raise ConfigError(f"{o.input_line}: Hydra's own settings are not swept; give one "
                              "value")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("ebm_cli.configs", version_base="1.3"):
            overrides, name = trial_overrides(argv)
            try:
                first = _compose(name, overrides, line.dirs)
            except ConfigError as e:  # before the sweeper is known: the command line's sweeps
                grid = [d for o in parsed if o.is_sweep_override() and line.multirun
                        and (d := _grid_dimension(o, "", line.dirs))]
                raise _explain(e, [(d, d.values[0]) for d in grid if d.values]) from None
            if not line.shows:
                _check_trials(name, line, parsed, overrides, first)
    finally:
        GlobalHydra.instance().clear()
    check_order(argv)


def _check_trials(name: str, line: CommandLine, parsed: list[Override], overrides: list[str],
                  first: DictConfig) -> None:
    plan = plan_trials(line, parsed, first.hydra)
    firsts = [(d, d.values[0]) for d in plan.dims]
    try:
        if plan.trial() != overrides:  # the sweeper's params, an Optuna interval's lower bound
            first = _compose(name, plan.trial(), line.dirs)
        launcher = str(OmegaConf.select(first, "hydra.launcher._target_", default=""))
        values = not line.multirun or launcher in LOCAL_LAUNCHERS  # elsewhere: each job checks
        if values:
            _check_values(_job_part(first))
    except ConfigError as e:
        raise _explain(e, firsts) from None
    for dim in plan.dims:
        for value in dim.values[1:]:
            _check_trial(name, line, first, plan, dim, value, values)
