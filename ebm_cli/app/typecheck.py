"""Config values against the type hints of the constructors they go to.

- A float-typed value must be finite: NaN always fails (every ``x >= 0`` test passes it), ±inf
  fails unless the parameter's own default is infinite.
- A nested ``{_target_: …}`` node is typed by what it builds: never where a scalar (or a list of
  scalars) is expected, and where a class or Callable is expected its class (a function's return
  annotation; ``_partial_: true`` builds a Callable) must fit; the target is imported only for
  that comparison, never called.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from hydra.utils import get_object

from ebm_cli.app.errors import ConfigError, Namer, plain_name

HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
SCALAR_TYPES = (bool, int, float, str)


def _positive_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


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


def check_value(value: Any, hint: Any, full: str, name: Namer = plain_name,
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
               loop_keys: Sequence[str] = (), name: Namer = plain_name) -> None:
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
