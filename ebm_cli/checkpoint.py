"""Atomic checkpoints: write to a temporary file, fsync, rename; load without running code."""

from __future__ import annotations

import errno
import inspect
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


class CheckpointError(Exception):
    """A checkpoint that cannot be read; the message is one line naming the file."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint that cannot be written (full disk, …); the previous one is kept."""


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically: a crash leaves the old or the new file."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        name = errno.errorcode.get(e.errno or 0, "")
        kept = "the previous checkpoint is kept" if path.is_file() else "no checkpoint was kept"
        raise CheckpointWriteError(
            f"cannot save checkpoint {path}: {e.strerror or e}{f' ({name})' if name else ''}; "
            f"{kept}"
        ) from None
    except BaseException:
        if tmp:
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


# Keys of a Hydra config node that make it instantiate or call something.
HYDRA_KEYS = ("_target_", "_args_", "_partial_", "_recursive_", "_convert_")
# The package whose energy classes a checkpoint may name without the user's say-so.
OWN_ENERGIES = "ebm_cli.energies."


def energy_spec(node: dict[str, Any]) -> dict[str, Any]:
    """What a checkpoint stores to rebuild its energy: the class path and its constructor
    arguments as plain values (no Hydra node: nothing in a checkpoint is instantiated)."""
    kwargs = {k: v for k, v in node.items() if k not in HYDRA_KEYS and k != "event_shape"}
    return {"class": node.get("_target_"), "kwargs": kwargs}


def _plain(value: Any, where: str, file: Path) -> None:
    """Refuse anything in stored data that Hydra or OmegaConf would act on."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or k in HYDRA_KEYS:
                raise CheckpointError(
                    f"checkpoint {file}: its stored energy config has {where}.{k}; checkpoints "
                    "hold plain values only (no _target_, _args_, _partial_): refused"
                )
            _plain(v, f"{where}.{k}", file)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _plain(v, f"{where}[{i}]", file)
    elif isinstance(value, str):
        if "${" in value:
            raise CheckpointError(
                f"checkpoint {file}: its stored energy config has an interpolation at {where} "
                f"({value[:60]!r}); checkpoints hold plain values only: refused"
            )
    elif not (value is None or isinstance(value, (bool, int, float))):
        raise CheckpointError(
            f"checkpoint {file}: {where} holds a {type(value).__name__}, not a plain value"
        )


def _energy_class(path: Any, file: Path, classes: Sequence[str]) -> type[torch.nn.Module]:
    """The class a checkpoint names, if it is one of this package's energies or one the
    user's own config lists in ``energy.classes``; checked before anything is imported."""
    if not isinstance(path, str) or not (path.startswith(OWN_ENERGIES) or path in classes):
        raise CheckpointError(
            f"checkpoint {file} names the energy class {path!r}, which is neither one of "
            f"ebm-cli's energies ({OWN_ENERGIES}*) nor listed in energy.classes: refused "
            f"(add it to energy.classes if you trust it)"
        )
    from hydra.utils import get_object

    try:
        cls = get_object(path)
    except Exception as e:
        raise CheckpointError(f"checkpoint {file}: its energy class {path} cannot be imported "
                              f"({str(e).splitlines()[0][:80]})") from None
    own = path not in classes
    if not (inspect.isclass(cls) and issubclass(cls, torch.nn.Module)) or (
            own and not cls.__module__.startswith(OWN_ENERGIES)):  # no attribute-chain escapes
        raise CheckpointError(
            f"checkpoint {file}: {path} is not an energy class of {OWN_ENERGIES}*: refused")
    return cls


EMA_PREFIX = "module."  # AveragedModel's state_dict: module.<the energy's keys>, n_averaged


def evaluated_weights(state: dict[str, Any], file: Path) -> dict[str, Any]:
    """The energy's state_dict that a run evaluated: with ``ema`` on (an ``ema`` entry, the
    state_dict of torch's AveragedModel) the average θ̄, else the trained weights θ."""
    averaged = state.get("ema")
    if averaged is None:
        return state["energy"]
    if not isinstance(averaged, dict) or not any(
            isinstance(k, str) and k.startswith(EMA_PREFIX) for k in averaged):
        raise CheckpointError(f"checkpoint {file}: its 'ema' entry is not an average of the "
                              "energy's weights")
    return {k[len(EMA_PREFIX):]: v for k, v in averaged.items() if k.startswith(EMA_PREFIX)}


def trained_energy(path: str, classes: Sequence[str] = (),
                   event_shape: Sequence[int] | None = None) -> torch.nn.Module:
    """The energy of a training run's checkpoint, to sample from (``energy=checkpoint``).

    ``path`` is a checkpoint file or a run directory holding checkpoint.pt. The checkpoint names
    the energy's class and its plain constructor arguments; the class must be one of
    ``ebm_cli.energies`` or listed in ``classes`` (the user's own config), and it is called
    directly, never through Hydra, so nothing stored in the file becomes code. ``event_shape``
    (the data's, in a training run) must match the stored one; a sampling run passes none.
    The weights are those the run evaluated: its EMA θ̄ when it had ``ema`` on, else θ.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "checkpoint.pt"
    state = load(file)
    spec = state.get("energy_spec")
    if spec is None and isinstance(state.get("energy_config"), dict):  # older checkpoints
        spec = energy_spec(dict(state["energy_config"]))
        _plain(dict(state["energy_config"]), "energy", file)
    if not isinstance(spec, dict) or not isinstance(spec.get("kwargs"), dict):
        raise CheckpointError(f"checkpoint {file} does not say which energy it holds")
    _plain(spec["kwargs"], "energy", file)
    cls = _energy_class(spec.get("class"), file, classes)
    stored = tuple(state.get("event_shape", ()))
    if event_shape is None:
        if not stored:
            raise CheckpointError(f"checkpoint {file} does not say its event shape")
        event_shape = stored
    if stored and tuple(event_shape) != stored:
        raise ValueError(
            f"energy.path={path}: the checkpoint's energy takes event shape {stored}, "
            f"but the data has {tuple(event_shape)}"
        )
    kwargs = dict(spec["kwargs"])
    if "event_shape" in inspect.signature(cls).parameters:
        kwargs["event_shape"] = stored or tuple(event_shape)
    energy_fn = cls(**kwargs)
    try:
        energy_fn.load_state_dict(evaluated_weights(state, file))
    except (RuntimeError, TypeError) as e:
        raise CheckpointError(
            f"checkpoint {file} does not fit its energy ({str(e).splitlines()[0][:120]})"
        ) from None
    return energy_fn.eval()
