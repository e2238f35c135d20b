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

from collections.abc import Callable
from typing import Any

from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from ebm_cli import resources
from ebm_cli.app.errors import ConfigError, Namer, namer, plain_name, source_key  # noqa: F401
from ebm_cli.app.sizes import _grid_problem, _mmd_problem, check_sizes  # noqa: F401
from ebm_cli.app.typecheck import (  # noqa: F401
    HYDRA_KEYS,
    SCALAR_TYPES,
    _positive_int,
    check_node,
    check_value,
)

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



# torch.compile modes allowed besides true (= "default"). Not reduce-overhead / max-autotune: on
# CUDA they replay CUDA graphs, whose outputs the next call overwrites, while samplers keep the
# last call's energies and gradients in ChainState.
# auto: compiled transitions where torch.compile can run here, eager otherwise (build.py).
COMPILE_MODES = ("auto", "default", "max-autotune-no-cudagraphs")
# run.py seeds torch with ``seed`` and a second stream with ``seed + 1``; both must be in torch's
# range (resources.SEED_MIN..SEED_MAX), so seed itself may reach SEED_MAX − 1.
SEED_TOP = resources.SEED_MAX - 1


def _nonneg_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _decay(v: Any) -> bool:
    """``ema``: null (off) or a decay d with 0 < d < 1 (NaN fails both comparisons)."""
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1)


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
    "eval_every": (_nonneg_int, "an integer >= 0 (0 = no held-out NLL curve during training)"),
    "ema": (_decay, "null (off) or a decay d in (0, 1), e.g. 0.99: the evaluated weights are "
            "the average θ̄ ← d·θ̄ + (1 − d)·θ after every update"),
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
    if sampling and plain["ema"] is not None:
        raise ConfigError(f"{name('ema', plain['ema'])} averages trained weights, but this run "
                          "only samples (it trains nothing): set ema=null")
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
    return plain


def _is_chain_run(target_path: Any) -> bool:
    from ebm_cli.trainers.base import is_chain_run

    try:
        return isinstance(target_path, str) and is_chain_run(get_object(target_path))
    except Exception:  # not importable: check_node says so
        return False
