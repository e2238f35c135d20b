"""Sizes against this machine's memory: a count whose tensors cannot fit is refused in one line,
before anything is allocated (those known from the config alone, and — once the data's event
shape is known — :func:`check_sizes`)."""

from __future__ import annotations

import math
from typing import Any

from ebm_cli import resources
from ebm_cli.app.errors import ConfigError
from ebm_cli.app.typecheck import _positive_int
from ebm_cli.evaluation.mmd import BANDWIDTH_FACTORS

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
