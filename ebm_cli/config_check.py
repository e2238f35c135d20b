"""Validate the whole composed config before any work starts.

Hydra accepts ``+sampler.new_key=1`` silently, a ``???`` value fails only when first read, and
``sampler.step_size=abc`` arrives as a string. So every group node is checked against the signature
of its ``_target_`` (unknown keys, missing values, types) and the top-level keys against a table.
Each problem is one line naming the key and what is allowed.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

GROUPS = ("data", "energy", "sampler", "trainer")
# Keys of a group node read by the run loop rather than passed to the constructor.
LOOP_KEYS = {"trainer": ("steps", "batch_size")}
# Arguments the run loop supplies at build time.
RUNTIME_KWARGS = {
    "data": (),
    "energy": ("event_shape",),
    "sampler": (),
    "trainer": ("energy_fn", "sampler", "train_data"),
}
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


class ConfigError(Exception):
    """A bad configuration value; the message is one line for the user."""


# torch.compile modes allowed besides true (= "default"). Not reduce-overhead / max-autotune: on
# CUDA they replay CUDA graphs, whose outputs the next call overwrites, while samplers keep the
# last call's energies and gradients in ChainState.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


TOP_LEVEL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "device": (lambda v: v in ("auto", "cpu", "cuda") or str(v).startswith("cuda:"),
               "one of auto, cpu, cuda, cuda:N"),
    "dtype": (lambda v: v in ("float32", "float64"), "one of float32, float64"),
    "threads": (_nonneg_int, "an integer >= 0 (0 = torch's default)"),
    "log_every": (_positive_int, "an integer >= 1"),
    "image_every": (_nonneg_int, "an integer >= 0 (0 = only at the end)"),
    "checkpoint_every": (_nonneg_int, "an integer >= 0 (0 = only at the end)"),
    "compile": (lambda v: isinstance(v, bool) or v in COMPILE_MODES,
                "one of true, false, " + ", ".join(COMPILE_MODES)
                + " (CUDA-graph modes would overwrite the chains' cached energies)"),
}
EVAL_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "n_samples": (_positive_int, "an integer >= 1"),
    "sampler_steps": (_nonneg_int, "an integer >= 0"),
    "warmup": (_nonneg_int, "an integer >= 0"),
    "grid": (lambda v: _positive_int(v) and v >= 16, "an integer >= 16"),
    "mmd_points": (lambda v: _positive_int(v) and v >= 2, "an integer >= 2"),
    "ais_chains": (lambda v: _positive_int(v) and v >= 2, "an integer >= 2"),
    "ais_steps": (_positive_int, "an integer >= 1"),
    "restarts": (lambda v: isinstance(v, bool), "true or false"),
}
OPTIONAL_TOP = ("resume", "experiment")


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _matches(value: Any, hint: Any) -> bool:
    """Does a plain config value fit a type hint? Unknown hints are accepted."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if hint is torch.Tensor:  # a tensor argument takes numbers or (nested) lists from a config
        return isinstance(value, (int, float, list, tuple)) and not isinstance(value, bool)
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0]) for v in value)
        if origin is tuple and args:
            return len(args) == len(value) and all(_matches(v, a) for v, a in zip(value, args))
        return all(_matches(v, args[0]) for v in value) if args else True
    return True


def _signature(target: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    sig = inspect.signature(target)
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: check keys only
        hints = {}
    return dict(sig.parameters), hints


def check_node(node: dict[str, Any], prefix: str, runtime: Sequence[str] = (),
               loop_keys: Sequence[str] = ()) -> None:
    """Check one ``_target_`` node (a plain dict) against its target's signature, recursively."""
    target_path = node.get("_target_")
    if not isinstance(target_path, str):
        raise ConfigError(f"{prefix}._target_ is missing: every {prefix} option names its class")
    try:
        target = get_object(target_path)
    except Exception:
        raise ConfigError(f"{prefix}._target_={target_path!r} cannot be imported") from None
    params, hints = _signature(target)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    allowed = [n for n, p in params.items() if n not in runtime and n != "self"
               and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    for key, value in node.items():
        if key in HYDRA_KEYS or key in loop_keys:
            continue
        full = f"{prefix}.{key}"
        if key not in params and not accepts_any:
            raise ConfigError(
                f"{full} is not a parameter of {target_path}; allowed: {', '.join(allowed)}"
            )
        if isinstance(value, dict) and "_target_" in value:
            check_node(value, full)
            continue
        hint = hints.get(key, inspect.Parameter.empty)
        if not _matches(value, hint):
            raise ConfigError(f"{full}={value!r} must be of type {_type_name(hint)}")
    if node.get("_partial_"):
        return
    for name, p in params.items():
        required = p.default is inspect.Parameter.empty and p.kind not in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        if required and name not in node and name not in runtime and name != "self":
            raise ConfigError(f"{prefix}.{name} is required by {target_path} but not set")


def _find_missing(cfg: DictConfig, prefix: str = "") -> str | None:
    for key in cfg:
        full = f"{prefix}{key}"
        if OmegaConf.is_missing(cfg, key):
            return full
        child = cfg._get_node(key)
        if isinstance(child, DictConfig):
            found = _find_missing(child, full + ".")
            if found:
                return found
    return None


def check_config(cfg: DictConfig) -> dict[str, Any]:
    """Validate the composed config; return it resolved as plain containers."""
    missing = _find_missing(cfg)
    if missing:
        raise ConfigError(f"{missing} is required (it is '???'): set it on the command line")
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        raise ConfigError(f"the config cannot be resolved: {str(e).splitlines()[0]}") from None
    assert isinstance(plain, dict)
    known = set(TOP_LEVEL) | set(GROUPS) | {"eval"} | set(OPTIONAL_TOP)
    for key in plain:
        if key not in known:
            raise ConfigError(f"{key} is not a config key; allowed: {', '.join(sorted(known))}")
    for key, (ok, allowed) in TOP_LEVEL.items():
        if key not in plain:
            raise ConfigError(f"{key} is missing from the config; it must be {allowed}")
        if not ok(plain[key]):
            raise ConfigError(f"{key}={plain[key]!r} is not allowed; it must be {allowed}")
    eval_cfg = plain.get("eval") or {}
    for key in eval_cfg:
        if key not in EVAL_KEYS:
            raise ConfigError(f"eval.{key} is not a config key; allowed: {', '.join(EVAL_KEYS)}")
    for key, (ok, allowed) in EVAL_KEYS.items():
        if key not in eval_cfg or not ok(eval_cfg[key]):
            raise ConfigError(
                f"eval.{key}={eval_cfg.get(key)!r} is not allowed; it must be {allowed}"
            )
    for group in GROUPS:
        node = plain.get(group)
        if not isinstance(node, dict):
            raise ConfigError(f"{group} is not set: choose an option, e.g. {group}=<name>")
        check_node(node, group, RUNTIME_KWARGS[group], LOOP_KEYS.get(group, ()))
    trainer = plain["trainer"]
    for key in LOOP_KEYS["trainer"]:
        if not _positive_int(trainer.get(key)):
            raise ConfigError(
                f"trainer.{key}={trainer.get(key)!r} is not allowed; it must be an integer >= 1"
            )
    _check_compile(plain)
    return plain


def _check_compile(plain: dict[str, Any]) -> None:
    """torch.compile (AOTAutograd) has no double backward: refuse trainers that differentiate
    the loss through ∇ₓE (every score-matching method) instead of failing at the first step."""
    from ebm_cli.trainers.score_matching import ScoreMatchingTrainer

    setting = plain["compile"]
    trainer = get_object(plain["trainer"]["_target_"])
    if setting is not False and inspect.isclass(trainer) and issubclass(
            trainer, ScoreMatchingTrainer):
        shown = "true" if setting is True else setting
        raise ConfigError(
            f"compile={shown} cannot be used with {plain['trainer']['_target_']}: "
            "score matching differentiates through ∇ₓE, a double backward torch.compile does "
            "not support; use compile=false"
        )
