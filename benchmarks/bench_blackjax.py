"""Our samplers side by side with BlackJAX's jitted scan of the same kernel (issue 17, item 5).

Per transition CPU time on ONE thread, process CPU time (time.process_time: robust to other jobs
holding the cores of a shared machine), interleaved rounds (ours, theirs, ours, theirs, …, the
order reversed every other round) and medians over rounds. Both sides run the same target, the
same kernel with the same step size and identity mass, from the same starting chains (exact
draws from the target, drawn here and handed to the JAX side as a .npy file), float32.

    PYTHONPATH=. python benchmarks/bench_blackjax.py [--rounds 9] [--steps-scale 1.0]
        [--rows mh mala hmc ...] [--jax-python /work/bench-venv/bin/python] [--no-blackjax]
        [--column "NAME=module:function" ...] [--cpu N] [--warm-caches] [--json PATH]

jax and blackjax are never dependencies of the project: they live in their own virtual
environment, used only by this benchmark (docs/speed.md says how to make it). This script runs
with the project's venv and times our side in-process; benchmarks/_blackjax_worker.py runs with
the bench venv's python as one long-lived subprocess that compiles each row once
(``jax.jit(lax.scan(vmap(kernel.step)))``, compile time reported separately) and times one call
of ``steps`` transitions per request, so the two sides alternate call by call.

Columns of our side (each a ``StepFactory``: (sampler, energy_fn) -> step(state, generator) ->
state): ``eager`` (sampler.step on the plain energy) and ``energy-compiled`` (sampler.step on
torch.compile(energy): ``compile=true`` as it was up to issue 17, the energy alone compiled).
A third, ``compile=true``, appears by itself once ebm_cli.build.compile_energy returns anything
but a plain torch.compile of the energy (e.g. compiled whole transitions): it runs sampler.step
on what compile_energy returns, i.e. what a run with ``compile=true`` samples with. Any other
variant plugs in without editing this file: ``--column "NAME=module:function"`` with a factory
of the same signature (see ``StepFactory``; a step callable with an int attribute
``steps_per_call`` = k advances k transitions per call and is called steps/k times). Each column
first runs WARMUP_CALLS untimed calls (compiles happen there; their time is reported apart).

Ratios are ours / BlackJAX (> 1: we are slower). Every column's acceptance rate over ``steps``
untimed transitions near the same start is printed (ours read off the chains: the share of
transitions that moved a chain): they must agree within Monte Carlo error, a check that all
columns run the same chain.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch._inductor.codecache
from torch import Tensor, nn

from ebm_cli.build import compile_energy
from ebm_cli.energies.analytic import CorrelatedGaussian, GaussianMixture, Rosenbrock
from ebm_cli.samplers.base import ChainState, Sampler
from ebm_cli.samplers.compiled import MAX_FUSED, DrawsAhead, run_transitions
from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.langevin import MALA
from ebm_cli.samplers.mh import RandomWalkMH

WORKER = Path(__file__).with_name("_blackjax_worker.py")
DEFAULT_JAX_PYTHON = os.environ.get("BENCH_JAX_PYTHON", "/work/bench-venv/bin/python")
XLA_ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
WARMUP_CALLS = 2  # untimed calls of each column before its rounds; their time is "first steps"

Step = Callable[[ChainState, torch.Generator], ChainState]
# The hook for more columns: (sampler, energy_fn [B, *event] -> [B]) -> one-transition callable.
StepFactory = Callable[[Sampler, nn.Module], Step]


@dataclass(frozen=True)
class Row:
    """One benchmark row: a target, a kernel and its fixed settings (no adaptation)."""

    key: str
    label: str
    target: str  # two_gaussians | rosenbrock | gaussian
    kernel: str  # rwmh | mala | hmc
    chains: int
    step_size: float
    steps: int  # transitions per timed call (scaled by --steps-scale)
    n_leapfrog: int = 1
    dim: int = 2

    def energy(self) -> nn.Module:
        """The analytic energy of ebm_cli/energies/analytic.py, float32."""
        if self.target == "two_gaussians":
            e: nn.Module = GaussianMixture()  # means (±2, 0), σ = 0.5, equal weights
        elif self.target == "rosenbrock":
            e = Rosenbrock()  # a = 1, b = 100, T = 2
        else:
            e = CorrelatedGaussian(dim=self.dim, correlation=0.9)  # the config's default ρ
        return e.to(torch.float32)

    def sampler(self) -> Sampler:
        """Our sampler with a fixed step size, identity mass, no jitter of ε or L."""
        if self.kernel == "rwmh":
            return RandomWalkMH(step_size=self.step_size)
        if self.kernel == "mala":
            return MALA(step_size=self.step_size)
        return HMC(step_size=self.step_size, n_leapfrog=self.n_leapfrog, jitter=0.0,
                   jitter_n_leapfrog=False)


ROWS = (
    Row("mh", "two_gaussians RW-MH", "two_gaussians", "rwmh", 1024, 0.5, 400),
    Row("mala", "two_gaussians MALA", "two_gaussians", "mala", 1024, 0.05, 200),
    Row("hmc", "two_gaussians HMC L=10", "two_gaussians", "hmc", 1024, 0.1, 80, 10),
    Row("rosen10", "Rosenbrock HMC L=10", "rosenbrock", "hmc", 1024, 0.02, 80, 10),
    Row("rosen64", "Rosenbrock HMC L=64", "rosenbrock", "hmc", 1024, 0.02, 24, 64),
    Row("gauss100", "100-D Gaussian HMC L=4", "gaussian", "hmc", 1024, 0.1, 60, 4, 100),
    Row("d2_16k", "2-D Gaussian HMC L=4, 16384 chains", "gaussian", "hmc", 16384, 0.1, 40, 4, 2),
    Row("d100_16k", "100-D Gaussian HMC L=4, 16384 chains", "gaussian", "hmc", 16384, 0.1, 6, 4,
        100),
)


def eager_step(sampler: Sampler, energy_fn: nn.Module) -> Step:
    """``sampler.step`` on the plain energy: what ``compile=false`` runs."""
    def step(state: ChainState, generator: torch.Generator) -> ChainState:
        return sampler.step(energy_fn, state, generator)[0]
    return step


def energy_compiled_step(sampler: Sampler, energy_fn: nn.Module) -> Step:
    """``sampler.step`` on torch.compile(energy) (default mode): ``compile=true`` up to issue
    17, spelled out so that the column keeps meaning that when build.py changes."""
    return eager_step(sampler, torch.compile(energy_fn))


def build_compile_step(sampler: Sampler, energy_fn: nn.Module) -> Step:
    """``sampler.step`` on ebm_cli.build.compile_energy(energy, True): whatever ``compile=true``
    does in this tree (e.g. compiled whole transitions, once they land)."""
    return eager_step(sampler, compile_energy(energy_fn, True, torch.device("cpu")))


def compile_true_is_energy_only(device: torch.device) -> bool:
    """Whether build.compile_energy is still a plain torch.compile of the energy (then the
    ``compile=true`` column would repeat ``energy-compiled``). Compiles nothing."""
    try:
        wrapped = compile_energy(nn.Identity(), True, device)
    except Exception:  # no compiler here (ConfigError): no compile=true column to add either
        return True
    return isinstance(wrapped, torch._dynamo.eval_frame.OptimizedModule)


class FusedSteps:
    """MAX_FUSED transitions per call by ``run_transitions`` on what compile_energy returns:
    what MLE runs for its k negatives per update with ``compile=true`` (one graph of k kernels
    per chunk) when the sampler declares DrawsAhead (other samplers: the column is refused)."""

    steps_per_call = MAX_FUSED

    def __init__(self, sampler: Sampler, energy_fn: nn.Module) -> None:
        if not isinstance(sampler, DrawsAhead):
            raise ValueError("not DrawsAhead: its k steps are k compile=true calls")
        self.sampler = sampler
        self.energy_fn = compile_energy(energy_fn, True, torch.device("cpu"))
        self._infos: list[Any] = []

    def __call__(self, state: ChainState, generator: torch.Generator) -> ChainState:
        state, infos = run_transitions(self.sampler, self.energy_fn, state, generator,
                                       MAX_FUSED)
        self._infos = infos
        return state

    def last_acceptance(self) -> float:
        """Share of the last call's transitions that were accepted, per transition as the
        other columns' check reads (one host read)."""
        return float(torch.stack([i.is_accepted for i in self._infos]).float().mean())


COLUMNS: dict[str, StepFactory] = {"eager": eager_step, "energy-compiled": energy_compiled_step}
if not compile_true_is_energy_only(torch.device("cpu")):
    COLUMNS["compile=true"] = build_compile_step
    COLUMNS[f"compile=true, {MAX_FUSED} per call"] = FusedSteps


def load_factory(spec: str) -> tuple[str, StepFactory]:
    """``NAME=module:function`` -> (NAME, the function)."""
    name, _, target = spec.partition("=")
    module, _, attr = target.partition(":")
    if not (name and module and attr):
        raise SystemExit(f"error: --column must be NAME=module:function, got {spec!r}")
    try:
        return name, getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise SystemExit(f"error: --column {spec!r}: {e}") from None


class OurColumn:
    """One of our columns on one row: its own chains and generator, carried across rounds."""

    def __init__(self, factory: StepFactory, row: Row, x0: Tensor, steps: int, seed: int) -> None:
        energy, sampler = row.energy(), row.sampler()
        self.step = factory(sampler, energy)
        self.per_call = int(getattr(self.step, "steps_per_call", 1))
        if steps % self.per_call:
            raise ValueError(f"steps={steps} is not a multiple of steps_per_call={self.per_call}")
        self.calls = steps // self.per_call
        self.generator = torch.Generator().manual_seed(seed)
        self.state = sampler.init(energy, x0.clone())
        wall = time.perf_counter()
        for _ in range(WARMUP_CALLS):  # compiles, if anything does (some at the 2nd call)
            self.state = self.step(self.state, self.generator)
        self.first_call_s = time.perf_counter() - wall
        self.accept = self.moved_share()

    def moved_share(self) -> float:
        """Acceptance over one untimed call's worth of transitions, read off the chains: an
        accepted proposal moves x (almost surely), a rejected one leaves it. Per call, for a
        column with steps_per_call > 1 (FusedSteps: per transition, from its Infos)."""
        moved = torch.zeros(())
        for _ in range(self.calls):
            previous = self.state.x
            self.state = self.step(self.state, self.generator)
            if isinstance(self.step, FusedSteps):
                moved += self.step.last_acceptance()
            else:
                moved += (self.state.x != previous).flatten(1).any(dim=1).float().mean()
        return float(moved) / self.calls

    def call(self) -> float:
        """CPU seconds of ``steps`` transitions (this process, one thread)."""
        start = time.process_time()
        state = self.state
        for _ in range(self.calls):
            state = self.step(state, self.generator)
        self.state = state
        return time.process_time() - start


class Worker:
    """The BlackJAX worker subprocess (bench venv), one JSON line per request and reply."""

    def __init__(self, python: str, cpu: int | None) -> None:
        env = dict(os.environ, XLA_FLAGS=XLA_ONE_THREAD, JAX_PLATFORMS="cpu",
                   OMP_NUM_THREADS="1", PYTHONPATH="")
        cmd = [python, str(WORKER)]
        if cpu is not None and shutil.which("taskset"):
            cmd = ["taskset", "-c", str(cpu), *cmd]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, env=env)

    def ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the BlackJAX worker exited (status {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def jax_spec(row: Row, steps: int, x0_path: Path, seed: int) -> dict[str, Any]:
    """The row as the worker reads it, with the Gaussian's exact float32 μ and Σ⁻¹."""
    spec: dict[str, Any] = {"name": row.key, "target": row.target, "kernel": row.kernel,
                            "step_size": row.step_size, "n_leapfrog": row.n_leapfrog,
                            "steps": steps, "x0": str(x0_path), "seed": seed}
    if row.target == "gaussian":
        energy = row.energy()
        spec["mean"] = energy.mean.tolist()
        spec["precision"] = energy.precision.tolist()
    return spec


def cold_compiles(cache: Path) -> None:
    """Make the next torch.compile start cold, as in a first run: a fresh (empty) inductor
    cache directory, and the in-memory caches of built kernels cleared (they would otherwise
    reuse an identical C++ kernel built for an earlier row or column). Not dynamo's reset: it
    would drop the graphs of the row's columns built before (they would recompile when timed);
    run_row resets once per row, before any column is built."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache)
    for name in ("PyCodeCache", "CppCodeCache", "CppPythonBindingsCodeCache",
                 "CppWrapperCodeCache"):
        found = getattr(torch._inductor.codecache, name, None)
        if found is not None and hasattr(found, "cache_clear"):
            found.cache_clear()


def run_row(row: Row, columns: dict[str, StepFactory], worker: Worker | None, rounds: int,
            steps: int, tmp: Path, seed: int, cold: Path | None) -> dict[str, Any]:
    """Warm up every column, then ``rounds`` interleaved timed calls; medians in µs/step.
    ``cold``: a folder for per-column inductor caches (None: torch's usual warm caches)."""
    energy = row.energy()
    # x0 from its own stream: drawn with the chains' seed, the first momenta would equal the
    # normals that made x0 (correlated with it, which visibly biases HMC's acceptance)
    x0_gen = torch.Generator().manual_seed(seed + 7919)
    x0 = energy.sample(row.chains, x0_gen).to(torch.float32)
    result: dict[str, Any] = {"row": row, "steps": steps, "us": {}, "first_s": {}, "raw": {}}
    result["accept"] = {}
    torch._dynamo.reset()  # the previous row's graphs: done with
    timers: dict[str, Callable[[], float]] = {}
    for name, factory in columns.items():
        if cold is not None:
            # a folder name the C++ compiler's command line takes as it is (no spaces)
            cold_compiles(cold / re.sub(r"[^A-Za-z0-9_.=-]", "_", f"{row.key}-{name}"))
        try:
            col = OurColumn(factory, row, x0, steps, seed)
        except Exception as e:  # a column that cannot run here is shown as such, not fatal
            result["us"][name] = None
            result["first_s"][name] = f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"
            continue
        result["first_s"][name] = col.first_call_s
        result["accept"][name] = col.accept
        timers[name] = col.call
    if worker is not None:
        path = tmp / f"{row.key}.npy"
        np.save(path, x0.numpy())
        reply = worker.ask({"cmd": "setup", "row": jax_spec(row, steps, path, seed)})
        if "error" in reply:
            result["us"]["BlackJAX"] = None
            result["first_s"]["BlackJAX"] = reply["error"]
        else:
            result["first_s"]["BlackJAX"] = reply["compile_s"]
            result["accept"]["BlackJAX"] = reply["warmup_accept"]
            result["versions"] = reply["versions"]
            timers["BlackJAX"] = lambda: worker.ask({"cmd": "time", "name": row.key})["cpu_s"]
    order = list(timers)
    raw: dict[str, list[float]] = {name: [] for name in order}
    for r in range(rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            raw[name].append(timers[name]() / steps * 1e6)
    for name in order:
        result["us"][name] = statistics.median(raw[name])
    result["raw"] = raw
    return result


def fmt(us: float | None) -> str:
    return "—" if us is None else f"{us:,.0f}"


def table(results: list[dict[str, Any]], names: list[str], blackjax: bool) -> str:
    """The markdown table: medians in µs per transition, ratios ours / BlackJAX."""
    ours = [n for n in names if n != "BlackJAX"]
    head = ["row", "chains", "steps/call"] + [f"ours {n} µs" for n in ours]
    if blackjax:
        head += ["BlackJAX µs"] + [f"{n} / BlackJAX" for n in ours]
    head.append("accept " + " · ".join(names))
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for res in results:
        row, us = res["row"], res["us"]
        cells = [row.label, f"{row.chains}", f"{res['steps']}"] + [fmt(us.get(n)) for n in ours]
        if blackjax:
            bj = us.get("BlackJAX")
            cells.append(fmt(bj))
            for n in ours:
                cells.append("—" if bj is None or us.get(n) is None else f"{us[n] / bj:.2f}×")
        acc = res["accept"]
        cells.append(" · ".join("—" if acc.get(n) is None else f"{acc[n]:.3f}" for n in names))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compile_table(results: list[dict[str, Any]], names: list[str]) -> str:
    """Wall seconds before timing: our columns' first WARMUP_CALLS transitions (torch.compile
    happens there), BlackJAX's ahead-of-time jit lowering + XLA compile of the whole scan."""
    heads = ["BlackJAX compile s" if n == "BlackJAX" else f"ours {n} first 2 steps s"
             for n in names]
    lines = ["| row | " + " | ".join(heads) + " |",
             "|---|" + "---:|" * len(names)]
    for res in results:
        cells = []
        for n in names:
            v = res["first_s"].get(n)
            cells.append("—" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v)))
        lines.append(f"| {res['row'].label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9, help="timed calls per column and row")
    parser.add_argument("--steps-scale", type=float, default=1.0,
                        help="multiply every row's transitions per timed call")
    parser.add_argument("--rows", nargs="+", choices=[r.key for r in ROWS],
                        default=[r.key for r in ROWS])
    parser.add_argument("--jax-python", default=DEFAULT_JAX_PYTHON,
                        help="python of the venv holding jax and blackjax")
    parser.add_argument("--no-blackjax", action="store_true", help="time our side only")
    parser.add_argument("--no-energy-compiled", action="store_true",
                        help="skip the energy-compiled (torch.compile of the energy) column")
    parser.add_argument("--column", action="append", default=[], metavar="NAME=module:function",
                        help="one more of our columns: a StepFactory (sampler, energy) -> step")
    parser.add_argument("--cpu", type=int, default=None,
                        help="pin both processes to this CPU (default: the last one allowed)")
    parser.add_argument("--warm-caches", action="store_true",
                        help="let torch.compile use its on-disk caches (default: cold compiles, "
                             "like a first run; JAX's persistent cache is off by default too)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write every round here")
    args = parser.parse_args()
    if args.rounds < 1 or args.steps_scale <= 0:
        raise SystemExit("error: --rounds must be >= 1 and --steps-scale > 0")

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    cpu = args.cpu
    if hasattr(os, "sched_setaffinity"):
        cpu = max(os.sched_getaffinity(0)) if cpu is None else cpu
        os.sched_setaffinity(0, {cpu})
    columns = dict(COLUMNS)
    if args.no_energy_compiled:
        del columns["energy-compiled"]
    columns.update(load_factory(spec) for spec in args.column)

    worker = None
    if not args.no_blackjax:
        if not Path(args.jax_python).exists():
            raise SystemExit(
                f"error: no python at {args.jax_python} for the BlackJAX side; make the bench "
                "venv (docs/speed.md), pass --jax-python PATH, or run with --no-blackjax")
        worker = Worker(args.jax_python, cpu)
    load = os.getloadavg()
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, pinned to CPU {cpu}, 1 thread; load average {load[0]:.1f}; "
          f"torch {torch.__version__}", flush=True)
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for row in (r for r in ROWS if r.key in args.rows):
                steps = max(1, round(row.steps * args.steps_scale))
                start = time.perf_counter()
                cold = None if args.warm_caches else Path(tmp) / "inductor"
                res = run_row(row, columns, worker, args.rounds, steps, Path(tmp), args.seed, cold)
                results.append(res)
                shown = ", ".join(f"{k} {fmt(v)}" for k, v in res["us"].items())
                print(f"  {row.label}: {shown} µs/step ({time.perf_counter() - start:.0f} s)",
                      file=sys.stderr, flush=True)
    finally:
        if worker is not None:
            worker.close()
    names = list(columns) + ([] if worker is None else ["BlackJAX"])
    versions = next((r["versions"] for r in results if "versions" in r), None)
    if versions:
        print(f"# jax {versions['jax']} (jaxlib {versions['jaxlib']}), blackjax "
              f"{versions['blackjax']}, backend {versions['backend']}")
    print(f"# CPU time per transition, median of {args.rounds} interleaved rounds; "
          f"load average at the end {os.getloadavg()[0]:.1f}\n")
    print(table(results, names, worker is not None))
    print("\n" + compile_table(results, names))
    if args.json:
        args.json.write_text(json.dumps(
            [{"row": r["row"].key, "steps": r["steps"], "us": r["us"], "raw": r["raw"],
              "first_s": r["first_s"], "accept": r["accept"]} for r in results], indent=1))


if __name__ == "__main__":
    main()
