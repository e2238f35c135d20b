"""Sampler overhead: time per sampler step / time of the bare energy work that step needs.

For 1024 chains on a 2-D Gaussian-mixture energy and on an MLPEnergy (width 128, depth 3), each
sampler step is timed against a hand-written loop doing only its energy evaluations in the same
process: RW-MH and independence MH 1 energy; ULA and MALA 1 energy+gradient; HMC (L = 10)
10 energy+gradients. Each repeat times the bare loop and the sampler back to back and records
their ratio; the table gives medians over repeats (robust to a busy machine). The goal is a
ratio ≤ 1.2: everything but the energy should be close to free.

    PYTHONPATH=. python benchmarks/bench_samplers.py [--threads 1 2] [--repeats 7] [--steps 50]
        [--clock wall|cpu] [--only RW-MH MALA ...] [--modes 8 32] [--floor]

``--clock cpu`` times with this process's CPU time instead of the wall clock: on a shared,
loaded machine the wall clock also counts the time other jobs hold the cores, which made the
same code read 1.33 or 1.41. What is left on the cheap ring mixture (≈ 0.25 ms per energy) is
the cost of each small op *between* energy calls, ≈ 6–10 µs each there against ≈ 2 µs in a
tight loop of the same op (measured: a step with no random numbers and five ops already read
1.26); torch.compile of the accept/select part measured 122 µs per call against 49 µs eager on
one CPU thread (guard and wrapper overhead), so it is not offered.

The "overhead" column is step − bare in µs: the sampler's own cost, which does not depend on the
energy, so the ratio falls as the energy gets dearer (``--modes 8 32`` times ring mixtures of 8
and 32 components). ``--floor`` adds two RW-MH reference rows that are not samplers to use: the
random numbers drawn 50 steps at a time (one draw call per block instead of two per step), and
the same plus the test and both selects as one C++ call (compiled on first use with
torch.utils.cpp_extension, ≈ 25 s; needs a C++ compiler). They bound what any eager PyTorch
RW-MH step can reach on the same energy.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ebm_cli.energies.mlp import MLPEnergy
from ebm_cli.samplers.base import ChainState
from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.langevin import MALA, Langevin
from ebm_cli.samplers.mh import IndependenceMH, RandomWalkMH


class RingMixture(nn.Module):
    """E(x) = −log Σ_k N(x | μ_k, σ²I)/K for K = 8 means on a circle of radius 2, σ = 0.3."""

    def __init__(self, k: int = 8, radius: float = 2.0, std: float = 0.3) -> None:
        super().__init__()
        angle = torch.arange(k) * (2 * math.pi / k)
        self.register_buffer("means", radius * torch.stack([angle.cos(), angle.sin()], 1))
        self.scale = -0.5 / std**2

    def forward(self, x: Tensor) -> Tensor:
        sq = (x[:, None, :] - self.means).square().sum(-1)  # [B, K]
        return -torch.logsumexp(self.scale * sq, dim=1)  # [B] (constant dropped)


def bare_energy(energy_fn: nn.Module, x: Tensor) -> None:
    with torch.no_grad():
        energy_fn(x)


def bare_energy_grad(energy_fn: nn.Module, x: Tensor) -> None:
    x = x.detach().requires_grad_(True)
    energy = energy_fn(x)
    torch.autograd.grad(energy.sum(), x)


class InlineRWMH:
    """Reference, not a sampler to use: RW-MH's exact ops written inline (no dataclass, no
    helpers, no Info), to show what the same math costs without the abstraction."""

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        return RandomWalkMH().init(energy_fn, x)

    def step(self, energy_fn: nn.Module, state: ChainState, g: torch.Generator):
        x = state.x
        x_prop = torch.normal(x, 0.5, generator=g)
        with torch.no_grad():
            energy_prop = energy_fn(x_prop)
        log_ratio = state.energy - energy_prop
        acc = torch.empty_like(log_ratio).uniform_(generator=g) < log_ratio.exp()
        rows = torch.where(acc[:, None], x_prop.view(torch.int64), x.view(torch.int64))
        new = ChainState(rows.view(x.dtype), torch.where(acc, energy_prop, state.energy), None)
        return new, (log_ratio, acc)


_FUSED_SOURCE = r"""
#include <torch/extension.h>
// One Metropolis test and both selects for float32 chains x, x* [B, D], energies e, e* [B] and
// log u [B]: accept b iff log u_b < e_b - e*_b; returns (x', e', accepted).
std::vector<torch::Tensor> mh_select(torch::Tensor x, torch::Tensor xp, torch::Tensor e,
                                     torch::Tensor ep, torch::Tensor logu) {
  const int64_t B = x.size(0), D = x.numel() / B;
  auto x_new = torch::empty_like(x);
  auto e_new = torch::empty_like(e);
  auto acc = torch::empty({B}, e.options().dtype(torch::kBool));
  const float *px = x.data_ptr<float>(), *pxp = xp.data_ptr<float>();
  const float *pe = e.data_ptr<float>(), *pep = ep.data_ptr<float>(), *pu = logu.data_ptr<float>();
  float *pxn = x_new.data_ptr<float>(), *pen = e_new.data_ptr<float>();
  bool *pa = acc.data_ptr<bool>();
  for (int64_t b = 0; b < B; ++b) {
    const bool a = pu[b] < pe[b] - pep[b];
    pa[b] = a;
    pen[b] = a ? pep[b] : pe[b];
    const float *src = (a ? pxp : px) + b * D;
    for (int64_t d = 0; d < D; ++d) pxn[b * D + d] = src[d];
  }
  return {x_new, e_new, acc};
}
"""


def fused_mh_select() -> Callable:
    """The C++ mh_select above, compiled on first use (cached by torch.utils.cpp_extension)."""
    from torch.utils.cpp_extension import load_inline

    module = load_inline("ebm_bench_mh_select", cpp_sources=_FUSED_SOURCE,
                         functions=["mh_select"], extra_cflags=["-O3"])
    return module.mh_select


class PreDrawnRWMH:
    """Reference, not a sampler to use: RW-MH (s = 0.5) with its random numbers drawn ``block``
    steps at a time (one randn and one rand call per block, s ξ and log u precomputed), and
    with ``fused`` the test and both selects as one C++ call. The draws are part of the timed
    steps. What is left per step: the proposal add, the energy, the test and the selects."""

    def __init__(self, fused: Callable | None = None, block: int = 50) -> None:
        self.fused, self.block, self.draws = fused, block, iter(())

    def init(self, energy_fn: nn.Module, x: Tensor) -> ChainState:
        self.draws = iter(())
        return RandomWalkMH().init(energy_fn, x)

    def next_draws(self, x: Tensor, g: torch.Generator) -> tuple[Tensor, Tensor]:
        try:
            return next(self.draws)
        except StopIteration:
            noise = torch.randn((self.block, *x.shape), generator=g).mul_(0.5)  # s ξ
            log_u = torch.rand((self.block, x.shape[0]), generator=g).log_()
            self.draws = zip(noise.unbind(0), log_u.unbind(0))
            return next(self.draws)

    def step(self, energy_fn: nn.Module, state: ChainState, g: torch.Generator):
        step, log_u = self.next_draws(state.x, g)
        x_prop = torch.add(state.x, step)
        with torch.no_grad():
            energy_prop = energy_fn(x_prop)
        if self.fused is not None:
            x, energy, acc = self.fused(state.x, x_prop, state.energy, energy_prop, log_u)
            return ChainState(x, energy, None), acc
        acc = torch.lt(log_u, state.energy - energy_prop)
        x = torch.where(acc[:, None], x_prop, state.x)
        return ChainState(x, torch.where(acc, energy_prop, state.energy), None), acc


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]


def per_step(fn: Callable[[], object], steps: int) -> float:
    """Seconds per call of fn, over ``steps`` calls, on the chosen clock."""
    start = clock()
    for _ in range(steps):
        fn()
    return (clock() - start) / steps


def bench(sampler, energy_fn: nn.Module, x0: Tensor, work: int, grad: bool, steps: int,
          repeats: int) -> tuple[float, float, float]:
    """(median step s, median bare s, median ratio) for one sampler on one energy."""
    g = torch.Generator().manual_seed(0)
    box = [sampler.init(energy_fn, x0)]
    bare = bare_energy_grad if grad else bare_energy

    def sampler_step() -> None:
        box[0], _ = sampler.step(energy_fn, box[0], g)

    def bare_work() -> None:
        for _ in range(work):
            bare(energy_fn, x0)

    per_step(sampler_step, 5)  # warm caches and allocator
    per_step(bare_work, 5)
    steps_t, bare_t, ratios = [], [], []
    for _ in range(repeats):
        b = per_step(bare_work, steps)
        s = per_step(sampler_step, steps)
        steps_t.append(s)
        bare_t.append(b)
        ratios.append(s / b)
    return statistics.median(steps_t), statistics.median(bare_t), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--chains", type=int, default=1024)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: perf_counter; cpu: this process's CPU time (all threads), "
                        "which leaves out the time other jobs hold the cores on a busy machine")
    parser.add_argument("--only", nargs="+", default=None,
                        help="run only the samplers/energies whose names contain one of these")
    parser.add_argument("--modes", type=int, nargs="+", default=[8],
                        help="ring mixtures with these numbers of components (dearer energies)")
    parser.add_argument("--floor", action="store_true",
                        help="add the RW-MH reference rows: pre-drawn randomness, and that plus "
                        "a fused C++ test-and-select (compiled on first use)")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]

    torch.manual_seed(0)
    energies: dict[str, nn.Module] = {
        f"ring mixture, {k} modes (2-D)": RingMixture(k) for k in args.modes}
    energies["MLP 128×3 (2-D)"] = MLPEnergy((2,), 128, 3)
    samplers = [  # (name, sampler, bare evaluations per step, with gradient)
        ("RW-MH", RandomWalkMH(step_size=0.5), 1, False),
        ("(RW-MH inlined, reference)", InlineRWMH(), 1, False),
        ("independence MH", IndependenceMH(0.0, 2.5), 1, False),
        ("ULA", Langevin(step_size=0.01), 1, True),
        ("MALA", MALA(step_size=0.05), 1, True),
        ("HMC L=10", HMC(step_size=0.1, n_leapfrog=10), 10, True),
        ("HMC L=10 jitter", HMC(0.1, 10, jitter=0.2, jitter_n_leapfrog=True), 10, True),
    ]
    if args.floor:
        samplers[2:2] = [
            ("(RW-MH, randomness pre-drawn, reference)", PreDrawnRWMH(), 1, False),
            ("(RW-MH, pre-drawn + fused C++ select, reference)",
             PreDrawnRWMH(fused_mh_select()), 1, False),
        ]
    x0 = 2.0 * torch.randn(args.chains, 2, generator=torch.Generator().manual_seed(1))
    print(f"{args.chains} chains, float32, median of {args.repeats} repeats × {args.steps} steps, "
          f"{args.clock} clock\n")
    print("| energy | sampler | threads | bare work / step | step (µs) | bare (µs) | overhead (µs) "
          "| ratio |")
    print("|---|---|---:|---|---:|---:|---:|---:|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for ename, energy_fn in energies.items():
            for sname, sampler, work, grad in samplers:
                if args.only and not any(k in sname or k in ename for k in args.only):
                    continue
                steps = args.steps if work == 1 else max(5, args.steps // work)
                s, b, r = bench(sampler, energy_fn, x0, work, grad, steps, args.repeats)
                what = f"{work} × {'energy+grad' if grad else 'energy'}"
                print(f"| {ename} | {sname} | {threads} | {what} | {s * 1e6:.0f} | "
                      f"{b * 1e6:.0f} | {(s - b) * 1e6:.0f} | {r:.2f} |", flush=True)


if __name__ == "__main__":
    main()
