"""Build a run's parts from the validated plain config: data, energy, sampler, trainer.

Every part is instantiated from its group's ``_target_`` with the runtime arguments its
constructor declares (``event_shape`` for energies; ``energy_fn``, ``sampler``, ``train_data``
for trainers); our constructors' ValueErrors become one-line ConfigErrors and a user class's
exception a UserCodeError naming it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch
from hydra.utils import get_object, instantiate

from ebm_cli import checkpoint
from ebm_cli.app import usercode
from ebm_cli.app.config_check import LOOP_KEYS, ConfigError, check_sizes
from ebm_cli.data.base import Dataset
from ebm_cli.energies.base import HasEventShape
from ebm_cli.samplers.compiled import CompiledTransitions
from ebm_cli.trainers.base import is_chain_run


@dataclass
class Parts:
    """The built run. ``energy_fn`` is the plain module (checkpoints, plots, quadrature);
    ``fast_energy_fn`` is what the trainer and the evaluation chains call: the same module, or
    with ``compile`` set a CompiledTransitions around it (same parameters; samplers/compiled.py).
    A sampling run (``trainer`` a ChainRun) has no dataset and no batch size; ``event_shape``
    is the energy's (sampling) or the data's (training)."""

    dataset: Dataset | None
    energy_fn: torch.nn.Module
    sampler: Any
    trainer: Any
    steps: int
    batch_size: int
    fast_energy_fn: torch.nn.Module
    event_shape: tuple[int, ...]

    @property
    def sampling(self) -> bool:
        return self.dataset is None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available here; use device=cpu or auto")
    return torch.device(name)


def _declared(target: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The runtime arguments a constructor declares (all of them if it takes ``**kwargs``)."""
    params = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs
    return {k: v for k, v in kwargs.items() if k in params}


def _build(node: dict[str, Any], group: str, **kwargs: Any) -> Any:
    """Instantiate a group's node with the runtime arguments its constructor declares.

    Our own constructors' ValueError/TypeError are one-line ConfigErrors; anything raised by the
    user's own class is a UserCodeError naming it (usercode.py). Runtime objects are passed to
    the partial, not to instantiate(), which would convert dataclass instances (samplers) and
    other values into OmegaConf nodes.
    """
    target_path = str(node["_target_"])
    factory = instantiate(node, _partial_=True, _convert_="all")
    try:
        return factory(**_declared(get_object(target_path), kwargs))
    except Exception as e:
        if not usercode.is_own(target_path):
            if usercode.show_tracebacks():
                raise
            raise usercode.UserCodeError(f"{group} class {target_path}", e) from e
        cause = e.__cause__ or e
        if isinstance(cause, checkpoint.CheckpointError):
            raise cause from None
        if isinstance(cause, (ValueError, TypeError)):
            message = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            if group not in message:
                message = f"{group}: {message}"
            raise ConfigError(message) from None
        raise


def _compiler_problem(device: torch.device) -> str | None:
    """Why torch.compile cannot run here (no C++ compiler for CPU code, no Triton for CUDA
    kernels, an unsupported Python), or None."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile does not support this Python/platform"
    try:
        if device.type == "cpu":
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()  # raises when no g++/clang++ (or $CXX) is found
        elif device.type == "cuda":
            from torch.utils._triton import has_triton

            if not has_triton():
                return "torch.compile on CUDA needs the triton package"
    except (ImportError, AttributeError):  # another torch version: let torch.compile decide
        return None
    except Exception as e:
        return f"torch.compile on CPU needs a C++ compiler ({str(e).splitlines()[0][:80]})"
    return None


def compile_energy(energy_fn: torch.nn.Module, setting: bool | str,
                   device: torch.device) -> torch.nn.Module:
    """``compile`` config key: the energy as the samplers see it (samplers/compiled.py).

    false: the module itself. true, default, max-autotune-no-cudagraphs: a CompiledTransitions
    around it, so every sampler transition of the run (trainer=none chains, MLE's negatives, the
    evaluation chains) runs as one torch.compile graph with E and ∇ₓE inside, the parameters
    entering as inputs; its ``forward`` is the module's (same parameters: the optimizer,
    ``load_state_dict`` and the plain checkpoint are unchanged, and losses stay eager). refused
    with one line where torch.compile cannot run here. auto: compiled transitions where
    torch.compile can run (a C++ compiler on CPU, Triton on CUDA), the module itself otherwise.
    An energy that cannot be traced runs eager with one log line (CompiledTransitions).
    """
    if setting is False:
        return energy_fn
    problem = _compiler_problem(device)
    if setting == "auto":
        return energy_fn if problem else CompiledTransitions(energy_fn)
    if problem:
        shown = "true" if setting is True else setting
        raise ConfigError(f"compile={shown}: {problem}; use compile=false")
    return CompiledTransitions(energy_fn, mode=None if setting is True else setting)


def build(cfg: dict[str, Any], device: torch.device, dtype: torch.dtype) -> Parts:
    """Instantiate data, energy, sampler and trainer from the validated plain config."""
    if is_chain_run(get_object(cfg["trainer"]["_target_"])):
        return build_sampling(cfg, device, dtype)
    dataset: Dataset = _build(cfg["data"], "data")
    check_sizes(cfg, dataset.event_shape)  # memory the run's sizes need, now that D is known
    energy_fn = _build(cfg["energy"], "energy", event_shape=dataset.event_shape)
    energy_fn = energy_fn.to(device=device, dtype=dtype)
    fast_energy_fn = compile_energy(energy_fn, cfg.get("compile", False), device)
    sampler = _build(cfg["sampler"], "sampler")
    trainer_node = {k: v for k, v in cfg["trainer"].items() if k not in LOOP_KEYS["trainer"]}
    train = dataset.train.to(device=device, dtype=dtype)
    trainer = _build(trainer_node, "trainer", energy_fn=fast_energy_fn, sampler=sampler,
                     train_data=train)
    batch_size = cfg["trainer"]["batch_size"]
    if batch_size > dataset.train.shape[0]:
        raise ConfigError(
            f"trainer.batch_size={batch_size} exceeds the {dataset.train.shape[0]} training points"
        )
    return Parts(dataset, energy_fn, sampler, trainer, cfg["trainer"]["steps"], batch_size,
                 fast_energy_fn, tuple(dataset.event_shape))


def build_sampling(cfg: dict[str, Any], device: torch.device, dtype: torch.dtype) -> Parts:
    """A sampling run: the energy alone (its dimension its own — ``energy.dim`` or its
    ``event_shape`` — no data group is read), the sampler, and the chains."""
    energy_fn = _build(cfg["energy"], "energy")
    if not isinstance(energy_fn, HasEventShape):
        raise ConfigError(
            f"trainer={cfg['trainer']['_target_'].rsplit('.', 1)[-1]} samples the energy alone, "
            f"but {cfg['energy']['_target_']} does not say its event_shape (an attribute: the "
            "shape of one x); see docs/extending.md"
        )
    event_shape = tuple(int(s) for s in energy_fn.event_shape)
    check_sizes(cfg, event_shape)
    energy_fn = energy_fn.to(device=device, dtype=dtype)
    fast_energy_fn = compile_energy(energy_fn, cfg.get("compile", False), device)
    sampler = _build(cfg["sampler"], "sampler")
    node = {k: v for k, v in cfg["trainer"].items() if k not in LOOP_KEYS["trainer"]}
    chains = _build(node, "trainer", energy_fn=fast_energy_fn, sampler=sampler,
                    event_shape=event_shape, dtype=dtype, device=device)
    return Parts(None, energy_fn, sampler, chains, cfg["trainer"]["steps"], 0, fast_energy_fn,
                 event_shape)


