"""Every sampler config on the standard targets, side by side, with its default adaptation.

Targets (truth known exactly): two_gaussians (the 2-D 0.5/0.5 mixture of configs/energy/
gaussian_mixture.yaml), rosenbrock (configs/energy/rosenbrock.yaml), Neal's funnel in 10-D
(scale 3), a 100-D diagonal Gaussian with standard deviations linearly spaced 0.01–1, a dense
20-D Gaussian (a random rotation of variances log-spaced 10⁻⁴–1: condition number 10⁴ in
variance) and an unequal mixture (weights 0.25/0.75, means ±3, sd 0.5: modes 12 sd apart).
Samplers: every YAML in configs/sampler/ (so new ones are included as they appear), built with
its own defaults, warmed up by ``samplers.adaptation.warmup`` as ``trainer=none`` does, from
chains started at N(0, I).

Columns: wall and CPU seconds of the recorded steps (warm-up excluded, shown apart), gradient
evaluations per chain per step, min bulk and tail ESS and max R-hat over coordinates, nested
R-hat and the ``converged`` verdict (evaluation/convergence.py), min bulk ESS per CPU second
(one thread: the wall time on an idle machine, and not inflated by other jobs on a shared one)
and per 1000 gradients (over all chains and recorded steps), and the largest errors against
the truth over all recorded draws: of the mean in units of the target's sd, and of the variance
relative to the true variance; for the mixtures the error of the weight of the right-hand mode;
the percentage of recorded transitions flagged divergent (samplers whose Info reports it).
A sampler that refuses a target when built or started (ValueError / ConfigError) is listed as
not applicable; one that fails later is listed with its error, not fixed here. Each target's first
row holds the errors of as many independent exact draws as the chains record: the Monte Carlo
floor of the error columns.

    PYTHONPATH=. python benchmarks/bench_targets.py [--chains 128] [--steps 500] [--warmup 200]
        [--targets two_gaussians funnel10 ...] [--samplers hmc mala ...] [--dtype float32]
        [--seed 0] [--write docs/samplers.md]

One torch thread. The default (128 chains × 500 steps) runs in a few minutes on one core.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import Tensor, nn

from ebm_cli.app.errors import ConfigError
from ebm_cli.energies.analytic import CorrelatedGaussian, Funnel, GaussianMixture, Rosenbrock
from ebm_cli.energies.base import truth_of
from ebm_cli.evaluation.convergence import RULE, convergence_metrics
from ebm_cli.samplers.adaptation import warmup as run_warmup
from ebm_cli.samplers.base import Info, declares

ROOT = Path(__file__).resolve().parents[1]
SAMPLER_DIR = ROOT / "configs" / "sampler"


class NotApplicable(Exception):
    """A sampler that refuses a target when built or started (e.g. one that needs a
    noise-conditional energy): listed as not applicable, not as a crash."""


class DenseGaussian(nn.Module):
    """E(x) = ½ (x − μ)ᵀ Σ⁻¹ (x − μ) with Σ = Q diag(λ) Qᵀ, Q a random rotation (QR of a
    seeded Gaussian matrix), λ log-spaced from ``min_var`` to 1: x [B, D] -> [B]."""

    def __init__(self, dim: int = 20, min_var: float = 1e-4, seed: int = 1) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        q, r = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
        q = q * r.diagonal().sign()  # a uniformly random rotation
        lam = torch.logspace(math.log10(min_var), 0.0, dim, dtype=torch.float64)
        cov = q @ torch.diag(lam) @ q.T
        self.event_shape = (dim,)
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("cov", cov)
        self.register_buffer("precision", q @ torch.diag(1 / lam) @ q.T)
        self.register_buffer("chol", torch.linalg.cholesky(cov))

    def forward(self, x: Tensor) -> Tensor:
        diff = x.flatten(1) - self.mean.to(x)
        return 0.5 * ((diff @ self.precision.to(x)) * diff).sum(1)


TARGETS: dict[str, Callable[[], nn.Module]] = {
    "two_gaussians": lambda: GaussianMixture(means=((-2.0, 0.0), (2.0, 0.0)), std=0.5),
    "rosenbrock": lambda: Rosenbrock(a=1.0, b=100.0, temperature=2.0),
    "funnel10": lambda: Funnel(dim=10, scale=3.0),
    "gauss100": lambda: CorrelatedGaussian(dim=100, correlation=0.0,
                                           scales=np.linspace(0.01, 1.0, 100).tolist()),
    "dense20": lambda: DenseGaussian(20),
    "unequal_mixture": lambda: GaussianMixture(means=((-3.0, 0.0), (3.0, 0.0)), std=0.5,
                                               weights=(0.25, 0.75)),
}
MODE_WEIGHT = {"two_gaussians": 0.5, "unequal_mixture": 0.75}  # true mass with x₀ > 0


def truth_moments(energy: nn.Module) -> tuple[np.ndarray, np.ndarray]:
    """(mean [D], cov [D, D]) of the target, float64 numpy."""
    if isinstance(energy, DenseGaussian):
        mean, cov = energy.mean, energy.cov
    else:
        t = truth_of(energy)
        mean, cov = t.mean, t.cov
    assert mean is not None and cov is not None
    return mean.double().numpy().reshape(-1), cov.double().numpy()


def sampler_configs(names: list[str] | None) -> dict[str, dict[str, Any]]:
    """{name: config} for every configs/sampler/*.yaml (or the named ones), composed by Hydra
    as ``ebm-train sampler=<name>`` composes it (defaults lists included, e.g. a tempering
    config's base sampler)."""
    out = {}
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base=None):
        for path in sorted(SAMPLER_DIR.glob("*.yaml")):
            if names is None or path.stem in names:
                cfg = compose(config_name="config", overrides=[f"sampler={path.stem}"])
                out[path.stem] = OmegaConf.to_container(cfg.sampler, resolve=True)
    return out


def run_one(energy: nn.Module, cfg: dict[str, Any], chains: int, steps: int, warmup: int,
            dtype: torch.dtype, seed: int, weight: float | None = None) -> dict[str, float]:
    """Warm up and run one sampler on one target; the table's numbers for that pair (with
    ``weight``, the true mass of x₀ > 0, also the error of the draws' fraction there)."""
    energy = energy.to(dtype)
    dim = math.prod(energy.event_shape)
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(chains, *energy.event_shape, generator=g, dtype=dtype)
    t0 = time.perf_counter()
    try:
        sampler = instantiate(cfg)
        state = sampler.init(energy, x0)
    except (ValueError, ConfigError, InstantiationException) as e:  # refusing this target
        raise NotApplicable(str(e).splitlines()[-1]) from e
    sampler, state = run_warmup(sampler, energy, state, g, warmup)
    warm_wall = time.perf_counter() - t0
    draws = torch.empty(steps, chains, dim, dtype=torch.float64)
    grads = torch.zeros((), dtype=torch.float64)
    divergent = torch.zeros((), dtype=torch.float64)
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i in range(steps):
        state, info = sampler.step(energy, state, g)
        draws[i] = state.x.detach().flatten(1)
        if declares(info, Info):
            grads += info.grad_evals.double().mean()
            divergent += info.is_divergent.double().sum()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    finite = bool(torch.isfinite(draws).all())
    m = convergence_metrics(draws)
    x = draws.reshape(-1, dim).numpy()
    mean, cov = truth_moments(energy)
    sd = np.sqrt(np.diag(cov))
    total_grads = float(grads) * chains  # over all chains and recorded steps
    row = {
        "wall": wall, "cpu": cpu, "warmup_wall": warm_wall,
        "grads_per_step": float(grads) / steps,
        "ess_bulk": m["ess_bulk_min"], "ess_tail": m["ess_tail_min"],
        "rhat": m["rhat_max"], "nested_rhat": m["nested_rhat_max"],
        "converged": m["converged"],
        "ess_per_s": m["ess_bulk_min"] / cpu,  # one thread: CPU ≈ wall on an idle machine
        "ess_per_kgrad": m["ess_bulk_min"] / (total_grads / 1000) if total_grads else math.nan,
        "mean_err": float(np.max(np.abs(x.mean(0) - mean) / sd)),
        "var_err": float(np.max(np.abs(x.var(0) - np.diag(cov)) / np.diag(cov))),
        "divergent_pct": 100 * float(divergent) / (steps * chains),
        "finite": float(finite),
    }
    if weight is not None:
        row["mode_weight_err"] = abs(float((x[:, 0] > 0).mean()) - weight)
    return row


def exact_draws(energy: nn.Module, n: int, seed: int) -> np.ndarray:
    """n independent exact draws of the target [n, D] (float64)."""
    g = torch.Generator().manual_seed(seed)
    if isinstance(energy, DenseGaussian):
        z = torch.randn(n, energy.chol.shape[0], generator=g, dtype=torch.float64)
        return (energy.mean + z @ energy.chol.T).numpy()
    sample = truth_of(energy).sample
    assert sample is not None
    return sample(n, g).double().reshape(n, -1).numpy()


def exact_row(target: str, n: int, seed: int) -> str:
    """The reference row: the errors of as many independent exact draws as the chains record
    (the Monte Carlo floor of the error columns; the funnel's variance is heavy-tailed)."""
    energy = TARGETS[target]()
    x = exact_draws(energy, n, seed)
    mean, cov = truth_moments(energy)
    var = np.diag(cov)
    cells = ["—"] * 11 + [fmt(float(np.max(np.abs(x.mean(0) - mean) / np.sqrt(var))), 2),
                          fmt(float(np.max(np.abs(x.var(0) - var) / var)), 2)]
    weight = MODE_WEIGHT.get(target)
    cells.append(fmt(abs(float((x[:, 0] > 0).mean()) - weight), 2) if weight else "—")
    cells.append("—")
    return f"| {target} | *{n:,} exact draws* | " + " | ".join(cells) + " |"


def fmt(v: float, digits: int = 3) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


def verdict(r: dict[str, float]) -> str:
    if r["converged"] == 1.0:
        return "yes"
    return "**no**" if r["finite"] else "**no** (non-finite draws)"


HEADER = ("| target | sampler | wall s | CPU s | warm-up s | grads/step | min bulk ESS | "
          "min tail ESS | max R-hat | nested R-hat | converged | ESS/CPU s | ESS/1k grads | "
          "mean err (sd) | var err (rel) | mode weight err | divergent % |")


def table_row(target: str, sampler: str, r: dict[str, float] | str) -> str:
    if isinstance(r, str):
        return f"| {target} | {sampler} | {r.replace('|', '/')} |" + " |" * 14
    cells = [fmt(r["wall"]), fmt(r["cpu"]), fmt(r["warmup_wall"]), fmt(r["grads_per_step"]),
             fmt(r["ess_bulk"]), fmt(r["ess_tail"]), f"{r['rhat']:.3f}",
             f"{r['nested_rhat']:.3f}", verdict(r),
             fmt(r["ess_per_s"]), fmt(r["ess_per_kgrad"]), fmt(r["mean_err"], 2),
             fmt(r["var_err"], 2), fmt(r.get("mode_weight_err", math.nan), 2),
             fmt(r["divergent_pct"], 2)]
    return f"| {target} | {sampler} | " + " | ".join(cells) + " |"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chains", type=int, default=128)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--targets", nargs="+", choices=sorted(TARGETS), default=list(TARGETS))
    ap.add_argument("--samplers", nargs="+", default=None,
                    help="config names in configs/sampler/ (default: all)")
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", type=Path, default=None,
                    help="also write the table with the command and date into this markdown "
                         "file, between the BENCH_TARGETS markers")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    dtype = getattr(torch, args.dtype)
    configs = sampler_configs(args.samplers)
    lines = [HEADER, "|" + "---|" * 17]
    print(HEADER, flush=True)
    print(lines[1], flush=True)
    for target in args.targets:
        line = exact_row(target, args.chains * args.steps, args.seed)
        lines.append(line)
        print(line, flush=True)
        for name, cfg in configs.items():
            energy = TARGETS[target]()
            try:
                r: dict[str, float] | str = run_one(energy, cfg, args.chains, args.steps,
                                                    args.warmup, dtype, args.seed,
                                                    MODE_WEIGHT.get(target))
            except NotApplicable as e:
                r = f"not applicable: {str(e)[:160]}"
            except Exception as e:  # a sampler that fails here is reported, not hidden
                traceback.print_exc(file=sys.stderr)
                r = f"crashed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"
            line = table_row(target, name, r)
            lines.append(line)
            print(line, flush=True)
    if args.write is not None:
        write_doc(args.write, lines, argv if argv is not None else sys.argv[1:])


def write_doc(path: Path, lines: list[str], argv: list[str]) -> None:
    """Replace the text between the BENCH_TARGETS markers of ``path`` with the table."""
    start, end = "<!-- BENCH_TARGETS:START -->", "<!-- BENCH_TARGETS:END -->"
    command = "PYTHONPATH=. python benchmarks/bench_targets.py " + " ".join(argv)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    block = "\n".join([start, "", f"Command: `{command.strip()}` ({stamp}, one torch thread).",
                       f"Rule for `converged`: {RULE}.", "", *lines, "", end])
    text = path.read_text() if path.exists() else f"{start}\n{end}\n"
    head, _, rest = text.partition(start)
    _, _, tail = rest.partition(end)
    path.write_text(head + block + tail)


if __name__ == "__main__":
    main()
