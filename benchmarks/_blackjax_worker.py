"""BlackJAX side of benchmarks/bench_blackjax.py: a long-lived worker run with the bench venv.

Not part of the project and never imported by it: it needs jax and blackjax, which live only in
a separate virtual environment (docs/speed.md). The main script starts it once

    /work/bench-venv/bin/python benchmarks/_blackjax_worker.py

and talks to it in JSON lines on stdin/stdout, so its rounds interleave with ours:

    {"cmd": "setup", "row": {...}}  -> {"compile_s": …, "warmup_accept": …, "versions": …}
    {"cmd": "time", "name": …}      -> {"cpu_s": …, "wall_s": …}   (one timed call, ``steps``)
    {"cmd": "quit"}

A row is one target and kernel: ``target`` (two_gaussians | rosenbrock | gaussian with ``mean``
[D] and ``precision`` [D, D] sent by the main script, so both sides use the same numbers),
``kernel`` (rwmh | mala | hmc), ``step_size``, ``n_leapfrog``, ``steps`` and ``x0`` (a .npy
file of the starting chains [B, D] the main script drew). Each row's program is one
``jax.jit`` of ``jax.lax.scan`` over ``steps`` transitions of ``jax.vmap``-ed BlackJAX kernels
(one PRNG key per chain and step), compiled ahead of time (``compile_s``, wall seconds). A
timed call runs it from the chains the previous call left and blocks until the result is
ready. Timing is this process's CPU time (time.process_time, all its threads), with XLA
limited to one thread by the XLA_FLAGS the main script sets. The carry also counts accepted
proposals (one fused sum per step), reported for the untimed warm-up call: a check that both
sides run the same chain.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from importlib import metadata
from typing import Any

import blackjax
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import logsumexp

LOG_2PI = float(np.log(2 * np.pi))


def log_density(spec: dict[str, Any]) -> Callable[[jax.Array], jax.Array]:
    """log p̃(x) = −E(x) for one chain x [D], the same formula as ebm_cli/energies/analytic.py."""
    target = spec["target"]
    if target == "two_gaussians":  # GaussianMixture defaults: means (±2, 0), σ = 0.5, w = ½
        means = jnp.array([[-2.0, 0.0], [2.0, 0.0]], dtype=jnp.float32)  # [K, D]
        sd, log_w = 0.5, jnp.log(jnp.array([0.5, 0.5], dtype=jnp.float32))

        def logp(x: jax.Array) -> jax.Array:
            sq = jnp.sum((x[None, :] - means) ** 2, axis=-1)  # [K]
            d = x.shape[0]
            log_n = -0.5 * sq / sd**2 - d * np.log(sd) - 0.5 * d * LOG_2PI
            return logsumexp(log_w + log_n)

        return logp
    if target == "rosenbrock":  # Rosenbrock defaults: a = 1, b = 100, T = 2
        a, b, temp = spec.get("a", 1.0), spec.get("b", 100.0), spec.get("temperature", 2.0)

        def logp(x: jax.Array) -> jax.Array:
            return -((a - x[0]) ** 2 + b * (x[1] - x[0] ** 2) ** 2) / temp

        return logp
    if target == "gaussian":  # CorrelatedGaussian: ½ (x − μ)ᵀ Σ⁻¹ (x − μ)
        mean = jnp.asarray(spec["mean"], dtype=jnp.float32)
        precision = jnp.asarray(spec["precision"], dtype=jnp.float32)

        def logp(x: jax.Array) -> jax.Array:
            diff = x - mean
            return -0.5 * jnp.sum((diff @ precision) * diff)

        return logp
    raise ValueError(f"unknown target {target!r}")


def algorithm(spec: dict[str, Any], logp: Callable, dim: int) -> Any:
    """The BlackJAX SamplingAlgorithm with the same step size (and identity mass) as ours."""
    eps = spec["step_size"]
    if spec["kernel"] == "rwmh":  # x* = x + s ξ
        return blackjax.additive_step_random_walk.normal_random_walk(
            logp, eps * jnp.ones(dim, dtype=jnp.float32))
    if spec["kernel"] == "mala":  # x' = x + η ∇log p + √(2η) ξ
        return blackjax.mala(logp, eps)
    if spec["kernel"] == "hmc":  # velocity Verlet, L steps of ε, M = I
        return blackjax.hmc(logp, eps, jnp.ones(dim, dtype=jnp.float32), spec["n_leapfrog"])
    raise ValueError(f"unknown kernel {spec['kernel']!r}")


class Row:
    """One row's compiled scan and its chains, carried from call to call."""

    def __init__(self, spec: dict[str, Any]) -> None:
        x0 = jnp.asarray(np.load(spec["x0"]), dtype=jnp.float32)  # [B, D]
        n_chains, dim = x0.shape
        alg = algorithm(spec, log_density(spec), dim)
        steps = int(spec["steps"])

        def one(carry: tuple, key: jax.Array) -> tuple[tuple, None]:
            state, accepted = carry
            keys = jax.random.split(key, n_chains)
            state, info = jax.vmap(alg.step)(keys, state)
            return (state, accepted + jnp.sum(info.is_accepted)), None

        def run(key: jax.Array, state: Any) -> tuple[Any, jax.Array]:
            keys = jax.random.split(key, steps)
            (state, accepted), _ = jax.lax.scan(one, (state, jnp.zeros((), jnp.int32)), keys)
            return state, accepted

        self.state = jax.vmap(alg.init)(x0)
        self.key = jax.random.key(int(spec.get("seed", 0)))
        start = time.perf_counter()
        self.program = jax.jit(run).lower(self.key, self.state).compile()
        self.compile_s = time.perf_counter() - start  # wall: lowering + XLA compile
        self.steps, self.n_chains = steps, n_chains

    def call(self) -> tuple[float, float, int]:
        """One run of ``steps`` transitions: (CPU s, wall s, accepted count)."""
        self.key, sub = jax.random.split(self.key)
        cpu, wall = time.process_time(), time.perf_counter()
        self.state, accepted = self.program(sub, self.state)
        jax.block_until_ready(self.state)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        return cpu, wall, int(accepted)


def main() -> None:
    rows: dict[str, Row] = {}
    versions = {"jax": jax.__version__, "jaxlib": metadata.version("jaxlib"),
                "blackjax": blackjax.__version__, "backend": jax.default_backend()}
    for line in sys.stdin:
        msg = json.loads(line)
        if msg["cmd"] == "quit":
            break
        try:
            if msg["cmd"] == "setup":
                spec = msg["row"]
                row = rows[spec["name"]] = Row(spec)
                _, _, accepted = row.call()  # warm-up: first run of the compiled program
                reply = {"compile_s": row.compile_s, "versions": versions,
                         "warmup_accept": accepted / (row.steps * row.n_chains)}
            elif msg["cmd"] == "time":
                cpu, wall, _ = rows[msg["name"]].call()
                reply = {"cpu_s": cpu, "wall_s": wall}
            else:
                reply = {"error": f"unknown command {msg['cmd']!r}"}
        except Exception as e:  # reported to the main script, which prints it for the row
            reply = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()
