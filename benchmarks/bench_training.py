"""Training-step speed: ebm-cli's trainers against bare hand-written loops of the same algorithm.

Both sides use the same MLP energy (128×3, SiLU), the same 2-D data (two_gaussians), batch 256,
256 persistent chains, Adam; the bare loops inline the algorithm with plain tensor ops and no
bookkeeping. Timed in one process, interleaved, median of ``--repeats`` blocks of ``--steps``
updates. Ratio = ours / bare (1.0 = no overhead).

    PYTHONPATH=. python benchmarks/bench_training.py --threads 1 --steps 50 --repeats 7

With ``--compile``: ebm-train's own training step (the default config of each trainer, built by
``ebm_cli.build.build``) with ``compile=false`` against ``compile=true``, interleaved the same way;
the compile time (the first ``COMPILE_STEPS`` compiled steps less as many eager ones, with a
fresh TorchInductor cache, so the first trainer's is cold) is reported on its own.

    PYTHONPATH=. python benchmarks/bench_training.py --compile --threads 1 --steps 50 --repeats 7
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ebm_cli.data.toy2d import two_gaussians
from ebm_cli.energies.mlp import MLPEnergy
from ebm_cli.samplers.hmc import HMC
from ebm_cli.samplers.langevin import Langevin
from ebm_cli.trainers.mle import MLETrainer
from ebm_cli.trainers.nce import NCETrainer
from ebm_cli.trainers.score_matching import ScoreMatchingTrainer

BATCH, CHAINS, ALPHA, LR = 256, 256, 0.01, 1e-3
ETA, SIGMA = 0.01, math.sqrt(0.02)  # Langevin: σ = √(2η), T = 1
EPS, L = 0.1, 10  # HMC


def _energy() -> MLPEnergy:
    torch.manual_seed(0)
    return MLPEnergy((2,), 128, 3, "silu")


def _adam(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=LR)


def _grad(energy_fn: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    e = energy_fn(x)
    (g,) = torch.autograd.grad(e.sum(), x)
    return e.detach(), g


def _contrastive_update(energy_fn, opt, batch, x_neg) -> None:
    e = energy_fn(torch.cat([batch, x_neg]))
    ed, en = e[: batch.shape[0]], e[batch.shape[0]:]
    loss = ed.mean() - en.mean() + ALPHA * (ed.pow(2).mean() + en.pow(2).mean())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def bare_mle_langevin(data: torch.Tensor, g: torch.Generator) -> Callable[[torch.Tensor], None]:
    energy_fn = _energy()
    opt = _adam(energy_fn.parameters())
    x = torch.randn(CHAINS, 2, generator=g)

    def step(batch: torch.Tensor) -> None:
        nonlocal x
        _, grad = _grad(energy_fn, x)
        x = x - ETA * grad + SIGMA * torch.randn(x.shape, generator=g)  # ULA, 1 gradient
        _contrastive_update(energy_fn, opt, batch, x.detach())
    return step


def bare_mle_hmc(data: torch.Tensor, g: torch.Generator) -> Callable[[torch.Tensor], None]:
    energy_fn = _energy()
    opt = _adam(energy_fn.parameters())
    x = torch.randn(CHAINS, 2, generator=g)

    def step(batch: torch.Tensor) -> None:
        nonlocal x
        e0, grad = _grad(energy_fn, x)  # θ moved: fresh energy and gradient
        p = torch.randn(x.shape, generator=g)
        h0 = e0 + 0.5 * p.pow(2).sum(1)
        xn, pn = x, p - 0.5 * EPS * grad
        for i in range(L):  # leapfrog, L gradients
            xn = xn + EPS * pn
            en, gn = _grad(energy_fn, xn)
            pn = pn - (EPS if i < L - 1 else 0.5 * EPS) * gn
        accept = torch.rand(x.shape[0], generator=g).log() < h0 - (en + 0.5 * pn.pow(2).sum(1))
        x = torch.where(accept[:, None], xn, x)
        _contrastive_update(energy_fn, opt, batch, x.detach())
    return step


def bare_sm_exact(data: torch.Tensor, g: torch.Generator) -> Callable[[torch.Tensor], None]:
    energy_fn = _energy()
    opt = _adam(energy_fn.parameters())

    def step(batch: torch.Tensor) -> None:
        x = batch.detach().requires_grad_(True)
        (s,) = torch.autograd.grad(energy_fn(x).sum(), x, create_graph=True)  # ∇ₓE [B, 2]
        trace = sum(torch.autograd.grad(s[:, d].sum(), x, create_graph=True)[0][:, d]
                    for d in range(2))
        loss = (0.5 * s.pow(2).sum(1) - trace).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def bare_nce(data: torch.Tensor, g: torch.Generator) -> Callable[[torch.Tensor], None]:
    energy_fn = _energy()
    log_z = torch.nn.Parameter(torch.zeros(()))
    opt = _adam([*energy_fn.parameters(), log_z])
    q = torch.distributions.MultivariateNormal(data.mean(0), torch.cov(data.T))
    chol = torch.linalg.cholesky(torch.cov(data.T))

    def step(batch: torch.Tensor) -> None:
        y = data.mean(0) + torch.randn(batch.shape, generator=g) @ chol.T
        e = energy_fn(torch.cat([batch, y]))
        lq = q.log_prob(torch.cat([batch, y]))
        logit = -e - log_z - lq  # ν = 1
        b = batch.shape[0]
        loss = F.softplus(-logit[:b]).mean() + F.softplus(logit[b:]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def ours(kind: str, data: torch.Tensor, g: torch.Generator) -> Callable[[torch.Tensor], None]:
    energy_fn = _energy()
    if kind == "mle+langevin":
        t = MLETrainer(energy_fn, Langevin(step_size=ETA), data, _adam, alpha=ALPHA,
                       n_chains=CHAINS, sampler_steps=1, reinit_prob=0.0, warmup_steps=0)
    elif kind == "mle+hmc":
        t = MLETrainer(energy_fn, HMC(step_size=EPS, n_leapfrog=L), data, _adam, alpha=ALPHA,
                       n_chains=CHAINS, sampler_steps=1, reinit_prob=0.0, warmup_steps=0)
    elif kind == "score_matching (exact)":
        t = ScoreMatchingTrainer(energy_fn, data, _adam, method="exact")
    else:
        t = NCETrainer(energy_fn, data, _adam)
    return functools.partial(t.step, generator=g)


BARE = {
    "mle+langevin": bare_mle_langevin,
    "mle+hmc": bare_mle_hmc,
    "score_matching (exact)": bare_sm_exact,
    "nce": bare_nce,
}


def _time(step: Callable[[torch.Tensor], object], batches: list[torch.Tensor]) -> float:
    start = time.perf_counter()
    for b in batches:
        step(b)
    return (time.perf_counter() - start) / len(batches)


COMPILED = {"mle+hmc": ["trainer=mle", "sampler=hmc"],
            "mle+langevin": ["trainer=mle", "sampler=langevin"], "nce": ["trainer=nce"]}
COMPILE_STEPS = 5


def compile_table(args: argparse.Namespace) -> None:
    """ebm-train's training step with compile=false vs compile=true (see the module docstring)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))
    from hydra import compose, initialize_config_module

    from ebm_cli.app.config_check import check_config
    from ebm_cli.build import build

    def step_fn(overrides: list[str], compiled: bool) -> Callable[[torch.Tensor], object]:
        cfg = check_config(compose("config", [*overrides, *args.override,
                                              f"compile={str(compiled).lower()}"]))
        torch.manual_seed(0)
        parts = build(cfg, torch.device("cpu"), torch.float32)
        return functools.partial(parts.trainer.step, generator=torch.Generator().manual_seed(0))

    print(f"| trainer | eager (ms/step) | compiled (ms/step) | speed-up | compile (s) |"
          f"  threads={args.threads} {' '.join(args.override)}")
    print("|---|---:|---:|---:|---:|")
    with initialize_config_module("ebm_cli.configs", version_base="1.3"):
        for kind in args.only:
            overrides = COMPILED[kind]
            data = two_gaussians().train
            g = torch.Generator().manual_seed(0)
            batches = [data[torch.randint(0, data.shape[0], (BATCH,), generator=g)]
                       for _ in range(args.steps)]
            eager, compiled = step_fn(overrides, False), step_fn(overrides, True)
            first = COMPILE_STEPS * (_time(compiled, batches[:COMPILE_STEPS])
                                     - _time(eager, batches[:COMPILE_STEPS]))
            t_eager, t_comp = [], []
            for _ in range(args.repeats):  # interleaved, so load drifts hit both alike
                t_eager.append(_time(eager, batches))
                t_comp.append(_time(compiled, batches))
            me, mc = statistics.median(t_eager), statistics.median(t_comp)
            print(f"| {kind} | {1e3 * me:.2f} | {1e3 * mc:.2f} | {me / mc:.2f}× | {first:.1f} |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--compile", action="store_true",
                        help="compare ebm-train's step with compile=false and compile=true")
    parser.add_argument("--override", nargs="*", default=[],
                        help="--compile: extra config overrides, e.g. energy.width=512")
    parser.add_argument("--only", nargs="*", default=list(COMPILED), choices=list(COMPILED),
                        help="--compile: the trainers to time")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.compile:
        compile_table(args)
        return
    data = two_gaussians().train
    g = torch.Generator().manual_seed(0)
    print(f"| trainer | ours (ms/step) | bare (ms/step) | ratio |  threads={args.threads}")
    print("|---|---:|---:|---:|")
    for kind, bare_factory in BARE.items():
        ours_step, bare_step = ours(kind, data, g), bare_factory(data, g)
        idx = [torch.randint(0, data.shape[0], (BATCH,), generator=g) for _ in range(args.steps)]
        batches = [data[i] for i in idx]
        _time(ours_step, batches[:5]), _time(bare_step, batches[:5])  # warm up
        t_ours, t_bare = [], []
        for _ in range(args.repeats):  # interleaved, so load drifts hit both alike
            t_ours.append(_time(ours_step, batches))
            t_bare.append(_time(bare_step, batches))
        mo, mb = statistics.median(t_ours), statistics.median(t_bare)
        print(f"| {kind} | {1e3 * mo:.2f} | {1e3 * mb:.2f} | {mo / mb:.2f} |")


if __name__ == "__main__":
    main()
