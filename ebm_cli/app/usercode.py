"""A bug in the user's own class is not bad input.

When a class that the user's config names (a ``_target_`` outside this package and torch) raises
— in its constructor, its ``forward``, its ``step`` — the run stops with one line naming the
class, the exception and how to see the traceback (``EBM_TRACEBACK=1``, or Hydra's
``HYDRA_FULL_ERROR=1``), exit status 1. Our own constructors' ValueErrors stay config errors.
"""

from __future__ import annotations

import os
import traceback
from typing import Any

OWN = ("ebm_cli.", "torch.", "hydra.", "omegaconf.")
TRACEBACK_ENV = "EBM_TRACEBACK"


class UserCodeError(Exception):
    """The user's own code raised; the message is one line."""

    def __init__(self, where: str, exc: BaseException) -> None:
        text = str(exc).strip().splitlines()
        reason = f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__
        super().__init__(
            f"{where} raised {reason} — raised inside your own code (its own check of a value, "
            f"or a bug), not by ebm-cli's config check; run again with {TRACEBACK_ENV}=1 to see "
            "its traceback"
        )


def show_tracebacks() -> bool:
    """Has the user asked for full tracebacks?"""
    return os.environ.get(TRACEBACK_ENV, "") not in ("", "0") or os.environ.get(
        "HYDRA_FULL_ERROR") == "1"


def is_own(target: str) -> bool:
    return target.startswith(OWN)


def user_modules(node: Any) -> dict[str, str]:
    """{module name: target} of every ``_target_`` in a plain config that is the user's own."""
    found: dict[str, str] = {}
    if isinstance(node, dict):
        target = node.get("_target_")
        if isinstance(target, str) and not is_own(target):
            found[target.rpartition(".")[0]] = target
        for value in node.values():
            found.update(user_modules(value))
    elif isinstance(node, list):
        for value in node:
            found.update(user_modules(value))
    return found


def blame(exc: BaseException, modules: dict[str, str]) -> str | None:
    """``mymod.MyEnergy (mymod.py:12)``: the innermost frame of the traceback that lies in one of
    the user's modules, or None when the user's code is not involved."""
    where = None
    for frame, line in traceback.walk_tb(exc.__traceback__):
        module = frame.f_globals.get("__name__", "")
        if module in modules:
            where = f"{modules[module]} ({os.path.basename(frame.f_code.co_filename)}:{line})"
    return where
