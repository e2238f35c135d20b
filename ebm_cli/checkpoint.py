"""Atomic checkpoints: write to a temporary file, fsync, rename; load without running code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(Exception):
    """A checkpoint that cannot be read; the message is one line naming the file."""


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves the old or the new file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, corrupted, foreign or unsafe pickle
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded safely ({reason[:160]})"
        ) from None
    if not isinstance(state, dict) or "energy" not in state:
        raise CheckpointError(f"checkpoint {path} is not an ebm-cli checkpoint (no 'energy' entry)")
    return state


def trained_energy(event_shape: tuple[int, ...], path: str) -> torch.nn.Module:
    """The energy of a training run's checkpoint, to sample from (``energy=checkpoint``).

    The checkpoint stores the energy's config node; it is rebuilt with Hydra and the weights are
    loaded (weights_only). ``path`` is a checkpoint file or a run directory holding checkpoint.pt.
    """
    from hydra.utils import instantiate

    file = Path(path)
    if file.is_dir():
        file = file / "checkpoint.pt"
    state = load(file)
    stored = tuple(state.get("event_shape", ()))
    if stored and tuple(event_shape) != stored:
        raise ValueError(
            f"energy.path={path}: the checkpoint's energy takes event shape {stored}, "
            f"but the data has {tuple(event_shape)}"
        )
    energy_fn = instantiate(state["energy_config"], _partial_=True, _convert_="all")(
        event_shape=stored or tuple(event_shape)
    )
    try:
        energy_fn.load_state_dict(state["energy"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {file} does not fit its energy config ({e})") from None
    return energy_fn.eval()
