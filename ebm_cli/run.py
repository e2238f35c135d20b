"""The one training/sampling loop: build the parts, step, log on cadence, checkpoint, evaluate."""

from __future__ import annotations

import inspect
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import get_object, instantiate

from ebm_cli import checkpoint, image_plots, plots, usercode
from ebm_cli.config_check import LOOP_KEYS, ConfigError
from ebm_cli.data.base import Dataset
from ebm_cli.evaluation.ais import evaluate_high_dim
from ebm_cli.evaluation.mmd import mmd
from ebm_cli.evaluation.sampling import draw_samples, initial_points
from ebm_cli.evaluation.summary import evaluate
from ebm_cli.report import Reporter, write_metrics
from ebm_cli.trainers.buffer import DataNoise, reinitialise

log = logging.getLogger("ebm_cli")


PREVIEW_GRID = 100  # grid points per axis of the energy images logged during training


class NonFiniteError(Exception):
    """The loss or an energy became NaN/inf; the message names the step and what to change."""


@dataclass
class Parts:
    """The built run. ``energy_fn`` is the plain module (checkpoints, plots, quadrature);
    ``fast_energy_fn`` is what the trainer and the evaluation chains call: the same module, or
    its torch.compile wrapper (same parameters) with ``compile`` set."""

    dataset: Dataset
    energy_fn: torch.nn.Module
    sampler: Any
    trainer: Any
    steps: int
    batch_size: int
    fast_energy_fn: torch.nn.Module


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
    """``compile`` config key: the energy wrapped by torch.compile (TorchInductor), or itself.

    The wrapper shares the module's parameters, so the optimizer, ``load_state_dict`` and the
    checkpoint (always the plain module's state_dict, no ``_orig_mod.`` prefix) are unchanged.
    Shapes differ between calls (chains, data + negatives), so the first calls compile a
    dynamic-shape graph; the compile time is paid in the first steps.
    """
    if setting is False:
        return energy_fn
    problem = _compiler_problem(device)
    if problem:
        shown = "true" if setting is True else setting
        raise ConfigError(f"compile={shown}: {problem}; use compile=false")
    return torch.compile(energy_fn, mode=None if setting is True else setting)


def build(cfg: dict[str, Any], device: torch.device, dtype: torch.dtype) -> Parts:
    """Instantiate data, energy, sampler and trainer from the validated plain config."""
    dataset: Dataset = _build(cfg["data"], "data")
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
                 fast_energy_fn)


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device`` without waiting for the device: a copy from pageable memory
    would synchronise with the GPU's queue, one from pinned memory is asynchronous (the caching
    host allocator keeps the pinned block until the copy has run)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _to_floats(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in stats.items()}  # host sync: logging steps only


def _plot(reporter: Reporter, parts: Parts, samples: torch.Tensor | None, step: int,
          final: bool) -> None:
    ds = parts.dataset
    if ds.dim != 2:
        _plot_high_dim(reporter, parts, samples, step, final)
        return
    if samples is not None:
        fig = plots.samples_figure(
            ds.test.numpy(), samples.detach().cpu().double().numpy(), ds.bounds,
            f"samples at step {step}",
        )
        reporter.figure("samples", fig, step, "samples.png" if final else None)
    # During training a coarser grid: the image costs ~0.2 s instead of ~0.3 s (benchmarks/
    # bench_logging.py); the final energy.png keeps the fine one.
    grid = {} if final else {"n": PREVIEW_GRID}
    fig = plots.energy_figure(parts.energy_fn, ds.bounds, **grid)
    reporter.figure("energy_landscape", fig, step, "energy.png" if final else None)


def _plot_high_dim(reporter: Reporter, parts: Parts, samples: torch.Tensor | None, step: int,
                   final: bool) -> None:
    """D ≠ 2: energy histograms of held-out data vs samples; for images [C, H, W], a grid of
    samples beside a grid of held-out data (both in the data's original units)."""
    if samples is None:
        return
    ds, x = parts.dataset, samples.detach()
    with torch.no_grad():
        e_data = parts.energy_fn(ds.test[:1000].to(x)).double().cpu().numpy()
        e_samples = parts.energy_fn(x).double().cpu().numpy()
    fig = image_plots.energy_histogram_figure(e_data, e_samples, f"energies at step {step}")
    reporter.figure("energy_histogram", fig, step, "energy_hist.png" if final else None)
    if ds.is_image:
        fig = image_plots.samples_grid_figure(
            ds.to_original(x.cpu().double()).numpy(), ds.to_original(ds.test.double()).numpy(),
            f"samples at step {step}",
        )
        reporter.figure("samples", fig, step, "samples.png" if final else None)


def _numeric_keys(node: dict[str, Any], prefix: str) -> list[str]:
    """The dotted keys of a config node holding numbers (nested nodes too)."""
    keys: list[str] = []
    for k, v in node.items():
        if k.startswith("_"):
            continue
        if isinstance(v, dict):
            keys += _numeric_keys(v, f"{prefix}.{k}")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            keys.append(f"{prefix}.{k}")
    return keys


def suspect_keys(cfg: dict[str, Any], stats: list[str], learns: bool) -> list[str]:
    """The config keys that can make ``stats`` non-finite, read from this run's config: a
    sampler statistic depends on the sampler's keys; a loss, energy or gradient of a learning
    run on the optimizer's and trainer's keys first, then the sampler's."""
    sampler = _numeric_keys(cfg["sampler"], "sampler")
    if not learns or (stats and all(k.startswith("sampler/") for k in stats)):
        return sampler
    trainer = _numeric_keys({k: v for k, v in cfg["trainer"].items()
                             if k not in LOOP_KEYS["trainer"]}, "trainer")
    first = [k for k in trainer if k.endswith(".lr")]
    return first + [k for k in trainer if k not in first] + sampler


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run between two steps; a checkpoint holds ``step``."""

    def __init__(self, signum: int, step: int, path: Path) -> None:
        super().__init__(f"{signal.Signals(signum).name} at step {step}")
        self.signum, self.step, self.path = signum, step, path


@contextmanager
def deferred_signals() -> Iterator[list[int]]:
    """While inside, SIGINT/SIGTERM only set a flag, so the loop stops between two steps with
    a consistent state to save (a signal mid-step could leave θ updated but the chains not)."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received  # signal handlers can only be set in the main thread
        return
    old = {s: signal.signal(s, lambda signum, _frame: received.append(signum))
           for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


def train(cfg: dict[str, Any], run_dir: Path, reporter: Reporter,
          resume_state: dict[str, Any] | None = None,
          stored_config: dict[str, Any] | None = None) -> dict[str, float]:
    """Run the configured job in ``run_dir``; returns the metrics written to metrics.json.

    With ``resume_state`` (a loaded checkpoint of this run) the loop continues after its step
    with the same weights, optimizer, chains, data order and random streams, so a resumed run on
    CPU ends as one that never stopped. ``stored_config`` (the unresolved config, plain values)
    goes into every checkpoint, so a resume can tell what it may not change.
    """
    reporter.phase = "start-up"
    if cfg["threads"] > 0:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    device = resolve_device(cfg["device"])
    dtype = getattr(torch, cfg["dtype"])
    parts = build(cfg, device, dtype)
    gen = torch.Generator(device=device).manual_seed(cfg["seed"])
    cpu_gen = torch.Generator().manual_seed(cfg["seed"] + 1)
    train_x = parts.dataset.train.to(device=device, dtype=dtype)
    n_train = train_x.shape[0]
    ckpt_path = run_dir / "checkpoint.pt"
    perm = torch.randperm(n_train, generator=cpu_gen)
    cursor, first_step, seconds_before = 0, 1, 0.0
    if resume_state is not None:
        try:
            parts.energy_fn.load_state_dict(resume_state["energy"])
            parts.trainer.load_state_dict(resume_state["trainer"])
            torch.set_rng_state(resume_state["torch_rng"])
            gen.set_state(resume_state["generator"])
            cpu_gen.set_state(resume_state["cpu_generator"])
            perm, cursor = resume_state["perm"], int(resume_state["cursor"])
            first_step = int(resume_state["step"]) + 1
            seconds_before = float(resume_state["train_seconds"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise checkpoint.CheckpointError(
                f"checkpoint {ckpt_path} does not fit this run's config "
                f"({str(e).splitlines()[0][:120]})"
            ) from None
    perm = perm.to(device)

    def save(step: int, seconds: float) -> None:
        checkpoint.save(ckpt_path, {
            "energy": parts.energy_fn.state_dict(),
            "trainer": parts.trainer.state_dict(),
            "step": step,
            "train_seconds": seconds,
            "energy_spec": checkpoint.energy_spec(cfg["energy"]),
            "config": stored_config or {},
            "event_shape": list(parts.dataset.event_shape),
            "torch_rng": torch.get_rng_state(),
            "generator": gen.get_state(),
            "cpu_generator": cpu_gen.get_state(),
            "perm": perm.cpu(),
            "cursor": cursor,
            **({"data_transform": parts.dataset.transform} if parts.dataset.transform else {}),
        })

    # The first non-finite step, tracked on the device (no per-step host sync) and checked on
    # logging steps and before every checkpoint, so a bad state is never saved (house rule 4).
    first_bad = torch.zeros((), dtype=torch.long, device=device)

    def check_finite(step: int, values: dict[str, float] | None = None) -> None:
        bad_step = int(first_bad)
        if bad_step:
            bad = [k for k, v in (values or {}).items() if not math.isfinite(v)]
            what = ", ".join(bad) if bad else "loss or energies"
            keys = ", ".join(suspect_keys(cfg, bad, learns)[:8])
            hint = ("a smaller trainer.optimizer.lr or sampler.step_size" if learns else
                    "a smaller sampler.step_size (unadjusted Langevin diverges where the energy "
                    "is steep; sampler=mala or hmc reject such moves)")
            raise NonFiniteError(
                f"non-finite {what} at step {bad_step} (stopped at step {step}); it depends on "
                f"{keys}: try {hint}; the last good checkpoint is "
                f"{ckpt_path if ckpt_path.exists() else 'not written yet'}"
            )

    learns = getattr(parts.trainer, "learns", True)
    reporter.phase = "training"
    start = time.perf_counter()
    step = first_step - 1
    with deferred_signals() as received:
        for step in range(first_step, parts.steps + 1):
            if cursor + parts.batch_size > n_train:  # a new epoch: reshuffle
                perm = _to_device(torch.randperm(n_train, generator=cpu_gen), device)
                cursor = 0
            batch = train_x[perm[cursor : cursor + parts.batch_size]]  # [batch, *event]
            cursor += parts.batch_size
            stats = parts.trainer.step(batch, gen)
            # Host-side stats (a 0-d CPU lr or fixed step size, made from Python floats) are
            # finite by construction and cannot be stacked with device tensors.
            finite = torch.stack([torch.isfinite(v).all() for v in stats.values()
                                  if v.device == first_bad.device]).all()
            first_bad = torch.where((first_bad == 0) & ~finite, step, first_bad)
            last = step == parts.steps
            if step % cfg["log_every"] == 0 or last or step == first_step:
                values = _to_floats(stats)
                check_finite(step, values)
                reporter.scalars(step, values)
                reporter.status(step, values)
            if cfg["image_every"] and step % cfg["image_every"] == 0 and not last and learns:
                _plot(reporter, parts, parts.trainer.negatives(), step, final=False)
            if (cfg["checkpoint_every"] and step % cfg["checkpoint_every"] == 0) or received:
                check_finite(step)
                save(step, seconds_before + time.perf_counter() - start)
            if received:
                reporter.close_progress()
                raise Interrupted(received[0], step, ckpt_path)
    train_seconds = seconds_before + time.perf_counter() - start
    check_finite(step)
    save(parts.steps, train_seconds)
    reporter.close_progress()

    reporter.phase = "evaluation"
    if learns:
        metrics, samples = _evaluate_model(cfg, parts, reporter, gen, cpu_gen, device, dtype)
    else:
        parts.trainer.seconds = train_seconds
        metrics, samples = _evaluate_chains(cfg, parts, reporter, cpu_gen)
    metrics["train_seconds"] = train_seconds
    metrics["steps"] = parts.steps
    temperature = getattr(parts.sampler, "temperature", None)  # Langevin: T = σ²/(2η)
    if temperature is not None:
        metrics["sampler_temperature"] = float(temperature)
    samples = parts.dataset.to_original(samples.detach())  # the data's own units
    np.save(run_dir / "samples.npy", samples.cpu().numpy())
    reporter.scalars(parts.steps, {f"eval/{k}": v for k, v in metrics.items()
                                   if isinstance(v, float) and math.isfinite(v)})
    write_metrics(run_dir, metrics)
    return metrics


def _evaluate_model(cfg: dict[str, Any], parts: Parts, reporter: Reporter,
                    gen: torch.Generator, cpu_gen: torch.Generator, device: torch.device,
                    dtype: torch.dtype) -> tuple[dict[str, float], torch.Tensor]:
    """A fitted model: fresh chains of the configured sampler (with independence-MH restarts when
    eval.restarts), then NLL/KL/MMD on held-out data."""
    ev = cfg["eval"]
    train_x = parts.dataset.train.to(device=device, dtype=dtype)
    noise = getattr(parts.trainer, "noise", None)  # where the trainer (re)starts its chains
    if parts.dataset.dim != 2 and noise is not None:  # D > 2: eval chains start there too
        x0 = noise.sample(ev["n_samples"], cpu_gen)
    else:
        x0 = initial_points(ev["n_samples"], parts.dataset.bounds, train_x, cpu_gen)
    restart = None
    if ev["restarts"] and not parts.dataset.is_image:  # a Gaussian proposal never fits images
        fitted = DataNoise(train_x, "gaussian", 1.0, "eval.restarts")

        def restart(x: torch.Tensor) -> torch.Tensor:
            return reinitialise(x, fitted, 1.0, gen, parts.fast_energy_fn)[0]

    samples, accept = draw_samples(
        parts.fast_energy_fn, parts.sampler, x0.to(device=device, dtype=dtype), ev["warmup"],
        ev["sampler_steps"], gen, restart,
    )
    metrics = evaluate(parts.energy_fn, parts.dataset, samples.detach(), ev["grid"],
                       ev["mmd_points"], cpu_gen)
    metrics["eval_acceptance_rate"] = float(accept)
    ds = parts.dataset
    if ds.dim != 2:  # no quadrature: log Z by annealed importance sampling (+ image metrics)
        metrics.update(evaluate_high_dim(
            parts.energy_fn, ds, samples.detach(), gen, ev["ais_chains"],
            ev["ais_steps"],
        ))
    if ds.transform is not None and "test_nll" in metrics:  # standardised 2-D data
        metrics["test_nll_original_units"] = metrics["test_nll"] + ds.log_scale
    _plot(reporter, parts, samples, parts.steps, final=True)
    return metrics, samples


def _evaluate_chains(cfg: dict[str, Any], parts: Parts, reporter: Reporter,
                     cpu_gen: torch.Generator) -> tuple[dict[str, float], torch.Tensor]:
    """Sampling only: diagnostics of the chains themselves (ESS, R-hat, errors vs the truth)."""
    trainer, energy_fn = parts.trainer, parts.energy_fn
    samples = trainer.negatives()
    metrics = trainer.diagnostics()
    sample_exact = getattr(energy_fn, "sample", None)
    if sample_exact is not None:
        n = min(samples.shape[0], cfg["eval"]["mmd_points"])
        exact = sample_exact(n, torch.Generator(device=samples.device).manual_seed(cfg["seed"]))
        metrics["mmd"] = float(mmd(samples[:n].flatten(1).double(), exact.flatten(1).double()))
    sets = {k: (a.detach().cpu().double().flatten(1).numpy(),
                b.detach().cpu().double().flatten(2).numpy())
            for k, (a, b) in trainer.chain_sets().items()}
    if samples[0].numel() == 2:
        start = next(iter(sets.values()))[0]
        box = getattr(energy_fn, "bounds", parts.dataset.bounds)
        box = plots.covering_box(box, start)
        runs = {k: trace for k, (_, trace) in sets.items()}
        fig = plots.chains_figure(energy_fn, start, runs, box)
        reporter.figure("chains", fig, parts.steps, "samples.png")
    trace = trainer.trace_array().detach().cpu().double().flatten(2).numpy()
    reporter.figure("trace", plots.trace_figure(trace), parts.steps, "trace.png")
    return metrics, samples
