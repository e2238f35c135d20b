"""Trajectory length: ESS per gradient of default HMC (L jittered per transition and shared by
the chains, ChEES-adapted) against MALA and against HMC with each fixed L.

Each row is a ``trainer=none`` run in-process (trainers/sampling.py SamplingOnly: chains from
N(0, I), ``--warmup`` warm-up steps with the sampler's default adaptation, then ``--steps``
recorded steps); ESS is SamplingOnly's own: the minimum over coordinates of the bulk ESS of the
last half of the recorded draws (evaluation/diagnostics.py), per gradient evaluation spent on
them, as each transition's Info counts them (a shared jittered L_t costs L_t gradients on CPU;
an L_b jittered per chain costs L, since the chains run in one batch). Targets: a 50-D standard
Gaussian (HMC vs MALA) and Rosenbrock (configs/energy/rosenbrock.yaml: a = 1, b = 100, T = 2),
where the fixed-L rows turn adapt_trajectory off (``jitter`` says whether L_t ~ U{1..L} per
transition, shared by the chains, or every transition runs L).

    PYTHONPATH=. python benchmarks/bench_trajectory.py [--chains 512] [--steps 400]
        [--warmup 200] [--seed 0] [--only gaussian rosenbrock] [--lengths 1 2 4 8 16 32 64]
        [--exact-start] [--target-accept 0.8]

Issue 14's Rosenbrock figure (docs/samplers.md, "HMC's trajectory length"):

    PYTHONPATH=. python benchmarks/bench_trajectory.py --only rosenbrock --exact-start \
        --chains 1024 --warmup 1000 --steps 4000 [--target-accept 0.95]

From N(0, I), Rosenbrock's chains have not converged after 1000 + 2000 steps for any L
(R-hat 1.19–2.8), and the ESS of unconverged chains sits at a floor (≈ 300) whatever L costs,
which makes ESS per gradient favour L = 1 for no good reason; ``--exact-start`` starts the
chains at exact draws (Rosenbrock.sample), so the ESS measures mixing at stationarity.

Even from exact starts the chains do not mix within 4000 steps for most L (R-hat 1.08–3.5), so
the bulk ESS (from within/between-chain variances) sits near a floor and cannot rank L. With
``--exact-start`` the Rosenbrock rows also report a truth-based ESS that is valid at
stationarity however slowly the chains mix: after warm-up every chain restarts at a fresh exact
draw, so each chain's mean m_c of f over the n recorded steps is an unbiased estimate of E_p[f]
and the chains are independent; then Var_c(m_c) = Var_p(f)/ESS_chain defines ESS_chain(f), with
E_p[f] and Var_p[f] known exactly (``rosenbrock_moments``) for f = x₁, x₂, x₁², x₂². The table
gives each ESS_chain with its relative standard error (that of the across-chain variance,
sd(d²)/(√C·mean d²), d = m_c − E_p[f]; about √(2/C) for a normal m_c, far more when a few
chains dominate) and min_f ESS_chain per 1000 gradients (per chain: n·L gradients). Every row
restarts at the same exact draws, so the closing table's ratios (default against the best
fixed-L row, per f) have a paired standard error. ``stuck``: chains that accepted < 5 % of
their recorded steps (at the default target 0.8 the chains in the right tail, x₁ > 2.5).
An ESS_chain near 1 means a chain's mean is no better than its first draw: such a row's ESS
per gradient is ≈ 1/(n·L) whatever it mixes, so it ranks by cost alone.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import NamedTuple

import torch
from torch import nn

from ebm_cli.energies.analytic import Rosenbrock
from ebm_cli.samplers.base import Sampler
from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.langevin import MALA
from ebm_cli.trainers.sampling import SamplingOnly

STUCK = 0.05  # a chain that accepted fewer than this fraction of its recorded steps is "stuck"


class StandardGaussian(nn.Module):
    """E(x) = ½‖x‖², x [B, D] -> [B]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x.square().sum(-1)


class TruthMoments(NamedTuple):
    """Exact E_p[f] and Var_p[f] [F] of the functions ``rosenbrock_functions`` computes."""

    names: tuple[str, ...]
    mean: torch.Tensor  # [F] float64
    var: torch.Tensor  # [F] float64


def rosenbrock_moments(energy: Rosenbrock) -> TruthMoments:
    """E and Var of f = (x₁, x₂, x₁², x₂²) under p: x₁ ~ N(a, v₁), x₂ = x₁² + √v₂·z.

    With μ_k = E[x₁^k] (normal raw moments): E x₁² = μ₂, Var x₁² = μ₄ − μ₂², Var x₂ = Var x₁² + v₂,
    E x₂² = μ₄ + v₂, E x₂⁴ = μ₈ + 6 v₂ μ₄ + 3 v₂².
    """
    a, v1, v2 = energy.a, energy.temperature / 2, energy.temperature / (2 * energy.b)
    m2 = a**2 + v1
    m4 = a**4 + 6 * a**2 * v1 + 3 * v1**2
    m8 = a**8 + 28 * a**6 * v1 + 210 * a**4 * v1**2 + 420 * a**2 * v1**3 + 105 * v1**4
    mean = [a, m2, m2, m4 + v2]
    var = [v1, m4 - m2**2 + v2, m4 - m2**2, m8 + 6 * v2 * m4 + 3 * v2**2 - (m4 + v2) ** 2]
    f64 = torch.float64
    return TruthMoments(("x1", "x2", "x1^2", "x2^2"), torch.tensor(mean, dtype=f64),
                        torch.tensor(var, dtype=f64))


def rosenbrock_functions(x: torch.Tensor) -> torch.Tensor:
    """f(x) = (x₁, x₂, x₁², x₂²): x [B, 2] -> [B, 4]."""
    return torch.cat([x, x.square()], dim=1)


def truth_ess(chain_means: torch.Tensor, truth: TruthMoments,
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-chain ESS of each f and its relative standard error, from independent chains that
    started at stationarity: chain_means m [C, F] (each the mean of f over n_steps draws).

    ESS_chain(f) = Var_p(f) / V̂, V̂ = mean_c d_c², d_c = m_c − E_p[f] (unbiased, E m_c = E_p f);
    rel SE = sd_c(d_c²)/(√C · V̂) (delta method: ESS ∝ 1/V̂). Not capped: an antithetic chain
    may exceed its number of draws. Returns (ess [F], rel_se [F]).
    """
    d2 = squared_errors(chain_means, truth)
    v_hat = d2.mean(0)
    rel_se = d2.std(0) / (math.sqrt(d2.shape[0]) * v_hat)
    return truth.var / v_hat, rel_se


def squared_errors(chain_means: torch.Tensor, truth: TruthMoments) -> torch.Tensor:
    """d_c² = (m_c − E_p[f])² [C, F] from chain means m [C, F]."""
    return (chain_means - truth.mean).square()


def paired_ratio_se(d2_a: torch.Tensor, d2_b: torch.Tensor) -> float:
    """Relative SE of V̂_a/V̂_b (V̂ = mean_c d_c², [C] each) when chain c of both runs started at
    the same exact draw (common random numbers): Var log(V̂_a/V̂_b) ≈ (s_a²/V_a² + s_b²/V_b² −
    2 s_ab/(V_a V_b))/C, the covariance s_ab of d_a² and d_b² over chains."""
    va, vb = d2_a.mean(), d2_b.mean()
    stacked = torch.stack([d2_a / va, d2_b / vb])  # [2, C]
    cov = torch.cov(stacked)
    var = (cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]) / d2_a.shape[0]
    return float(var.clamp_min(0).sqrt())


def measure(energy: nn.Module, sampler: Sampler, dim: int, args: argparse.Namespace,
            truth: TruthMoments | None = None) -> dict:
    """One SamplingOnly run -> its diagnostics plus the adapted L and ε and the wall time.

    With ``truth`` (and --exact-start) the chains restart at fresh exact draws after warm-up
    and ``ess_truth`` [F], ``ess_truth_rel_se`` [F] (``truth_ess``) are added.
    """
    run = SamplingOnly(energy, sampler, (dim,), dtype=torch.float64, n_chains=args.chains,
                       warmup_steps=args.warmup, trace_chains=min(256, args.chains))
    g = torch.Generator().manual_seed(args.seed)
    if args.exact_start:  # chains start at exact draws: ESS of a chain already at stationarity
        run._init(g, energy.sample(args.chains, g).to(torch.float64))
        if truth is not None:  # and restart at new exact draws: m_c unbiased, chains independent;
            # the same draws in every row (their own generator), so rows compare chain by chain
            restart = energy.sample(args.chains, torch.Generator().manual_seed(args.seed + 1))
            run.state = run.sampler.init(energy, restart.double())
    if run.state is None:  # from N(0, I): warm-up now, as the first run.step would
        run._init(g)
    sums, moved = None, torch.zeros(args.chains, dtype=torch.float64)
    start = time.perf_counter()
    for _ in range(args.steps):
        assert run.state is not None
        before = run.state.x
        run.step(g)
        moved += (run.state.x != before).any(1)  # this chain's proposal was accepted
        if truth is not None and args.exact_start:
            f = rosenbrock_functions(run.state.x)
            sums = f if sums is None else sums + f
    out = run.diagnostics()
    out["seconds"] = time.perf_counter() - start
    out["L"] = getattr(run.sampler, "n_leapfrog", 1)
    out["eps"] = float(run.sampler.step_size)
    out["stuck"] = float((moved / args.steps < STUCK).double().mean())
    if sums is not None and truth is not None:
        out["ess_truth"], out["ess_truth_rel_se"] = truth_ess(sums / args.steps, truth)
        out["d2"] = squared_errors(sums / args.steps, truth)  # [C, F], for paired ratios
    return out


def truth_min(out: dict, which: tuple[int, ...] | None = None,
              ) -> tuple[float, float, int] | None:
    """(min over the f in ``which`` (all: None) of ESS_chain per 1000 gradients, its relative SE,
    the argmin f) or None."""
    if "ess_truth" not in out or out["grad_evals"] <= 0:
        return None
    ess = out["ess_truth"]
    which = tuple(range(len(ess))) if which is None else which
    k = min(which, key=lambda i: float(ess[i]))
    per_1k = 1000 * float(ess[k]) / out["grad_evals"]  # grad_evals: per chain
    return per_1k, float(out["ess_truth_rel_se"][k]), k


def row(label: str, out: dict, names: tuple[str, ...] = ()) -> str:
    grads = out["grad_evals"] / 1  # per chain, all recorded steps
    line = (f"| {label:<28} | {out['L']:>4} | {out['eps']:7.4f} | {out['ess_bulk_min']:9.0f} | "
            f"{grads:8.0f} | {out['ess_per_grad_eval']:8.4f} | {out['rhat_max']:6.3f} | "
            f"{out['seconds']:6.1f} |")
    found = truth_min(out)
    if names:
        if found is None:
            line += " — | — | — | — |"
        else:
            per_1k, rel_se, k = found
            ess = ", ".join(f"{v:.1f} ({100 * r:.0f} %)" for v, r in zip(
                out["ess_truth"].tolist(), out["ess_truth_rel_se"].tolist()))
            line += (f" {100 * out['stuck']:.1f} | {ess} | {names[k]} | {per_1k:.3f} ± "
                     f"{100 * rel_se:.1f} % |")
    return line


HEADER = ("| sampler                      |    L |       ε |  ESS bulk | grads/ch | ESS/grad | "
          " R-hat |   wall |\n|---|---:|---:|---:|---:|---:|---:|---:|")
_TOP, _RULE = HEADER.split("\n")
TRUTH_HEADER = (_TOP + " stuck % | ESS_chain (rel SE) of x₁, x₂, x₁², x₂² | min f | min"
                " ESS_chain / 1k grads ± rel SE |\n" + _RULE + "---:|---:|---|---:|")


def verdict(rows: list[tuple[str, dict]], names: tuple[str, ...]) -> str:
    """The default row's truth-based ESS per gradient against the best fixed-L row's: for the
    minimum over all f, then for each f alone. The ratio's SE is paired (``paired_ratio_se``:
    every row restarts its chains at the same exact draws); "best" is the largest estimate, so
    with noisy rows the ratio leans high."""
    if len(rows) < 2 or rows[0][0] != "HMC (default)" or "ess_truth" not in rows[0][1]:
        return ""
    lines = []
    for title, which in [("min over f", None)] + [(n, (i,)) for i, n in enumerate(names)]:
        found = [(label, out, truth_min(out, which)) for label, out in rows]
        (_, out_d, default), (label, out_b, best) = found[0], max(
            found[1:], key=lambda r: r[2][0])
        assert default is not None and best is not None
        ratio = best[0] / default[0]
        se = ratio * paired_ratio_se(out_d["d2"][:, default[2]], out_b["d2"][:, best[2]])
        lines.append(f"| {title} | {default[0]:.3f} | {label} | {best[0]:.3f} | {ratio:.2f} ± "
                     f"{se:.2f} | {'yes' if ratio <= 1.5 else 'no'} |")
    return ("| ESS_chain / 1k grads of | default | best other row | its value | best / default "
            "± paired SE | within 1.5x |\n|---|---:|---|---:|---:|---|\n" + "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, default=512)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=["gaussian", "rosenbrock"])
    parser.add_argument("--lengths", type=int, nargs="*", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--target-accept", type=float, default=HMC.target_accept,
                        help="Rosenbrock: every HMC row's step-size target (HMC's default 0.8)")
    parser.add_argument("--exact-start", action="store_true",
                        help="Rosenbrock chains start at exact draws instead of N(0, I)")
    parser.add_argument("--jitters", action="store_true",
                        help="instead of the fixed-L grid: ChEES with shared L from 1, with L per "
                             "chain from 1, with ε jitter, with no jitter, and L = 64 and 128 "
                             "without jitter (which jitter costs what)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.chains} chains, {args.warmup} warm-up + {args.steps} steps (ESS of the last "
          f"half, {min(256, args.chains)} chains kept), seed {args.seed}\n")
    if "gaussian" in args.only:  # (always from N(0, I), the target itself)
        print("50-D standard Gaussian\n" + HEADER)
        energy = StandardGaussian()
        kernels = [("HMC (default)", HMC()), ("MALA (default)", MALA()),
                   ("HMC L=10, no jitter, no ChEES",
                    HMC(jitter_n_leapfrog=False, adapt_trajectory=False))]
        if args.jitters:
            kernels += [("HMC, shared L from 1", HMC(length_floor=0.0)),
                        ("HMC, L per chain from 1 (old default)",
                         HMC(length_floor=0.0, shared_n_leapfrog=False)),
                        ("HMC, ε jitter 0.5, no L jitter",
                         HMC(jitter=0.5, jitter_n_leapfrog=False)),
                        ("HMC, no jitter", HMC(jitter_n_leapfrog=False))]
        for label, sampler in kernels:
            print(row(label, measure(energy, sampler, 50, args)), flush=True)
        print()
    if "rosenbrock" in args.only:
        energy = Rosenbrock(a=1.0, b=100.0, temperature=2.0)
        truth = rosenbrock_moments(energy) if args.exact_start else None
        names = truth.names if truth is not None else ()
        accept = args.target_accept
        print(f"Rosenbrock (a = 1, b = 100, T = 2); ε adapted toward mean acceptance {accept} "
              f"in every row; stuck: % of chains that accepted < {STUCK:.0%} of their recorded "
              "steps\n" + (TRUTH_HEADER if names else HEADER))
        rows = [("HMC (default)", measure(energy, HMC(target_accept=accept), 2, args, truth))]
        print(row(*rows[-1], names), flush=True)
        if args.jitters:
            for label, sampler in [
                ("HMC, shared L from 1", HMC(target_accept=accept, length_floor=0.0)),
                ("HMC, L per chain from 1 (old default)",
                 HMC(target_accept=accept, length_floor=0.0, shared_n_leapfrog=False)),
                ("HMC, ε jitter 0.5, no L jitter",
                 HMC(target_accept=accept, jitter=0.5, jitter_n_leapfrog=False)),
                ("HMC, no jitter", HMC(target_accept=accept, jitter_n_leapfrog=False)),
                *[(f"HMC fixed L={n}, jitter off",
                   HMC(n_leapfrog=n, jitter_n_leapfrog=False, adapt_trajectory=False,
                       target_accept=accept)) for n in (64, 128)]]:
                rows.append((label, measure(energy, sampler, 2, args, truth)))
                print(row(*rows[-1], names), flush=True)
        for jitter in (True, False) if not args.jitters else ():
            for n in args.lengths:
                if jitter and n == 1:  # L_b ~ U{1..1}: the same kernel as without jitter
                    continue
                sampler = HMC(n_leapfrog=n, jitter_n_leapfrog=jitter, adapt_trajectory=False,
                              target_accept=accept, length_floor=0.5)  # as docs/samplers.md
                label = f"HMC fixed L={n}, jitter {'on' if jitter else 'off'}"
                rows.append((label, measure(energy, sampler, 2, args, truth)))
                print(row(*rows[-1], names), flush=True)
        if names:
            print("\n" + verdict(rows, names))

if __name__ == "__main__":
    main()
