"""Training speed against torchebm 0.8.9: the same CD-k MLE update on both sides.

Both sides: 2-D data (two_gaussians), the MLP 2-128-128-128-1 with SiLU (the same initial
weights, sent to the peer), batch 256 with the chains started at the batch (CD-k: 256 chains),
loss mean E(data) − mean E(neg) + α·(mean E(data)² + mean E(neg)²), α = 0.01, Adam lr 1e-3,
float32, one thread. Rows:

- CD-40 Langevin: 40 ULA steps x' = x − η∇E(x) + √(2η) ξ, η = 0.01, per update;
- CD-2 HMC L=10: 2 HMC transitions of 10 leapfrog steps, ε = 0.1, identity mass, no jitter.

Columns: ours eager and ours compiled (``compile=false`` / ``true``: ebm-train's own MLETrainer
built from the composed config by ``ebm_cli.build.build``, as the CLI builds it); a bare
compiled loop of the same work (the k transitions as ONE torch.compile graph over
``torch.func`` gradients, draws made outside, the loss and Adam step eager: the reference of
issue #17's "≤ 1.1× a bare compiled loop"); for a DrawsAhead sampler (ULA) ours compiled
once more with every transition its own graph call (``compiled.MAX_FUSED = 1`` during its
blocks: how compiled transitions ran before k transitions per call); torchebm's public CD loop
(``ContrastiveDivergence`` + ``LangevinDynamics`` / ``HamiltonianMonteCarlo``, Adam) in a worker
of the bench venv (benchmarks/_torchebm_worker.py). Time is process CPU time per update; the
columns alternate block by block (the order rotated every round), and the table gives medians
over rounds, the ratios as the median of the per-round ratios. The compile time (the first
two updates, wall) is reported apart.

Work is counted, not assumed: forward and backward passes through the MLP per update (hooks on
the network, two eager updates each side, in units of one pass over 256 rows). torchebm's HMC
evaluates the force twice per leapfrog step (2L gradients per transition) plus two plain energy
evaluations; ours caches ∇E at the end of each leapfrog step (L gradients per transition, and
one at the start of each update since θ moved). So at equal settings the CD-2 HMC row does
≈ 2× less gradient work on our side; the table also shows the ratio per gradient.

    /work/bench-venv/bin/pip install /opt/wheels/torch-2.13.0+cpu-…whl torchebm==0.8.9
    PYTHONPATH=. python benchmarks/bench_torchebm.py [--rounds 7] [--updates 4]
        [--rows cd40_langevin cd2_hmc] [--python /work/bench-venv/bin/python]
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ebm_cli.data.toy2d import two_gaussians
from ebm_cli.samplers import compiled as compiled_module

BATCH, ALPHA, LR = 256, 0.01, 1e-3
ROWS: dict[str, dict[str, Any]] = {
    "cd40_langevin": {"label": "CD-40 Langevin (η 0.01)", "sampler": "langevin", "k": 40,
                      "step_size": 0.01, "n_leapfrog": 1,
                      "overrides": ["sampler=langevin", "sampler.step_size=0.01"]},
    "cd2_hmc": {"label": "CD-2 HMC L=10 (ε 0.1)", "sampler": "hmc", "k": 2, "step_size": 0.1,
                "n_leapfrog": 10,
                "overrides": ["sampler=hmc", "sampler.step_size=0.1", "sampler.n_leapfrog=10",
                              "sampler.jitter=0", "sampler.jitter_n_leapfrog=false",
                              "sampler.adapt_trajectory=false", "sampler.mass=fixed"]},
}
COMMON = ["trainer=mle", "data=two_gaussians", "trainer.init=data", f"trainer.batch_size={BATCH}",
          f"trainer.n_chains={BATCH}", "trainer.warmup_steps=0", "trainer.lr_schedule=null",
          f"trainer.optimizer.lr={LR}", f"trainer.alpha={ALPHA}", "energy=mlp", "energy.width=128",
          "energy.depth=3", "energy.activation=silu"]
Update = Callable[[Tensor], object]


class PassCounter:
    """Rows through ``module`` forward and backward (the outputs' gradients), summed."""

    def __init__(self, module: nn.Module) -> None:
        self.forward_rows = self.backward_rows = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, out: Tensor) -> None:
        self.forward_rows += out.shape[0]
        if out.requires_grad:
            out.register_hook(self._count_backward)

    def _count_backward(self, grad: Tensor) -> None:
        self.backward_rows += grad.shape[0]


def ours(row: dict[str, Any], compiled: bool, overrides: list[str]) -> tuple[Update, Any]:
    """ebm-train's MLE update for the row, built as the CLI builds it: (update, trainer)."""
    from hydra import compose

    from ebm_cli.app.config_check import check_config
    from ebm_cli.build import build

    cfg = check_config(compose("config", [
        *COMMON, *row["overrides"], f"trainer.sampler_steps={row['k']}", *overrides,
        f"compile={str(compiled).lower()}"]))
    torch.manual_seed(0)
    parts = build(cfg, torch.device("cpu"), torch.float32)
    trainer = parts.trainer
    return functools.partial(trainer.step, generator=torch.Generator().manual_seed(0)), trainer


def bare_compiled(row: dict[str, Any], energy_fn: nn.Module) -> Update:
    """The row's k transitions as one torch.compile graph (E and ∇ₓE by torch.func inside,
    draws made outside from a generator), then the contrastive loss and Adam, eager."""
    opt = torch.optim.Adam(energy_fn.parameters(), lr=LR)
    k, eps, n_leap = row["k"], row["step_size"], row["n_leapfrog"]
    g = torch.Generator().manual_seed(0)

    def energy_grad(params: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
        def total(y: Tensor) -> tuple[Tensor, Tensor]:
            e = torch.func.functional_call(energy_fn, params, (y,))
            return e.sum(), e
        grad, e = torch.func.grad(total, has_aux=True)(x)
        return e, grad

    def ula(params: dict[str, Tensor], x: Tensor, noise: Tensor) -> Tensor:  # noise [k, B, D]
        sigma = math.sqrt(2 * eps)
        for i in range(k):
            _, grad = energy_grad(params, x)
            x = x - eps * grad + sigma * noise[i]
        return x

    def hmc(params: dict[str, Tensor], x: Tensor, p0: Tensor, u: Tensor) -> Tensor:
        e, grad = energy_grad(params, x)  # θ moved: one fresh gradient per update
        for i in range(k):  # p0 [k, B, D], u [k, B]
            p = p0[i]
            h0 = e + 0.5 * p.pow(2).sum(1)
            xn, pn = x, p - 0.5 * eps * grad
            for j in range(n_leap):  # L gradients, the last one cached for the next transition
                xn = xn + eps * pn
                en, gn = energy_grad(params, xn)
                pn = pn - (eps if j < n_leap - 1 else 0.5 * eps) * gn
            accept = u[i].log() < h0 - (en + 0.5 * pn.pow(2).sum(1))
            x = torch.where(accept[:, None], xn, x)
            e, grad = torch.where(accept, en, e), torch.where(accept[:, None], gn, grad)
        return x

    chains = torch.compile(ula if row["sampler"] == "langevin" else hmc, fullgraph=True,
                           dynamic=False)

    def update(batch: Tensor) -> None:
        params = {n: p.detach() for n, p in energy_fn.named_parameters()}
        shape = (k, *batch.shape)
        if row["sampler"] == "langevin":
            draws: tuple[Tensor, ...] = (torch.randn(shape, generator=g),)
        else:
            draws = (torch.randn(shape, generator=g), torch.rand(shape[:2], generator=g))
        with torch.no_grad():
            x_neg = chains(params, batch, *draws)
        e = energy_fn(torch.cat([batch, x_neg]))
        ed, en = e[: batch.shape[0]], e[batch.shape[0]:]
        loss = ed.mean() - en.mean() + ALPHA * (ed.pow(2).mean() + en.pow(2).mean())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return update


class Peer:
    """The torchebm worker (benchmarks/_torchebm_worker.py), JSON lines on stdin/stdout."""

    def __init__(self, python: str) -> None:
        worker = Path(__file__).with_name("_torchebm_worker.py")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
        self.proc = subprocess.Popen([python, str(worker)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the torchebm worker exited (status {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _cpu_block(update: Update, batches: list[Tensor], start: int, n: int) -> float:
    t = time.process_time()
    for i in range(start, start + n):
        update(batches[i % len(batches)])
    return time.process_time() - t


def _per_step_block(update: Update, batches: list[Tensor], start: int, n: int) -> float:
    """_cpu_block with compiled.MAX_FUSED = 1: every transition its own graph call, as before
    k transitions per call (the A/B comparison of the fused chunks)."""
    cap = compiled_module.MAX_FUSED
    compiled_module.MAX_FUSED = 1
    try:
        return _cpu_block(update, batches, start, n)
    finally:
        compiled_module.MAX_FUSED = cap


def _count(update: Update, module: nn.Module, batches: list[Tensor], n: int = 2
           ) -> dict[str, float]:
    counter = PassCounter(module)
    for b in batches[:n]:
        update(b)
    counter.handle.remove()
    return {"forward": counter.forward_rows / (BATCH * n),
            "backward": counter.backward_rows / (BATCH * n)}


def run_row(name: str, args: argparse.Namespace, peer: Peer | None, tmp: Path) -> dict[str, Any]:
    row = ROWS[name]
    data = two_gaussians().train
    g = torch.Generator().manual_seed(1)
    batches = [data[torch.randint(0, data.shape[0], (BATCH,), generator=g)] for _ in range(64)]
    eager, eager_trainer = ours(row, False, args.override)
    compiled, comp_trainer = ours(row, True, args.override)
    plain = eager_trainer.energy_fn
    bare_energy = type(plain)((2,), 128, 3, "silu")
    bare_energy.load_state_dict(plain.state_dict())
    bare = bare_compiled(row, bare_energy)
    # the same initial weights everywhere: ours compiled is built from the same seed
    same = all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(),
                                                  comp_trainer.energy_fn.state_dict().values()))
    assert same, "ours eager and compiled start from different weights"
    counts = {"ours": _count(eager, plain.net, batches)}
    columns: dict[str, Callable[[int, int], float]] = {
        "ours eager": lambda s, n: _cpu_block(eager, batches, s, n),
        "ours compiled": lambda s, n: _cpu_block(compiled, batches, s, n),
        "bare compiled": lambda s, n: _cpu_block(bare, batches, s, n),
    }
    warm = {"ours compiled": functools.partial(_cpu_block, compiled, batches),
            "bare compiled": functools.partial(_cpu_block, bare, batches)}
    if isinstance(comp_trainer.sampler, compiled_module.DrawsAhead):  # A/B: one step per graph
        per_step, _ = ours(row, True, args.override)
        warm["ours compiled, 1 step per call"] = functools.partial(
            _per_step_block, per_step, batches)
        columns["ours compiled, 1 step per call"] = warm["ours compiled, 1 step per call"]
    first: dict[str, float] = {}
    for key, block in warm.items():  # the first two updates compile
        t = time.perf_counter()
        block(0, 2)
        first[key] = time.perf_counter() - t
    versions = {}
    if peer is not None:
        torch.save(plain.net.state_dict(), tmp / "weights.pt")
        torch.save(torch.stack(batches), tmp / "batches.pt")
        spec = {k: row[k] for k in ("sampler", "k", "step_size", "n_leapfrog")}
        reply = peer.ask({"cmd": "setup", "row": {**spec, "lr": LR, "alpha": ALPHA,
                                                  "weights": str(tmp / "weights.pt"),
                                                  "batches": str(tmp / "batches.pt")}})
        counts["torchebm"], versions = reply["counts"], reply["versions"]
        columns["torchebm"] = lambda s, n: peer.ask({"cmd": "time", "n": n})["cpu_s"]
    names = list(columns)
    times: dict[str, list[float]] = {c: [] for c in names}
    start = 2
    for r in range(args.rounds):
        order = names[r % len(names):] + names[: r % len(names)]
        for c in order:
            times[c].append(columns[c](start, args.updates) / args.updates)
        start += args.updates
    return {"row": row, "times": times, "counts": counts, "first": first,
            "versions": versions, "gradients": {
                "ours eager": eager_trainer.gradients_per_update(),
                "ours compiled": comp_trainer.gradients_per_update()}}


def _ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def report(results: list[dict[str, Any]]) -> None:
    peer = "torchebm" in results[0]["times"]
    head = "| row | ours eager (ms) | ours compiled (ms) | bare compiled (ms) |"
    rule = "|---|---:|---:|---:|"
    if peer:
        head += " torchebm (ms) | torchebm / ours eager | torchebm / ours compiled |"
        rule += "---:|---:|---:|"
    print(head + " ours compiled / bare compiled | ours compiled, 1 step per call (ms; "
          "/ ours compiled) |")
    print(rule + "---:|---:|")
    for res in results:
        t = res["times"]
        med = {c: 1e3 * statistics.median(v) for c, v in t.items()}
        line = (f"| {res['row']['label']} | {med['ours eager']:.1f} | {med['ours compiled']:.1f} |"
                f" {med['bare compiled']:.1f} |")
        if peer:
            line += (f" {med['torchebm']:.1f} | {_ratio(t, 'torchebm', 'ours eager'):.2f}× |"
                     f" {_ratio(t, 'torchebm', 'ours compiled'):.2f}× |")
        one = "ours compiled, 1 step per call"
        per = "–" if one not in t else (
            f"{med[one]:.1f} ({_ratio(t, one, 'ours compiled'):.2f}×)")
        print(line + f" {_ratio(t, 'ours compiled', 'bare compiled'):.2f}× | {per} |",
              flush=True)
    print("\nWork per update: passes through the MLP over 256 rows (counted by hooks, two eager "
          "updates; the bare loop does ours' work by construction) and our trainer's own "
          "gradients_per_update:")
    print("| row | ours fwd / bwd | torchebm fwd / bwd | ours gradients_per_update "
          "(eager, compiled) | torchebm / ours compiled, per backward pass |")
    print("|---|---:|---:|---:|---:|")
    for res in results:
        c, gr = res["counts"], res["gradients"]
        o = f"{c['ours']['forward']:.0f} / {c['ours']['backward']:.0f}"
        te = (f"{c['torchebm']['forward']:.0f} / {c['torchebm']['backward']:.0f}"
              if "torchebm" in c else "–")
        per = "–"
        if "torchebm" in c:
            r = _ratio(res["times"], "torchebm", "ours compiled")
            per = f"{r * c['ours']['backward'] / c['torchebm']['backward']:.2f}×"
        print(f"| {res['row']['label']} | {o} | {te} | {gr['ours eager']:.0f}, "
              f"{gr['ours compiled']:.0f} | {per} |")
    print("\nFirst two updates, wall s (compile): " + "; ".join(
        f"{res['row']['label']}: " + ", ".join(f"{k} {v:.1f}" for k, v in res["first"].items())
        for res in results))
    if results[0]["versions"]:
        print(f"peer versions: {results[0]['versions']}; ours: torch {torch.__version__}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--updates", type=int, default=4, help="updates per timed block")
    parser.add_argument("--rows", nargs="*", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--python", default="/work/bench-venv/bin/python",
                        help="the bench venv's interpreter (torchebm); '' to skip the peer")
    parser.add_argument("--override", nargs="*", default=[],
                        help="extra config overrides for our trainer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))
    from hydra import initialize_config_module

    peer = Peer(args.python) if args.python else None
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp, \
                initialize_config_module("ebm_cli.configs", version_base="1.3"):
            for name in args.rows:
                results.append(run_row(name, args, peer, Path(tmp)))
    finally:
        if peer is not None:
            peer.close()
    report(results)
    print(f"\ncommand: {' '.join(sys.argv)}; threads 1; CPU time per update, median of "
          f"{args.rounds} rounds of {args.updates} updates")


if __name__ == "__main__":
    main()
