"""``resume=DIR``: continue a run exactly as it was, reading its directory as untrusted data.

Before Hydra runs (so a refused resume touches nothing in DIR):

1. DIR's lock is taken: one writer per run directory.
2. ``DIR/.hydra/overrides.yaml`` is read as data: only plain ``key=value`` overrides of config
   keys, with scalar or list-of-scalar values, are accepted — no dict values (a nested
   ``_target_`` would run code when instantiated), no ``hydra.*`` or ``_target_``-like keys, no
   interpolations, no sweeps.
3. The config composed from them (plus the user's further overrides) is compared with the
   config the checkpoint stores: only ``trainer.steps`` (not below the checkpoint's step) and the
   logging / checkpoint cadence may differ. Anything else is another run.

The printed resume command (``command(run_dir)``) quotes the path for the shell, and the path
is handed to Hydra quoted, so names with ``,``, ``=``, spaces or non-ASCII resume as they are.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from ebm_cli import checkpoint
from ebm_cli.app import rundir
from ebm_cli.app.config_check import ConfigError

# What a resume may change: it extends a run, it never changes what the run was.
# How the run executes (threads, device, compile) may change too, and evaluation settings
# (``eval.*``): they say how the result is computed and measured, not what was trained.
ALLOWED = ("trainer.steps", "log_every", "image_every", "checkpoint_every", "threads", "device",
           "compile")
ALLOWED_PREFIXES = ("eval.",)
# Config keys never compared (how the run is found, not what it is).
IGNORED = ("resume", "overwrite")
# Keys added after runs were made, with the value that run had: a stored config without one
# (a checkpoint from before the key) compares as that value.
ADDED_LATER = {"ema": None}
HYDRA_NODE_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
FLAGS_WITH_VALUE = ("--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp")


class NothingToDo(Exception):
    """The run is finished at the requested step; the message says so."""


def hydra_quote(text: str) -> str:
    """``text`` as one quoted Hydra override value: quotes and the backslashes before them
    escaped, interpolations kept literal."""
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return "'" + text.replace("${", "\\${") + "'"


def command(run_dir: Path, config_dirs: list[str] | tuple[str, ...] = ()) -> str:
    """The shell command that continues ``run_dir`` (printed on interrupts and failures)."""
    flags = "".join(f" --config-dir {shlex.quote(d)}" for d in config_dirs)
    return f"ebm-train{flags} resume={shlex.quote(str(run_dir))}"


def requested(argv: list[str]) -> str | None:
    """The ``resume=`` value of a command line (the last one), or None."""
    given = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    if not given or given[-1] in ("null", ""):
        return None
    value = given[-1]
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"" and not Path(
            value).exists():
        value = value[1:-1]  # resume='DIR' written in Hydra's quoting
    return value


def _stored_overrides(run_dir: Path) -> list[str]:
    """DIR's own overrides, each checked to be plain data (see the module docstring)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        stored = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:
        raise ConfigError(f"resume={run_dir}: {path} cannot be read as YAML") from None
    if not isinstance(stored, list) or not all(isinstance(o, str) for o in stored):
        raise ConfigError(f"resume={run_dir}: {path} is not a list of overrides")
    parser = OverridesParser.create()
    kept = []
    for text in stored:
        try:
            override = parser.parse_overrides([text])[0]
        except Exception:
            raise ConfigError(f"resume={run_dir}: {path} holds an override that does not "
                              f"parse: {text[:80]!r}") from None
        key = override.key_or_group
        if key == "resume":
            continue
        if text.startswith("+experiment="):  # recorded before experiment was a default group
            text = text[1:]
        value = override.value()
        problem = None
        if key.startswith(("hydra.", "hydra/")) or key == "hydra":
            problem = "a Hydra setting"
        elif any(part in HYDRA_NODE_KEYS or part.startswith("_")
                 for part in re.split(r"[./]", key)):
            problem = "a key that makes Hydra build or call something"
        elif override.is_sweep_override():
            problem = "a sweep"
        elif not _plain_value(value):
            problem = "a value that is not a number, string, boolean, null or list of them"
        if problem:
            raise ConfigError(
                f"resume={run_dir}: {path} holds {problem} ({text[:80]!r}); a run directory may "
                "only hold plain key=value overrides: refused"
            )
        kept.append(text)
    return kept


def _plain_value(value: Any) -> bool:
    if isinstance(value, list):
        return all(_plain_value(v) and not isinstance(v, list) for v in value)
    if isinstance(value, str):
        return "${" not in value
    return value is None or isinstance(value, (bool, int, float))


def _split(argv: list[str]) -> tuple[list[str], list[str]]:
    """Flags (with their values) and overrides of a command line, ``resume=`` dropped."""
    flags, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in FLAGS_WITH_VALUE and i + 1 < len(argv):
            flags += [arg, argv[i + 1]]
            i += 2
            continue
        if arg.startswith("-"):
            flags.append(arg)
        elif not arg.startswith("resume="):
            overrides.append(arg)
        i += 1
    return flags, overrides


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def changed_keys(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The config keys (dotted) whose unresolved values differ, except the ALLOWED ones."""
    a, b = _flat(stored), _flat(current)
    skip = (*ALLOWED, *IGNORED)
    return sorted(k for k in set(a) | set(b)
                  if a.get(k, "<unset>") != b.get(k, "<unset>")
                  and k not in skip and not k.startswith(("hydra", *ALLOWED_PREFIXES)))


def _compose(overrides: list[str], flags: list[str]) -> Any:
    dirs = [flags[i + 1] for i, f in enumerate(flags[:-1]) if f in ("--config-dir", "-cd")]
    if dirs:
        overrides = [*overrides, f"hydra.searchpath=[{','.join('file://' + d for d in dirs)}]"]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("ebm_cli.configs", version_base="1.3"):
            cfg = compose("config", overrides=overrides)
    except Exception as e:
        raise ConfigError(f"resume: the run's overrides no longer compose "
                          f"({str(e).splitlines()[0][:160]})") from None
    finally:
        GlobalHydra.instance().clear()
    return cfg


def _recorded_config_dirs(run_dir: Path) -> list[str]:
    """The ``--config-dir`` paths the run was made with (Hydra records its config sources)."""
    hydra_yaml = run_dir / ".hydra" / "hydra.yaml"
    try:
        sources = OmegaConf.select(OmegaConf.load(hydra_yaml), "hydra.runtime.config_sources",
                                   default=[]) or []
    except Exception:
        return []
    if OmegaConf.is_config(sources):
        sources = OmegaConf.to_container(sources)
    return [str(s["path"]) for s in sources if isinstance(s, dict)
            and s.get("provider") == "command-line" and s.get("schema") == "file"]


def prepare(argv: list[str]) -> list[str]:
    """The command line Hydra runs for ``resume=DIR`` (see the module docstring); raises
    ConfigError to refuse, NothingToDo when the run is already finished."""
    value = requested(argv)
    if value is None:
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        raise ConfigError("resume= continues one run; it cannot be combined with --multirun")
    run_dir = Path(value).expanduser().resolve()
    if not (run_dir / ".hydra" / "overrides.yaml").is_file():
        raise ConfigError(f"resume={run_dir}: not an ebm-train run directory "
                          "(no .hydra/overrides.yaml)")
    ckpt = run_dir / "checkpoint.pt"
    if not ckpt.is_file():
        raise ConfigError(f"resume={run_dir}: the run has no checkpoint.pt to continue from")
    flags, others = _split(argv)
    recorded = _recorded_config_dirs(run_dir)
    given = [flags[i + 1] for i, f in enumerate(flags[:-1]) if f in ("--config-dir", "-cd")]
    missing = [d for d in recorded if Path(d).resolve() not in {Path(g).resolve() for g in given}]
    if missing:
        raise ConfigError(f"resume={run_dir}: the run was made with --config-dir "
                          f"{' '.join(missing)}; continue it with: {command(run_dir, recorded)}")
    rundir.lock(run_dir)
    stored = _stored_overrides(run_dir)
    state = checkpoint.load(ckpt)
    current = _compose([*stored, *others], flags)
    plain = OmegaConf.to_container(current, resolve=False)
    assert isinstance(plain, dict)
    plain.pop("hydra", None)
    before = state.get("config")
    if not isinstance(before, dict):  # a checkpoint from before configs were stored
        before = OmegaConf.to_container(_compose(stored, flags), resolve=False)
        assert isinstance(before, dict)
        before.pop("hydra", None)
    changed = changed_keys({**ADDED_LATER, **before}, plain)
    if changed:
        raise ConfigError(
            f"resume={run_dir}: {', '.join(changed[:6])}{' …' if len(changed) > 6 else ''} "
            f"differ from the run's own config; a resume may only change "
            f"{', '.join(ALLOWED)} and eval.* — start a new run to change anything else"
        )
    steps = OmegaConf.select(current, "trainer.steps")
    done = int(state.get("step", 0))
    if isinstance(steps, int) and steps < done:
        raise ConfigError(f"resume={run_dir}: trainer.steps={steps} is below the checkpoint's "
                          f"step {done}; a resume can only extend a run")
    if steps == done and (run_dir / "metrics.json").is_file():
        raise NothingToDo(f"{run_dir} is finished at step {done} (metrics.json is there); "
                          f"nothing to do. To train longer: {command(run_dir, recorded)} "
                          f"trainer.steps=<more than {done}>")
    return [*flags, *stored, *others, f"resume={hydra_quote(str(run_dir))}"]
