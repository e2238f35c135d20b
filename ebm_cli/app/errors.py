"""One-line config errors, and the key they name: the one the user set.

A value that fails a check and was written as an interpolation ``${a.b}`` is reported under the
key the user set (``trainer.steps='abc' (used by trainer.lr_schedule.T_max) …``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


class ConfigError(Exception):
    """A bad configuration value; the message is one line for the user."""


Namer = Callable[[str, Any], str]
_INTERPOLATION = re.compile(r"^\$\{(\.*)([A-Za-z_][\w.]*)\}$")


def plain_name(full: str, value: Any) -> str:
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
