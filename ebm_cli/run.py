"""The one loop of a run: start-up, training steps (logging, images, checkpoints on cadence),
evaluation, outputs. Building is build.py, the final evaluation assess.py, figures figures.py."""

from __future__ import annotations

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
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ebm_cli import checkpoint
from ebm_cli.app.config_check import LOOP_KEYS
from ebm_cli.assess import evaluate_chains, evaluate_model
from ebm_cli.build import Parts, build, resolve_device
from ebm_cli.evaluation.quadrature import CURVE_GRID, held_out_nll
from ebm_cli.reporting.figures import plot
from ebm_cli.reporting.report import Reporter, start_banner, write_metrics
from ebm_cli.samplers.base import Tempered
from ebm_cli.samplers.compiled import compile_seconds
from ebm_cli.trainers.base import CountsGradients

log = logging.getLogger("ebm_cli")


class NonFiniteError(Exception):
    """The loss or an energy became NaN/inf; the message names the step and what to change."""


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device`` without waiting for the device: a copy from pageable memory
    would synchronise with the GPU's queue, one from pinned memory is asynchronous (the caching
    host allocator keeps the pinned block until the copy has run)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _to_floats(stats: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(v) for k, v in stats.items()}  # host sync: logging steps only


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


# ema: warn when the first half of the updates weighs more than this in the average θ̄ at the
# end. Measured on eight_gaussians (2000 updates, seeds 0, 1): d = 0.999 (weight d^1000 = 37 %)
# raised the KL from 0.017 to 0.23 nats; d = 0.995 (0.7 %) and 0.99 matched the raw weights.
EMA_REMEMBERED = 0.01


def averaged(energy_fn: nn.Module, decay: float | None) -> AveragedModel | None:
    """``ema`` config key: an exponential moving average of the energy's parameters, None when
    off. After update k (θₖ the trained weights): θ̄₁ = θ₁, θ̄ₖ = d·θ̄ₖ₋₁ + (1 − d)·θₖ (torch's
    AveragedModel with its EMA function). Buffers are not averaged but copied from the live
    model at every update (use_buffers=False): spectral norm's power-iteration vectors must
    stay unit vectors, and an average of an integer buffer would be truncated."""
    if decay is None:
        return None
    return AveragedModel(energy_fn, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=False)


def too_slow(decay: float, steps: int) -> str | None:
    """Why ``decay`` remembers too much of an early, poorly trained θ for a run of ``steps``
    updates: the first half of them weighs d^(steps/2) in θ̄ at the end; None if ≤ 1 %."""
    remembered = decay ** (steps / 2)
    if remembered <= EMA_REMEMBERED:
        return None
    return (f"ema={decay:g} over {steps} updates: their first half still weighs "
            f"d^{steps // 2} = {100 * remembered:.0f} % of the evaluated average θ̄ (its window "
            f"1/(1 − d) is {1 / (1 - decay):.0f} updates); a decay of at most "
            f"1 − 10/trainer.steps = {1 - 10 / steps:.4g} forgets them")


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


@dataclass
class Progress:
    """What the loop carries from step to step besides the parts' own state (all of it goes
    into every checkpoint): the random streams, the data order and the step reached."""

    gen: torch.Generator  # chains, proposals, noise (on the run's device)
    cpu_gen: torch.Generator  # data order, chain starts
    perm: torch.Tensor  # this epoch's order of the training points [N]
    cursor: int = 0  # next position in perm
    step: int = 0  # the last step completed
    seconds: float = 0.0  # training time of earlier processes of this run (resumed runs)


class Loop:
    """The steps of one run: batches, the trainer's update, logging, images and checkpoints on
    their cadence, non-finite detection; SIGINT/SIGTERM stop it between two steps."""

    def __init__(self, cfg: dict[str, Any], parts: Parts, run_dir: Path, reporter: Reporter,
                 stored_config: dict[str, Any] | None, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.cfg, self.parts, self.reporter = cfg, parts, reporter
        self.stored_config = stored_config or {}
        self.ckpt_path = run_dir / "checkpoint.pt"
        self.device = device
        self.learns = not parts.sampling
        self.train_x = (parts.dataset.train.to(device=device, dtype=dtype) if parts.dataset
                        else torch.empty(0, *parts.event_shape))  # [N, *event]
        gen = torch.Generator(device=device).manual_seed(cfg["seed"])
        cpu_gen = torch.Generator().manual_seed(cfg["seed"] + 1)
        perm = (torch.randperm(self.train_x.shape[0], generator=cpu_gen) if parts.dataset
                else torch.empty(0, dtype=torch.long))
        self.progress = Progress(gen, cpu_gen, perm)
        # The first non-finite step, tracked on the device (no per-step host sync) and checked
        # on logging steps and before every checkpoint, so a bad state is never saved (rule 4).
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)
        # The learning curve of the held-out NLL (2-D data: quadrature on a CURVE_GRID² grid)
        # every eval_every steps; deterministic (no random numbers), so resuming stays exact.
        ds = parts.dataset
        self.curve = bool(cfg["eval_every"] and ds is not None and ds.dim == 2
                          and ds.bounds is not None and len(ds.bounds) == 2)
        self.test_x = (ds.test.to(device=device, dtype=dtype) if self.curve and ds is not None
                       else None)  # [N_test, 2]
        self.curve_seconds = 0.0  # this process's time in the curve (part of train_seconds)
        # ema: the average θ̄ of the weights, updated after every trainer update; the curve and
        # the final evaluation read it (evaluated_energy), the trainer keeps training θ.
        self.ema = averaged(parts.energy_fn, cfg.get("ema")) if self.learns else None
        slow = self.ema is not None and too_slow(cfg["ema"], parts.steps)
        if slow:
            log.warning("%s", slow)

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from a checkpoint of this run: weights, trainer, streams, data order."""
        p, parts = self.progress, self.parts
        try:
            parts.energy_fn.load_state_dict(state["energy"])
            parts.trainer.load_state_dict(state["trainer"])
            if (self.ema is None) != ("ema" not in state):
                raise ValueError(f"it was saved {'with' if 'ema' in state else 'without'} an "
                                 f"EMA of the weights, this run has ema={self.cfg.get('ema')}")
            if self.ema is not None:
                self.ema.load_state_dict(state["ema"])
            torch.set_rng_state(state["torch_rng"])
            p.gen.set_state(state["generator"])
            p.cpu_gen.set_state(state["cpu_generator"])
            p.perm, p.cursor = state["perm"], int(state["cursor"])
            p.step, p.seconds = int(state["step"]), float(state["train_seconds"])
        except (KeyError, RuntimeError, ValueError, TypeError) as e:
            raise checkpoint.CheckpointError(
                f"checkpoint {self.ckpt_path} does not fit this run's config "
                f"({str(e).splitlines()[0][:120]})"
            ) from None

    def save(self, step: int, seconds: float) -> None:
        p, parts = self.progress, self.parts
        transform = parts.dataset.transform if parts.dataset else None
        checkpoint.save(self.ckpt_path, {
            "energy": parts.energy_fn.state_dict(),
            "trainer": parts.trainer.state_dict(),
            "step": step,
            "train_seconds": seconds,
            "energy_spec": checkpoint.energy_spec(self.cfg["energy"]),
            "config": self.stored_config,
            "event_shape": list(parts.event_shape),
            "torch_rng": torch.get_rng_state(),
            "generator": p.gen.get_state(),
            "cpu_generator": p.cpu_gen.get_state(),
            "perm": p.perm.cpu(),
            "cursor": p.cursor,
            **({"data_transform": transform} if transform else {}),
            **({"ema": self.ema.state_dict()} if self.ema is not None else {}),
        })

    def check_finite(self, step: int, values: dict[str, float] | None = None) -> None:
        """Stop with the first non-finite step, the keys that can cause it and a hint."""
        bad_step = int(self.first_bad)
        if not bad_step:
            return
        bad = [k for k, v in (values or {}).items() if not math.isfinite(v)]
        what = ", ".join(bad) if bad else "loss or energies"
        keys = ", ".join(suspect_keys(self.cfg, bad, self.learns)[:8])
        hint = ("a smaller trainer.optimizer.lr or sampler.step_size" if self.learns else
                "a smaller sampler.step_size (unadjusted Langevin diverges where the energy "
                "is steep; sampler=mala or hmc reject such moves)")
        last_good = self.ckpt_path if self.ckpt_path.exists() else "not written yet"
        raise NonFiniteError(
            f"non-finite {what} at step {bad_step} (stopped at step {step}); it depends on "
            f"{keys}: try {hint}; the last good checkpoint is {last_good}"
        )

    def next_batch(self) -> torch.Tensor:
        """The next training batch [batch_size, *event]; a new epoch reshuffles."""
        p, n, size = self.progress, self.train_x.shape[0], self.parts.batch_size
        if p.cursor + size > n:
            p.perm = _to_device(torch.randperm(n, generator=p.cpu_gen), self.device)
            p.cursor = 0
        batch = self.train_x[p.perm[p.cursor : p.cursor + size]]
        p.cursor += size
        return batch

    def _track(self, step: int, stats: dict[str, torch.Tensor]) -> None:
        # Host-side stats (a 0-d CPU lr or fixed step size, made from Python floats) are
        # finite by construction and cannot be stacked with device tensors.
        finite = torch.stack([torch.isfinite(v).all() for v in stats.values()
                              if v.device == self.first_bad.device]).all()
        self.first_bad = torch.where((self.first_bad == 0) & ~finite, step, self.first_bad)

    def held_out_nll(self, step: int) -> dict[str, float]:
        """``quality/test_nll`` on eval_every steps (2-D data), else nothing."""
        if not self.curve or step % self.cfg["eval_every"]:
            return {}
        assert self.test_x is not None and self.parts.dataset is not None
        start = time.perf_counter()
        value = held_out_nll(self.evaluated_energy(), self.test_x, self.parts.dataset.bounds,
                             CURVE_GRID)
        self.curve_seconds += time.perf_counter() - start
        return {"quality/test_nll": value}

    def evaluated_energy(self) -> nn.Module:
        """The weights evaluation reads: the EMA copy θ̄ when ``ema`` is on, else θ itself."""
        return self.ema.module if self.ema is not None else self.parts.energy_fn

    def use_evaluated_weights(self) -> None:
        """Before the final evaluation (chains, metrics, figures): with ``ema`` on, θ̄ copied
        into the energy in place, so its compiled transitions read θ̄ too; the checkpoint,
        saved before, keeps θ and θ̄ for a resume."""
        if self.ema is not None:
            self.parts.energy_fn.load_state_dict(self.ema.module.state_dict())
            log.info("evaluating the EMA of the weights (ema=%g)", self.cfg["ema"])

    def run(self) -> float:
        """Steps after the last completed one up to trainer.steps; returns the training time
        (seconds, this run's earlier processes included). The final checkpoint is written."""
        cfg, parts, reporter, p = self.cfg, self.parts, self.reporter, self.progress
        p.perm = p.perm.to(self.device)
        first = p.step + 1
        start = time.perf_counter()
        with deferred_signals() as received:
            for step in range(first, parts.steps + 1):
                stats = (parts.trainer.step(p.gen) if parts.sampling
                         else parts.trainer.step(self.next_batch(), p.gen))
                self._track(step, stats)
                if self.ema is not None:
                    self.ema.update_parameters(parts.energy_fn)
                last = step == parts.steps
                quality = self.held_out_nll(step)
                if quality:
                    reporter.scalars(step, quality)
                if step % cfg["log_every"] == 0 or last or step == first:
                    values = _to_floats(stats)
                    self.check_finite(step, values)
                    reporter.scalars(step, values)
                    reporter.status(step, {**values, **quality})
                if (cfg["image_every"] and step % cfg["image_every"] == 0 and not last
                        and self.learns):
                    plot(reporter, parts, parts.trainer.negatives(), step, final=False)
                p.step = step
                if (cfg["checkpoint_every"] and step % cfg["checkpoint_every"] == 0) or received:
                    self.check_finite(step)
                    self.save(step, p.seconds + time.perf_counter() - start)
                if received:
                    reporter.close_progress(step)  # the step reached, not trainer.steps
                    raise Interrupted(received[0], step, self.ckpt_path)
        seconds = p.seconds + time.perf_counter() - start
        self.check_finite(p.step)
        self.save(parts.steps, seconds)
        reporter.close_progress()
        return seconds


DTYPES = {"float32": torch.float32, "float64": torch.float64}  # the config's dtype key


def _setup(cfg: dict[str, Any]) -> tuple[torch.device, torch.dtype]:
    """Threads, the global seed (parameter initialisation, data split), device and dtype."""
    if cfg["threads"] > 0:
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    return resolve_device(cfg["device"]), DTYPES[cfg["dtype"]]


def train(cfg: dict[str, Any], run_dir: Path, reporter: Reporter,
          resume_state: dict[str, Any] | None = None,
          stored_config: dict[str, Any] | None = None,
          choices: dict[str, str | None] | None = None) -> dict[str, float]:
    """Run the configured job in ``run_dir``; returns the metrics written to metrics.json.

    Phases: start-up (seed, build the parts, restore a checkpoint), training (the loop),
    evaluation (fresh chains and held-out metrics, of the EMA weights θ̄ with ``ema`` on and
    then ``ema_decay`` in the metrics; or chain diagnostics), outputs. With
    ``resume_state`` (a loaded checkpoint of this run) the loop continues after its step with
    the same weights, optimizer, chains, data order and random streams, so a resumed run on CPU
    ends as one that never stopped. ``stored_config`` (the unresolved config, plain values) goes
    into every checkpoint, so a resume can tell what it may not change. ``choices`` (the
    chosen option of each config group) go into the start banner.

    Each phase after training is timed (Reporter.timed) and its wall time is a metric
    ``seconds_<phase>``: ``startup`` (seeding, building, restoring; not the imports and the
    config composition before it), ``chains`` (the evaluation chains), ``mmd``,
    ``quadrature``, ``modes``, ``diagnostics``, ``ais``, ``figures``, ``outputs``;
    ``seconds_curve`` is the part of train_seconds spent on the quality curve (eval_every).
    """
    reporter.phase = "start-up"
    start = time.perf_counter()
    device, dtype = _setup(cfg)
    parts = build(cfg, device, dtype)
    loop = Loop(cfg, parts, run_dir, reporter, stored_config, device, dtype)
    if resume_state is not None:
        loop.restore(resume_state)
    for line in start_banner(run_dir, choices or {}, str(device), cfg["dtype"],
                             torch.get_num_threads()):
        log.info("%s", line)
    reporter.seconds["startup"] = time.perf_counter() - start
    reporter.phase = "training"
    seconds = loop.run()
    reporter.phase = "evaluation"
    gen, cpu_gen = loop.progress.gen, loop.progress.cpu_gen
    loop.use_evaluated_weights()
    if loop.learns:
        metrics, samples = evaluate_model(cfg, parts, reporter, gen, cpu_gen, device, dtype)
    else:
        parts.trainer.seconds = seconds
        metrics, samples = evaluate_chains(cfg, parts, reporter, cpu_gen)
    metrics["train_seconds"] = seconds
    metrics["steps"] = parts.steps
    if loop.ema is not None:  # the evaluated weights were the EMA θ̄ of this decay
        metrics["ema_decay"] = float(cfg["ema"])
    if isinstance(parts.trainer, CountsGradients):  # over the run's updates
        metrics["gradients_per_update"] = float(parts.trainer.gradients_per_update())
    if loop.curve and loop.curve_seconds > 0:  # at least one point of the curve
        metrics["seconds_curve"] = loop.curve_seconds
    compiling = compile_seconds(parts.fast_energy_fn)  # compile=true: inside train/chains
    if compiling is not None:
        metrics["seconds_compile"] = compiling
    if isinstance(parts.sampler, Tempered):  # Langevin: T = σ²/(2η)
        metrics["sampler_temperature"] = float(parts.sampler.temperature)
    _write_outputs(run_dir, parts, reporter, metrics, samples)
    return metrics


def _write_outputs(run_dir: Path, parts: Parts, reporter: Reporter, metrics: dict[str, float],
                   samples: torch.Tensor) -> None:
    """samples.npy (in the data's own units; a sampling run's in the energy's), the eval/*
    scalars and metrics.json (with the phases' ``seconds_<phase>``)."""
    with reporter.timed("outputs", stage="outputs", detail="samples.npy, metrics.json"):
        samples = samples.detach()
        if parts.dataset is not None:
            samples = parts.dataset.to_original(samples)
        np.save(run_dir / "samples.npy", samples.cpu().numpy())
        reporter.scalars(parts.steps, {f"eval/{k}": v for k, v in metrics.items()
                                       if isinstance(v, float) and math.isfinite(v)})
    metrics.update({f"seconds_{name}": s for name, s in reporter.seconds.items()})
    write_metrics(run_dir, metrics)
