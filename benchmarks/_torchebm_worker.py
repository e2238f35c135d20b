"""torchebm side of benchmarks/bench_torchebm.py: a long-lived worker run with the bench venv.

Not part of the project and never imported by it: torchebm lives only in a separate virtual
environment (docs/speed.md). The main script starts it once

    /work/bench-venv/bin/python benchmarks/_torchebm_worker.py

and talks to it in JSON lines on stdin/stdout, so its blocks interleave with ours:

    {"cmd": "setup", "row": {...}}  -> {"counts": {...}, "versions": {...}}
    {"cmd": "time", "n": N}         -> {"cpu_s": …, "wall_s": …}   (N updates of the last row)
    {"cmd": "quit"}

A row: ``sampler`` (langevin | hmc), ``k`` (transitions per update), ``step_size``,
``n_leapfrog``, ``lr``, ``alpha``, ``weights`` (a torch file of the main script's initial MLP
weights, the same Sequential layout) and ``batches`` (a file [N, B, D] of data batches).
An update is torchebm's public CD-k loop: ``loss, neg = ContrastiveDivergence(x)``,
``opt.zero_grad(); loss.backward(); opt.step()`` (the chains start at the batch, as CD-k does).
``counts``: forward and backward passes through the MLP per update, in units of one pass over
the batch's B rows (a forward hook on the network; a backward pass counted by a hook on the
output of every forward that needs a gradient), over two untimed updates.
"""

from __future__ import annotations

import json
import sys
import time
from importlib import metadata
from typing import Any

import torch
from torch import nn
from torchebm.core import BaseModel
from torchebm.losses import ContrastiveDivergence
from torchebm.samplers import HamiltonianMonteCarlo, LangevinDynamics


class MLP(BaseModel):
    """E(x) = net(x) [B]: the layout of ebm_cli.energies.mlp.MLPEnergy (2-128-128-128-1, SiLU)."""

    def __init__(self, width: int = 128, depth: int = 3, dim: int = 2) -> None:
        super().__init__()
        dims = [dim] + [width] * depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        layers.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


class PassCounter:
    """Rows through ``module`` forward, and backward (the outputs' gradients), summed."""

    def __init__(self, module: nn.Module) -> None:
        self.forward_rows = self.backward_rows = 0
        self.on = False
        module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        if not self.on:
            return
        self.forward_rows += out.shape[0]
        if out.requires_grad:
            out.register_hook(self._count_backward)

    def _count_backward(self, grad: torch.Tensor) -> None:
        self.backward_rows += grad.shape[0]


class Row:
    """One configured CD-k training loop of torchebm."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.model = MLP()
        self.model.net.load_state_dict(torch.load(spec["weights"], weights_only=True))
        if spec["sampler"] == "langevin":  # x' = x − η∇E + √(2η·noise_scale²) ξ
            sampler = LangevinDynamics(self.model, step_size=spec["step_size"], noise_scale=1.0,
                                       device="cpu")
        else:
            sampler = HamiltonianMonteCarlo(self.model, step_size=spec["step_size"],
                                            n_leapfrog_steps=spec["n_leapfrog"], device="cpu")
        self.loss = ContrastiveDivergence(self.model, sampler, k_steps=spec["k"],
                                          persistent=False, energy_reg_weight=spec["alpha"],
                                          device=torch.device("cpu"))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=spec["lr"])
        self.batches = torch.load(spec["batches"], weights_only=True)  # [N, B, D]
        self.generator = torch.Generator().manual_seed(0)
        self.i = 0
        self.counter = PassCounter(self.model.net)

    def update(self) -> None:
        x = self.batches[self.i % self.batches.shape[0]]
        self.i += 1
        loss, _ = self.loss(x, generator=self.generator)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def counts(self, updates: int = 2) -> dict[str, float]:
        b = self.batches.shape[1]
        self.counter.on = True
        for _ in range(updates):
            self.update()
        self.counter.on = False
        c = self.counter
        return {"forward": c.forward_rows / (b * updates),
                "backward": c.backward_rows / (b * updates)}


def main() -> None:
    torch.set_num_threads(1)
    row: Row | None = None
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        if msg["cmd"] == "setup":
            row = Row(msg["row"])
            out: dict[str, Any] = {"counts": row.counts(), "versions": {
                p: metadata.version(p) for p in ("torch", "torchebm")}}
        else:
            assert row is not None
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(msg["n"]):
                row.update()
            out = {"cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
