"""The Python part of benchmarks/gpu_check.sh (issue 17, item 4): what a CUDA machine can tell.

    python benchmarks/bench_gpu.py probe      [--device cuda] [--out DIR]
    python benchmarks/bench_gpu.py samplers   [--device cuda] [--out DIR] [--budget S]
    python benchmarks/bench_gpu.py throughput [--device cuda] [--out DIR] [--budget S]
        [--dims 2 100] [--chains 1024 16384 262144 1048576] [--samplers hmc mala]
        [--modes eager compiled cudagraphs] [--column "NAME=module:function" ...]

probe: torch/CUDA facts and the suspected device mismatch — a ``torch.Generator(device="cuda")``
(what run.py makes from ``device=cuda``/``auto``: ``torch.device("cuda")``, no index) against
a tensor on it (``cuda:0``), and what the places that compare devices do with that
(trainers/buffer.py: DataNoise's law moved "once" by ``log_norm.device != device``).

samplers: every sampler config of configs/sampler/ composed by Hydra, warmed up
(samplers/adaptation.warmup) and run on a correlated 4-D Gaussian with a generator made the way
run.py makes it; the final chains' mean is compared with the truth in units of its Monte Carlo
error (independent chains: SE = σ/√B), the variance as a ratio and in SEs √(2/B). Exact
samplers should read |z| < 5; unadjusted ones (langevin, kinetic_langevin) carry their O(step)
bias; annealed_langevin refuses a target that is not noise-conditional (n/a, by design).

throughput: chain-transitions per second for HMC (L = 10) and MALA on CorrelatedGaussian
targets (ρ = 0.9, D = 2 and 100) at 1k … 1M chains: ``eager``, ``compiled`` (torch.compile of
the energy: ``compile=true`` up to issue 17) and ``cudagraphs`` (the same with
mode="reduce-overhead", CUDA graphs; the config check refuses that mode for runs, so it is tried
here); ``compile=true`` (sampler.step on ebm_cli.build.compile_energy's module) is added by
itself once that is more than a torch.compile of the energy (compiled whole transitions). Any
other variant plugs in as ``--column NAME=module:function``, the StepFactory of
benchmarks/bench_blackjax.py. Each cell:
two first steps (compile, reported), then timed calls (CUDA synchronised around them; median of
3), then the acceptance over a few untimed calls (the share of calls that moved a chain: for a
k-transitions-per-call column, per call) with its Monte Carlo error across the independent
chains; a disagreement with eager beyond 5 SE is flagged (a fast wrong column is no result).
Every section writes its results to --out as it goes, so a section stopped by its time guard
still leaves what it measured.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_blackjax import (  # noqa: E402
    StepFactory,
    compile_true_is_energy_only,
    eager_step,
    load_factory,
)

from ebm_cli.app.errors import ConfigError  # noqa: E402
from ebm_cli.build import compile_energy  # noqa: E402
from ebm_cli.energies.analytic import CorrelatedGaussian  # noqa: E402
from ebm_cli.samplers.base import ChainState, Sampler  # noqa: E402
from ebm_cli.samplers.hmc import HMC  # noqa: E402
from ebm_cli.samplers.langevin import MALA  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def write(out: Path, name: str, text: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(text)


# ---- probe -------------------------------------------------------------------------------
def probe(device: torch.device, out: Path) -> None:
    """Facts about torch and the device, and the generator/tensor device comparison."""
    lines = [f"torch {torch.__version__}, CUDA build {torch.version.cuda}, "
             f"cuda available: {torch.cuda.is_available()}"]
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        lines.append(f"device {props.name}, {props.total_memory / 2**30:.0f} GiB, "
                     f"{props.multi_processor_count} SMs, capability {props.major}.{props.minor}")
        from torch.utils._triton import has_triton
        lines.append(f"triton available: {has_triton()}")
    run_device = torch.device(device.type)  # build.resolve_device("cuda"/"auto"): no index
    gen = torch.Generator(device=run_device)
    t = torch.zeros(1, device=run_device)
    lines += [
        f"torch.device({device.type!r}) -> {run_device!r}",
        f"torch.Generator(device=that).device -> {gen.device!r}",
        f"a tensor made on it: .device -> {t.device!r}",
        f"generator.device == tensor.device -> {gen.device == t.device}",
        f"generator.device.type == tensor.device.type -> {gen.device.type == t.device.type}",
    ]
    # trainers/buffer.py: DataNoise.sample calls law.to(generator.device), which moves the
    # parameters when ``log_norm.device != device``, meant to happen once.
    from ebm_cli.trainers.buffer import DataNoise
    for kind in ("gaussian", "uniform"):
        noise = DataNoise(torch.randn(64, 3, device=run_device), kind)
        before = noise.law.log_norm
        noise.sample(8, gen)
        moved = noise.law.log_norm is not before
        ids = id(noise.law.log_norm)
        noise.sample(8, gen)
        noise.log_prob(torch.randn(8, 3, device=run_device))
        differs = noise.law.log_norm.device != gen.device
        lines.append(
            f"DataNoise({kind}): law.log_norm.device {noise.law.log_norm.device} != "
            f"generator.device {gen.device}: {differs}"
            + (" (so the 'moved once' .to() branch runs on every sample call)" if differs else "")
            + f"; a copy made on the first call: {moved}, on later calls: "
            f"{id(noise.law.log_norm) != ids}")
    text = "\n".join(lines)
    print(text)
    write(out, "probe.txt", text + "\n")


# ---- samplers ------------------------------------------------------------------------------
def sampler_configs() -> list[str]:
    return sorted(p.stem for p in (ROOT / "configs" / "sampler").glob("*.yaml"))


def compose_sampler(name: str) -> Any:
    """configs/sampler/<name>.yaml through Hydra, instantiated as ``ebm-train`` would."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"sampler={name}"])
    return instantiate(cfg.sampler, _convert_="all")


def sampler_smoke(device: torch.device, out: Path, budget: float, chains: int = 4096,
                  warmup_steps: int = 200, steps: int = 100) -> None:
    """Every configured sampler on a 4-D correlated Gaussian on ``device``."""
    from ebm_cli.samplers.adaptation import warmup

    start = time.perf_counter()
    rows = ["| sampler | status | max |z| of the mean | var ratio min–max | max |z| of var | "
            "accept | s |", "|---|---|---:|---:|---:|---:|---:|"]
    energy = CorrelatedGaussian(dim=4, correlation=0.5).to(device)
    sd = energy.cov.diagonal().sqrt()
    for name in sampler_configs():
        if time.perf_counter() - start > budget:
            rows.append(f"| {name} | skipped: time budget | | | | | |")
            continue
        t0 = time.perf_counter()
        try:
            sampler = compose_sampler(name)
            gen = torch.Generator(device=torch.device(device.type)).manual_seed(0)  # as run.py
            x0 = energy.sample(chains, gen)
            state = sampler.init(energy, x0)
            sampler, state = warmup(sampler, energy, state, gen, warmup_steps)
            accepted = torch.zeros((), device=device)
            for _ in range(steps):
                state, info = sampler.step(energy, state, gen)
                accepted += info.accept_prob.float().mean()
            x = state.x.double()
            z = (x.mean(0) - energy.mean) / (sd / math.sqrt(chains))
            ratio = x.var(0) / energy.cov.diagonal()
            z_var = (ratio - 1) / math.sqrt(2 / (chains - 1))  # Gaussian marginals: SE of s²/σ²
            finite = bool(torch.isfinite(x).all())
            status = "ok" if finite else "NON-FINITE"
            rows.append(f"| {name} | {status} | {float(z.abs().max()):.1f} | "
                        f"{float(ratio.min()):.3f}–{float(ratio.max()):.3f} | "
                        f"{float(z_var.abs().max()):.1f} | {float(accepted) / steps:.3f} | "
                        f"{time.perf_counter() - t0:.1f} |")
        except Exception as e:  # reported per sampler: the point is to see what breaks
            first = f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            if isinstance(e, ConfigError):  # refuses this target (annealed_langevin): by design
                rows.append(f"| {name} | n/a: {first} | | | | | |")
            else:
                rows.append(f"| {name} | ERROR {first} | | | | | "
                            f"{time.perf_counter() - t0:.1f} |")
                traceback.print_exc()
        write(out, "samplers.md", "\n".join(rows) + "\n")
    print("\n".join(rows))


# ---- throughput --------------------------------------------------------------------------
def compiled_energy_step(mode: str | None) -> StepFactory:
    """sampler.step on torch.compile(energy, mode): mode None is ``compile=true`` as it was up to
    issue 17 (the energy alone), "reduce-overhead" adds CUDA graphs."""
    def factory(sampler: Sampler, energy_fn: nn.Module) -> Callable:
        fast = torch.compile(energy_fn, mode=mode)

        def step(state: ChainState, generator: torch.Generator) -> ChainState:
            if mode == "reduce-overhead":  # a new CUDA-graph generation per transition
                torch.compiler.cudagraph_mark_step_begin()
            return sampler.step(fast, state, generator)[0]
        return step
    return factory


def build_compile_step(sampler: Sampler, energy_fn: nn.Module) -> Callable:
    """sampler.step on ebm_cli.build.compile_energy(energy, True): what ``compile=true`` runs in
    this tree (a column of its own once that is more than torch.compile of the energy)."""
    device = next(iter(energy_fn.buffers())).device
    return eager_step(sampler, compile_energy(energy_fn, True, device))


MODES: dict[str, StepFactory] = {
    "eager": eager_step,
    "compiled": compiled_energy_step(None),
    "cudagraphs": compiled_energy_step("reduce-overhead"),
}


def make_sampler(kind: str) -> Sampler:
    """Fixed settings, no jitter: HMC ε = 0.1, L = 10; MALA η = 0.05 (identity mass)."""
    if kind == "hmc":
        return HMC(step_size=0.1, n_leapfrog=10, jitter=0.0, jitter_n_leapfrog=False)
    return MALA(step_size=0.05)


def time_cell(factory: StepFactory, kind: str, energy: nn.Module, n: int,
              device: torch.device, target_s: float = 0.15) -> dict[str, Any]:
    """One (column, sampler, chains) cell: 2 first steps (compile), then 3 timed calls."""
    sampler = make_sampler(kind)
    gen = torch.Generator(device=torch.device(device.type)).manual_seed(0)
    x0 = energy.sample(n, torch.Generator(device=torch.device(device.type)).manual_seed(1))
    step = factory(sampler, energy)
    per_call = int(getattr(step, "steps_per_call", 1))
    state = sampler.init(energy, x0.to(torch.float32))
    sync(device)
    t0 = time.perf_counter()
    for _ in range(2):  # compiles happen here (compiled transitions: at the second call)
        state = step(state, gen)
    sync(device)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    state = step(state, gen)  # one warm call, to size the timed calls
    sync(device)
    one = max(time.perf_counter() - t0, 1e-6)
    calls = max(1, min(200, round(target_s / one)))
    times = []
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            state = step(state, gen)
        sync(device)
        times.append(time.perf_counter() - t0)
    sec = statistics.median(times) / (calls * per_call)
    # acceptance, untimed: an accepted proposal moves every coordinate (almost surely)
    moved = torch.zeros(n, device=device)
    checks = max(5, min(calls, 20))
    for _ in range(checks):
        previous = state.x
        state = step(state, gen)
        moved += (state.x != previous).flatten(1).any(dim=1).float()
    per_chain = moved / checks  # [B], independent chains
    se = float(per_chain.std()) / math.sqrt(n)
    return {"first_s": first, "us_per_step": sec * 1e6, "chain_steps_per_s": n / sec,
            "accept": float(per_chain.mean()), "accept_se": se}


def throughput(device: torch.device, out: Path, budget: float, dims: list[int],
               chains: list[int], kinds: list[str], modes: dict[str, StepFactory]) -> None:
    """The table, rewritten after every cell."""
    start = time.perf_counter()
    results: list[dict[str, Any]] = []

    def flush() -> None:
        head = ("| D | sampler | chains | column | µs/step | chain-steps/s | vs eager | "
                "first 2 steps s | accept |")
        lines = [f"# throughput on {device_name(device)}, {time.strftime('%Y-%m-%d %H:%M %Z')}",
                 "", head, "|---:|---|---:|---|---:|---:|---:|---:|---:|"]
        eager = {(r["dim"], r["sampler"], r["chains"]): r for r in results
                 if r["column"] == "eager" and "us_per_step" in r}
        for r in results:
            if "us_per_step" not in r:
                lines.append(f"| {r['dim']} | {r['sampler']} | {r['chains']} | {r['column']} | "
                             f"{r['status']} | | | | |")
                continue
            base = eager.get((r["dim"], r["sampler"], r["chains"]))
            speed = "" if base is None else f"{base['us_per_step'] / r['us_per_step']:.2f}×"
            flag = ""
            if base is not None and r["column"] != "eager":
                se = math.hypot(r["accept_se"], base["accept_se"])  # independent chains
                if abs(r["accept"] - base["accept"]) > 5 * se + 1e-3:
                    flag = " MISMATCH vs eager"
            lines.append(
                f"| {r['dim']} | {r['sampler']} | {r['chains']} | {r['column']} | "
                f"{r['us_per_step']:,.0f} | {r['chain_steps_per_s']:.3g} | {speed} | "
                f"{r['first_s']:.1f} | {r['accept']:.3f} ± {r['accept_se']:.3f}{flag} |")
        write(out, "throughput.md", "\n".join(lines) + "\n")
        write(out, "throughput.json", json.dumps(results, indent=1))

    for dim in dims:
        for column, factory in modes.items():
            torch._dynamo.reset()  # one compile per (D, column), shared by sizes and samplers
            energy = CorrelatedGaussian(dim=dim, correlation=0.9).to(device=device,
                                                                     dtype=torch.float32)
            for kind in kinds:
                for n in chains:
                    cell = {"dim": dim, "sampler": kind, "chains": n, "column": column}
                    if time.perf_counter() - start > budget:
                        cell["status"] = "skipped: time budget"
                    else:
                        try:
                            cell.update(time_cell(factory, kind, energy, n, device))
                        except Exception as e:
                            msg = str(e).strip().splitlines()
                            first = msg[0][:100] if msg else ""
                            cell["status"] = f"ERROR {type(e).__name__}: {first}"
                            traceback.print_exc()
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                    results.append(cell)
                    print(json.dumps(cell), flush=True)
                    flush()
    flush()
    print((out / "throughput.md").read_text())


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["probe", "samplers", "throughput"])
    parser.add_argument("--device", default="cuda", help="cuda, or cpu to try the code paths")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_results")))
    parser.add_argument("--budget", type=float, default=120.0,
                        help="seconds after which remaining cells are skipped")
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 100])
    parser.add_argument("--chains", type=int, nargs="+",
                        default=[1024, 16384, 262144, 1048576])
    parser.add_argument("--samplers", nargs="+", choices=["hmc", "mala"], default=["hmc", "mala"])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--column", action="append", default=[], metavar="NAME=module:function")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":  # a trial of the code paths: compiled CPU kernels with OpenMP
        torch.set_num_threads(1)  # threads on a shared machine measured 10× slower
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: nothing to measure (use --device cpu to try the code path)")
        return
    if args.what == "probe":
        probe(device, args.out)
    elif args.what == "samplers":
        sampler_smoke(device, args.out, args.budget)
    else:
        modes = {m: MODES[m] for m in args.modes}
        if not compile_true_is_energy_only(device):
            modes["compile=true"] = build_compile_step
        modes.update(load_factory(spec) for spec in args.column)
        throughput(device, args.out, args.budget, args.dims, args.chains, args.samplers, modes)


if __name__ == "__main__":
    main()
