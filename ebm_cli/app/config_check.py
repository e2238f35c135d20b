"""Validate the whole composed config before any work starts.

Hydra accepts ``+sampler.new_key=1`` silently, a ``???`` value fails only when first read, and
``sampler.step_size=abc`` arrives as a string. So every group node is checked against the signature
of its ``_target_`` (unknown keys, missing values, types) and the top-level keys against a table.
Each problem is one line naming the key and what is allowed.

Three rules apply to every value checked against a type hint:

- a float-typed value must be finite: NaN always fails (every ``x >= 0`` test passes it), ±inf
  fails unless the parameter's own default is infinite;
- a nested ``{_target_: …}`` node is typed by what it builds: never where a scalar (or a list of
  scalars) is expected, and where a class or Callable is expected its class (a function's return
  annotation; ``_partial_: true`` builds a Callable) must fit; the target is imported only for
  that comparison, never called;
- a value that fails and was written as an interpolation ``${a.b}`` is reported under the key the
  user set (``trainer.steps='abc' (used by trainer.lr_schedule.T_max) …``).

Sizes whose allocation cannot fit in this machine's memory are refused too: those known from the
config alone here, those that need the data's event shape in :func:`check_sizes`.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from ebm_cli import resources
from ebm_cli.evaluation.mmd import BANDWIDTH_FACTORS

GROUPS = ("data", "energy", "sampler", "trainer")
# Keys of a group node read by the run loop rather than passed to the constructor.
LOOP_KEYS = {"trainer": ("steps", "batch_size")}
# Arguments the run loop supplies at build time.
RUNTIME_KWARGS = {
    "data": (),
    "energy": ("event_shape",),
    "sampler": (),
    "trainer": ("energy_fn", "sampler", "train_data", "event_shape", "dtype", "device"),
}
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
SCALAR_TYPES = (bool, int, float, str)


class ConfigError(Exception):
    """A bad configuration value; the message is one line for the user."""


# torch.compile modes allowed besides true (= "default"). Not reduce-overhead / max-autotune: on
# CUDA they replay CUDA graphs, whose outputs the next call overwrites, while samplers keep the
# last call's energies and gradients in ChainState.
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
# run.py seeds torch with ``seed`` and a second stream with ``seed + 1``; both must be in torch's
# range (resources.SEED_MIN..SEED_MAX), so seed itself may reach SEED_MAX − 1.
SEED_TOP = resources.SEED_MAX - 1


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


TOP_LEVEL: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": (lambda v: isinstance(v, int) and not isinstance(v, bool)
             and resources.SEED_MIN <= v <= SEED_TOP,
             "an integer in [-2**63, 2**64 - 2] (torch's 64-bit seed range; seed + 1 seeds a "
             "second stream)"),
    "device": (lambda v: v in ("auto", "cpu", "cuda") or str(v).startswith("cuda:"),
               "one of auto, cpu, cuda, cuda:N"),
    "dtype": (lambda v: v in ("float32", "float64"), "one of float32, float64"),
    "threads": (lambda v: _nonneg_int(v) and v <= resources.max_threads(),
                f"an integer in [0, {resources.max_threads()}] (0 = torch's default; at most "
                f"{resources.THREADS_PER_CORE} × the {resources.cpu_count()} cores here)"),
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
OPTIONAL_TOP = ("resume", "experiment", "overwrite")


# ---------------------------------------------------------------- naming the key the user set

Namer = Callable[[str, Any], str]
_INTERPOLATION = re.compile(r"^\$\{(\.*)([A-Za-z_][\w.]*)\}$")


def _plain_name(full: str, value: Any) -> str:
    return f"{full}={value!r}"


def _raw_at(raw: Any, key: str) -> Any:
    """The unresolved value at dotted ``key`` of the plain unresolved config (None if absent)."""
    node = raw
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def source_key(raw: dict[str, Any], full: str) -> str:
    """The key whose value ``full`` takes: ``full`` itself unless its unresolved value is a plain
    interpolation ``${a.b}`` (absolute) or ``${..b}`` (relative: one dot is the node holding
    ``full``, each further dot one level up), followed through chains of them."""
    seen = {full}
    key = full
    for _ in range(16):
        value = _raw_at(raw, key)
        match = _INTERPOLATION.match(value) if isinstance(value, str) else None
        if match is None:
            return key
        dots, rest = match.groups()
        if dots:
            base = key.split(".")[:-1]  # the node holding key
            base = base[: len(base) - (len(dots) - 1)] if len(dots) > 1 else base
            key = ".".join([*base, rest])
        else:
            key = rest
        if key in seen:
            return full
        seen.add(key)
    return key


def namer(raw: dict[str, Any]) -> Namer:
    """``name(full, value)`` for messages: ``key=value``, or, when ``full`` takes its value from
    another key by interpolation, ``source=value (used by full)``."""

    def name(full: str, value: Any) -> str:
        source = source_key(raw, full)
        if source == full:
            return f"{full}={value!r}"
        return f"{source}={value!r} (used by {full})"

    return name


# ---------------------------------------------------------------- values against type hints


def _type_name(hint: Any) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "").replace("collections.abc.", "")


def _finite(value: float, allow_inf: bool) -> bool:
    """NaN never; ±inf only when allowed (the parameter's default is infinite)."""
    return not math.isnan(value) and (allow_inf or not math.isinf(value))


def _numbers_ok(value: Any, allow_inf: bool) -> bool:
    """A number or (nested) list of numbers, all finite (for tensor arguments)."""
    if isinstance(value, (list, tuple)):
        return all(_numbers_ok(v, allow_inf) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or _finite(value, allow_inf)


def _is_infinite(default: Any) -> bool:
    """Is a parameter's default ±inf (or a list holding one)? Then ±inf is a meaningful value."""
    if isinstance(default, float):
        return math.isinf(default)
    if isinstance(default, (list, tuple)):
        return any(_is_infinite(v) for v in default)
    return False


def _is_union(origin: Any) -> bool:
    return origin in (typing.Union, types.UnionType)


def _is_sequence(hint: Any, origin: Any) -> bool:
    return origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple)


def _matches(value: Any, hint: Any, allow_inf: bool = False) -> bool:
    """Does a plain config value (not a ``_target_`` node) fit a type hint? Unknown hints are
    accepted, except a NaN, which no parameter can mean."""
    if isinstance(value, float) and math.isnan(value):
        return False
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if _is_union(origin):
        return any(_matches(value, a, allow_inf) for a in args)
    if hint is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and (
            isinstance(value, int) or _finite(value, allow_inf))
    if hint is str:
        return isinstance(value, str)
    if hint is torch.Tensor:  # a tensor argument takes numbers or (nested) lists from a config
        return _numbers_ok(value, allow_inf)
    if _is_sequence(hint, origin):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return all(_matches(v, args[0], allow_inf) for v in value)
        if origin is tuple and args:
            return len(args) == len(value) and all(
                _matches(v, a, allow_inf) for v, a in zip(value, args))
        return all(_matches(v, args[0], allow_inf) for v in value) if args else True
    return True


def _non_finite(value: Any) -> bool:
    """Is value, or a number in a (nested) list of it, NaN or ±inf?"""
    if isinstance(value, (list, tuple)):
        return any(_non_finite(v) for v in value)
    return isinstance(value, float) and not math.isfinite(value)


def _refusal(shown: str, value: Any, hint: Any) -> str:
    if _non_finite(value):
        return (f"{shown} is not allowed: a number here must be finite "
                f"(of type {_type_name(hint)}; ±inf only where the default is infinite)")
    return f"{shown} must be of type {_type_name(hint)}"


# ---------------------------------------------------------------- nested _target_ nodes


def _is_node(value: Any) -> bool:
    return isinstance(value, dict) and "_target_" in value


def _never_a_node(hint: Any) -> bool:
    """Hints a ``_target_`` node can never stand in for: scalars, Literals, None, and lists or
    tuples of those (a node builds one object, and instantiating it would run its code)."""
    origin = typing.get_origin(hint)
    if _is_union(origin):
        return all(_never_a_node(a) for a in typing.get_args(hint))
    if hint in (*SCALAR_TYPES, type(None)) or origin is typing.Literal:
        return True
    if _is_sequence(hint, origin):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return all(_never_a_node(a) for a in args) if args else True
    return False


def _is_callable_hint(hint: Any) -> bool:
    return hint is Callable or typing.get_origin(hint) is Callable or hint is typing.Callable


def _fits(result: Any, hint: Any) -> bool:
    """Can a value of type ``result`` (a class, a typing construct, or None = unknown) go where
    ``hint`` is expected? Unknown on either side is accepted."""
    if result is None or hint is Any or hint is inspect.Parameter.empty:
        return True
    if _never_a_node(hint):
        return False
    origin = typing.get_origin(hint)
    if _is_union(origin):
        return any(_fits(result, a) for a in typing.get_args(hint))
    r_origin = typing.get_origin(result)
    if _is_union(r_origin):  # e.g. a function annotated -> X | None
        return any(_fits(r, hint) for r in typing.get_args(result) if r is not type(None))
    result_cls = r_origin if isinstance(r_origin, type) else result
    if _is_callable_hint(hint):
        cls = Callable  # typing.Callable[..., X] checks as collections.abc.Callable
    else:
        cls = origin if isinstance(origin, type) else hint
    if not isinstance(cls, type) or not isinstance(result_cls, type):
        return True  # a TypeVar, a forward reference, …: cannot tell
    try:
        return issubclass(result_cls, cls)
    except TypeError:  # a Protocol issubclass cannot check: cannot tell
        return True


def _built_type(target: Any) -> Any:
    """What calling ``target`` returns: the class itself, a function's return annotation, or
    None when unknown."""
    if inspect.isclass(target):
        return target
    try:
        return typing.get_type_hints(target).get("return")
    except Exception:  # no or unresolvable annotations (builtins, C functions)
        return None


def _import_target(node: dict[str, Any], prefix: str) -> Any:
    target_path = node.get("_target_")
    if not isinstance(target_path, str):
        raise ConfigError(f"{prefix}._target_ is missing: every {prefix} option names its class")
    try:
        return get_object(target_path)
    except Exception:
        raise ConfigError(f"{prefix}._target_={target_path!r} cannot be imported") from None


def _node_fits(built: Any, partial: bool, hint: Any) -> bool:
    """Does a node that builds ``built`` (a partial of it when ``partial``) fit ``hint``?"""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    if _is_union(typing.get_origin(hint)):
        return any(_node_fits(built, partial, a) for a in typing.get_args(hint))
    if not partial:
        return _fits(built, hint)
    if _is_callable_hint(hint):  # Callable[..., X]: calling the partial must give an X
        args = typing.get_args(hint)
        return _fits(built, args[-1]) if args else True
    return _fits(functools.partial, hint)


def _check_nested_node(node: dict[str, Any], hint: Any, full: str, name: Namer) -> None:
    """A ``{_target_: …}`` value: typed by what it builds, then checked like a group node."""
    if _never_a_node(hint):  # refused before importing anything
        raise ConfigError(f"{name(full, node)} must be of type {_type_name(hint)}, "
                          "not a _target_ node")
    target = _import_target(node, full)
    built = _built_type(target)
    partial = bool(node.get("_partial_"))
    if not _node_fits(built, partial, hint):
        what = (f"a partial of {node['_target_']}" if partial
                else f"{node['_target_']}, which builds {_type_name(built)}")
        raise ConfigError(f"{full}._target_={node['_target_']!r} does not fit: {full} must be "
                          f"{_type_name(hint)}, the node gives {what}")
    check_node(node, full, name=name)


def _element_hint(hint: Any, key: Any) -> Any:
    """The hint of one element of a container value (a dict's values, a list's items)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(origin):
        inner = [a for a in args if a is not type(None)]
        return _element_hint(inner[0], key) if len(inner) == 1 else Any
    if origin in (dict, Mapping, typing.Mapping) and len(args) == 2:
        return args[1]
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
        return args[key] if isinstance(key, int) and key < len(args) else Any
    if _is_sequence(hint, origin) and args:
        return args[0]
    return Any


def check_value(value: Any, hint: Any, full: str, name: Namer = _plain_name,
                allow_inf: bool = False) -> None:
    """Check one config value against its parameter's type hint (rules in the module
    docstring), and every ``_target_`` node inside a dict or list value (instantiate builds
    those too)."""
    if _is_node(value):
        _check_nested_node(value, hint, full, name)
        return
    if not _matches(value, hint, allow_inf):
        raise ConfigError(_refusal(name(full, value), value, hint))
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(
        value, (list, tuple)) else ()
    for k, v in items:
        if isinstance(v, (dict, list, tuple)):
            sub = f"{full}.{k}" if isinstance(k, str) else f"{full}[{k}]"
            check_value(v, _element_hint(hint, k), sub, name, allow_inf)


def _signature(target: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], dict[str, Any]]:
    sig = inspect.signature(target)
    fn = target.__init__ if inspect.isclass(target) else target
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable annotations: check keys only
        hints = {}
    return dict(sig.parameters), hints


def check_node(node: dict[str, Any], prefix: str, runtime: Sequence[str] = (),
               loop_keys: Sequence[str] = (), name: Namer = _plain_name) -> None:
    """Check one ``_target_`` node (a plain dict) against its target's signature, recursively."""
    target_path = node.get("_target_")
    target = _import_target(node, prefix)
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
        hint = hints.get(key, inspect.Parameter.empty)
        default = params[key].default if key in params else inspect.Parameter.empty
        check_value(value, hint, full, name, _is_infinite(default))
    if node.get("_partial_"):
        return
    for pname, p in params.items():
        required = p.default is inspect.Parameter.empty and p.kind not in (
            inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        if required and pname not in node and pname not in runtime and pname != "self":
            raise ConfigError(f"{prefix}.{pname} is required by {target_path} but not set")


# ---------------------------------------------------------------- sizes against memory

# Copies of a chain's [n, D] state alive at once during a sampler step: x, its cached gradient,
# HMC's momentum, the proposal and its gradient, a noise draw. A lower bound (network
# activations are not counted).
CHAIN_COPIES = 6
NOISE_BYTES = 16  # a restart's noise draw per coordinate: z and μ + Lz in float64
MMD_CHUNK = 1024  # rows per block of the MMD kernel sums (evaluation.mmd._kernel_sums)
GRID_BYTES = 64  # per quadrature point: coordinates, meshgrid copies, energy, logsumexp (float64)


def _grid_problem(grid: int) -> str | None:
    """eval.grid: the finer of the two quadrature grids has (2·grid)² points."""
    need = GRID_BYTES * (2 * grid) ** 2
    memory = resources.physical_memory()
    if need <= memory:
        return None
    largest = math.isqrt(memory // (4 * GRID_BYTES))
    return resources.size_refusal("eval.grid", grid, need, f"(2·grid)² quadrature points × "
                                  f"{GRID_BYTES} bytes", largest)


def _mmd_problem(points: int) -> str | None:
    """eval.mmd_points: kernel sums in blocks [min(n, 1024), n, H] (H bandwidths), float64."""
    per_pair = (2 + 2 * len(BANDWIDTH_FACTORS)) * 8
    need = min(points, MMD_CHUNK) * points * per_pair
    memory = resources.physical_memory()
    if need <= memory:
        return None
    largest = memory // (MMD_CHUNK * per_pair)
    return resources.size_refusal("eval.mmd_points", points, need,
                                  f"float64 kernel blocks of {MMD_CHUNK} × n × "
                                  f"{len(BANDWIDTH_FACTORS)} bandwidths", largest)


def check_sizes(cfg: dict[str, Any], event_shape: tuple[int, ...]) -> None:
    """Refuse a count whose tensors cannot fit in physical memory, once the data's event shape
    is known (call right after the dataset is built, before the energy, sampler and trainer).

    cfg: the validated plain config; event_shape: the data's [*event] (D = its product). Each
    estimate is a lower bound (in the run's dtype, network activations not counted), so a run
    that passes may still need more.
    """
    d = math.prod(event_shape)
    itemsize = 8 if cfg.get("dtype") == "float64" else 4
    chain = d * (itemsize * CHAIN_COPIES + NOISE_BYTES)
    trainer, ev = cfg.get("trainer") or {}, cfg.get("eval") or {}
    # (no "[n, …" in messages: the console would read it as markup)
    copies = f"{CHAIN_COPIES} {cfg.get('dtype', 'float32')} copies of n × D={d} chain values"
    noisy = copies + " and their float64 noise draws"
    sizes: list[tuple[str, Any, float, str]] = [
        ("trainer.batch_size", trainer.get("batch_size"), d * itemsize * CHAIN_COPIES, copies),
        ("trainer.n_chains", trainer.get("n_chains"), chain, noisy),
        ("trainer.buffer_size", trainer.get("buffer_size"), d * (itemsize + NOISE_BYTES),
         f"a replay buffer of n × D={d} values filled from float64 noise"),
        ("eval.n_samples", ev.get("n_samples"), chain, noisy),
        ("eval.ais_chains", ev.get("ais_chains"), chain, noisy),
    ]
    if _positive_int(trainer.get("trace_chains")):
        # sampling trainers record [trace_chains, D] every step and stack half of them for the
        # diagnostics: 1.5 copies of [steps, chains, D]
        kept = min(trainer["trace_chains"], trainer.get("n_chains") or trainer["trace_chains"])
        sizes.append(("trainer.steps", trainer.get("steps"), 1.5 * kept * d * itemsize,
                      f"a recorded trace of steps × {kept} chains × D={d} values"))
    for key, count, bytes_each, what in sizes:
        if not _positive_int(count):
            continue
        problem = resources.size_problem(key, count, bytes_each, what)
        if problem:
            raise ConfigError(problem)


# ---------------------------------------------------------------- the whole config


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
        raw = OmegaConf.to_container(cfg, resolve=False)
    except Exception as e:
        raise ConfigError(f"the config cannot be resolved: {str(e).splitlines()[0]}") from None
    assert isinstance(plain, dict) and isinstance(raw, dict)
    name = namer(raw)
    known = set(TOP_LEVEL) | set(GROUPS) | {"eval"} | set(OPTIONAL_TOP)
    for key in plain:
        if key not in known:
            raise ConfigError(f"{key} is not a config key; allowed: {', '.join(sorted(known))}")
    for key, (ok, allowed) in TOP_LEVEL.items():
        if key not in plain:
            raise ConfigError(f"{key} is missing from the config; it must be {allowed}")
        if not ok(plain[key]):
            raise ConfigError(f"{name(key, plain[key])} is not allowed; it must be {allowed}")
    eval_cfg = plain.get("eval") or {}
    for key in eval_cfg:
        if key not in EVAL_KEYS:
            raise ConfigError(f"eval.{key} is not a config key; allowed: {', '.join(EVAL_KEYS)}")
    for key, (ok, allowed) in EVAL_KEYS.items():
        if key not in eval_cfg or not ok(eval_cfg[key]):
            raise ConfigError(
                f"{name(f'eval.{key}', eval_cfg.get(key))} is not allowed; it must be {allowed}"
            )
    for problem in (_grid_problem(eval_cfg["grid"]), _mmd_problem(eval_cfg["mmd_points"])):
        if problem:
            raise ConfigError(problem)
    for group in GROUPS:
        if not isinstance(plain.get(group), dict):
            raise ConfigError(f"{group} is not set: choose an option, e.g. {group}=<name>")
    # The loop keys first: another key may take its value from them (T_max: ${..steps}).
    # A sampling run (trainer=none) reads no data, so it has no batch_size.
    sampling = _is_chain_run(plain["trainer"].get("_target_"))
    for group, keys in LOOP_KEYS.items():
        for key in keys:
            if sampling and key == "batch_size" and key not in plain[group]:
                continue
            value = plain[group].get(key)
            if not _positive_int(value):
                raise ConfigError(
                    f"{name(f'{group}.{key}', value)} is not allowed; it must be an integer >= 1"
                )
    for group in GROUPS:
        check_node(plain[group], group, RUNTIME_KWARGS[group], LOOP_KEYS.get(group, ()), name)
    _check_compile(plain)
    return plain


def _is_chain_run(target_path: Any) -> bool:
    from ebm_cli.trainers.base import is_chain_run

    try:
        return isinstance(target_path, str) and is_chain_run(get_object(target_path))
    except Exception:  # not importable: check_node says so
        return False


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
