"""Reading a command line as Hydra will: its flags and overrides (Hydra's own argument parser),
each override parsed by Hydra's grammar, and a grammar error refused in one line that says how to
quote the value."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from typing import NoReturn

from hydra._internal.utils import get_args_parser
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override

from ebm_cli.app.config_check import ConfigError


def config_dirs(argv: list[str]) -> list[str]:
    """The ``--config-dir`` / ``-cd`` values of a command line, in order."""
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--config-dir", "-cd")] + [
        a.split("=", 1)[1] for a in argv if a.startswith("--config-dir=")]


@dataclass
class CommandLine:
    """Hydra's reading of ``ebm-train ARGV``: its overrides and the flags that matter here."""

    overrides: list[str]
    config_name: str = "config"
    dirs: list[str] = field(default_factory=list)
    multirun: bool = False
    shows: bool = False  # --cfg: prints the config, runs nothing


def _refuse(message: str) -> NoReturn:
    raise ConfigError(message)


def _args_parser() -> argparse.ArgumentParser:
    parser = get_args_parser()
    parser.error = _refuse  # type: ignore[method-assign]  # one line, not argparse's usage
    return parser


def parse_command_line(argv: list[str]) -> CommandLine:
    """Split ``argv`` with Hydra's own argument parser (options may sit among the overrides)."""
    args = _args_parser().parse_intermixed_args([a for a in argv if a != "--version"])
    overrides = list(args.overrides)
    multirun = bool(args.multirun) or any(
        re.fullmatch(r"hydra\.mode=['\"]?MULTIRUN['\"]?", o) for o in overrides)
    return CommandLine(overrides, args.config_name or "config",
                       [args.config_dir] if args.config_dir else [], multirun, bool(args.cfg))


def check_order(argv: list[str]) -> None:
    """Hydra reads options (``-m``, ``--cfg job``) only before the overrides."""
    try:
        _args_parser().parse_args(argv)
    except ConfigError as e:
        raise ConfigError(f"{e}: put the options (-m, --cfg, …) before the overrides, e.g. "
                          "ebm-train -m sampler=mh,hmc") from None


# --- one override, as Hydra's grammar reads it ----------------------------------------------------

PARSER = OverridesParser.create()


def _parses(text: str) -> bool:
    try:
        PARSER.parse_overrides([text])
        return True
    except Exception:
        return False


def _shown(text: str) -> str:
    """Text for a one-line message: control characters (a newline) written as escapes."""
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


def _bad_char(text: str) -> str | None:
    """The first character Hydra's grammar refuses unquoted, described; None if none is."""
    for ch in text:
        if not ch.isprintable():
            return f"a control character ({_shown(ch)})"
        if not ch.isascii():
            return f"{ch!r} (not ASCII)"
    return None


def parse_override(arg: str) -> Override:
    """Hydra's parse of one override, or a one-line refusal saying how to quote it."""
    try:
        return PARSER.parse_overrides([arg])[0]
    except Exception:
        pass
    key, sep, value = arg.partition("=")
    if not sep and not arg.startswith("~"):
        raise ConfigError(f"{_shown(arg)!r} is not an override: write key=value (or ~key to "
                          "remove a key)") from None
    if not _parses(f"{key}=x"):
        bad = _bad_char(key)
        raise ConfigError(f"{_shown(key)!r} is not a config key: keys are ASCII names joined "
                          f"by dots (sampler.step_size){f', and it holds {bad}' if bad else ''}"
                          ) from None
    quote = "'" if "'" not in value else '"'
    hydra_form = f"{key}={quote}{value}{quote}"
    shell = (f' (in a shell: "{_shown(hydra_form)}")'
             if not re.search(r'["$`\\!]', hydra_form) else "")
    bad = _bad_char(value)
    why = (f"an unquoted value takes ASCII letters, digits and a few symbols, and it holds {bad}"
           if bad else "it is not in Hydra's override grammar")
    raise ConfigError(f"cannot read the override {_shown(arg)}: {why}; quote the value for "
                      f"Hydra: {_shown(hydra_form)}{shell}") from None


def sweep_not_in_a_run(o: Override) -> ConfigError:
    text = o.input_line or o.get_key_element()
    key = o.get_key_element()
    return ConfigError(
        f"{text} is a sweep (one job per value): add -m to run them, or for a single value "
        f"write a list {key}=[…] or quote it as a string {key}='…'")


# --- the trials of a sweep ------------------------------------------------------------------------
