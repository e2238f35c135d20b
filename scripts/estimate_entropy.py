"""Estimate the differential entropy H = −E[log p(X)] (nats) of the toy datasets without a
closed-form ``log_prob`` (moons, spirals, pinwheel, swissroll; circles for comparison), at the
default parameters of ebm_cli.data.toy2d, and store them in ebm_cli/data/entropies.py.

Methods
- circles: the closed-form density (``ring_mixture_log_prob``); plain Monte Carlo of −log p(X).
- moons, swissroll: x = c(t) + σε with a 1-D latent t, so p(x) = ∫ p(t) N(x | c(t), σ²I) dt,
  computed by composite Gauss–Legendre quadrature in t (accurate far below the Monte Carlo
  error; the script checks that it integrates to 1 over the dataset's box); then Monte Carlo.
- spirals: the same, with the uniform jitter box convolved with the Gaussian noise in closed form
  per coordinate: ∫ U(y | lo, hi) N(x − y | 0, σ²) dy = (Φ((x − lo)/σ) − Φ((x − hi)/σ))/(hi − lo).
- pinwheel: no cheap density (its map from latent to data has no closed-form inverse), so the
  Kozachenko–Leonenko k-nearest-neighbour estimator
  H ≈ ψ(N) − ψ(k) + log V₂ + (2/N) Σ log ε_i  (V₂ = π, ε_i the distance to the k-th neighbour).
  Its bias at this N is checked on the four datasets whose exact value is known (printed).
Each value is the mean over R independent repeats (seeds 1..R); its standard error is the
standard deviation over repeats / √R.

Regenerate (about 15 minutes on one shared core):
    PYTHONPATH=. python scripts/estimate_entropy.py --write
Without --write it only prints the table.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from scipy.spatial import cKDTree
from scipy.special import digamma
from torch import Tensor

from ebm_cli.data import curves, toy2d
from ebm_cli.data.base import Dataset
from ebm_cli.evaluation.quadrature import grid_2d

LOG_2PI = math.log(2 * math.pi)
ENTROPY_FILE = Path(__file__).resolve().parents[1] / "ebm_cli" / "data" / "entropies.py"


def gauss_legendre(lo: float, hi: float, panels: int, order: int = 8) -> tuple[Tensor, Tensor]:
    """Nodes and weights [panels·order] of composite Gauss–Legendre on [lo, hi]."""
    z, w = np.polynomial.legendre.leggauss(order)
    edges = np.linspace(lo, hi, panels + 1)
    half = 0.5 * (edges[1:] - edges[:-1])[:, None]  # [P, 1]
    mid = 0.5 * (edges[1:] + edges[:-1])[:, None]
    return torch.from_numpy((mid + half * z).ravel()), torch.from_numpy((half * w).ravel())


def chunked(fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int = 2048) -> Tensor:
    return torch.cat([fn(x[i : i + chunk]) for i in range(0, x.shape[0], chunk)])


def curve_log_prob(
    x: Tensor, centres: Tensor, log_w: Tensor, std: float
) -> Tensor:
    """log Σ_j w_j N(x | c_j, σ²I): quadrature of ∫ p(t) N(x | c(t), σ²I) dt; x [B, 2] -> [B].

    centres [M, 2] = c(t_j), log_w [M] = log(p(t_j)·quadrature weight_j).
    """
    def block(xb: Tensor) -> Tensor:
        sq = torch.cdist(xb, centres) ** 2  # [b, M]
        return torch.logsumexp(log_w - 0.5 * sq / std**2, dim=1) - LOG_2PI - 2 * math.log(std)

    return chunked(block, x)


def moons_log_prob(
    noise: float = 0.1, scale: float = 2.0, panels: int = 64
) -> Callable[[Tensor], Tensor]:
    """t ~ U(0, 2π); each moon (t < π, t ≥ π) integrated separately (the curve jumps at π)."""
    t_up, w_up = gauss_legendre(0.0, math.pi, panels)
    t_lo, w_lo = gauss_legendre(math.pi, 2 * math.pi, panels)
    t, w = torch.cat([t_up, t_lo]), torch.cat([w_up, w_lo])
    centres = curves.moons_curve(t, scale)
    log_w = (w / (2 * math.pi)).log()
    return lambda x: curve_log_prob(x, centres, log_w, scale * noise)


def swissroll_log_prob(
    noise: float = 1.0, scale: float = 0.2, panels: int = 128
) -> Callable[[Tensor], Tensor]:
    """t ~ U(1.5π, 4.5π)."""
    t, w = gauss_legendre(1.5 * math.pi, 4.5 * math.pi, panels)
    centres = curves.swissroll_curve(t, scale)
    log_w = (w / (3 * math.pi)).log()
    return lambda x: curve_log_prob(x, centres, log_w, scale * noise)


def spirals_log_prob(
    noise: float = 0.1, turns: float = 1.5, jitter: float = 0.5, panels: int = 128
) -> Callable[[Tensor], Tensor]:
    """n ~ 2n/n_max² on [0, n_max]; arm ±1 equally; jitter box ⊛ Gaussian per coordinate."""
    n_max = 2 * math.pi * turns
    n, w = gauss_legendre(0.0, n_max, panels)
    arm = curves.spirals_curve(n) / curves.SPIRALS_DIVISOR  # [M, 2]
    box = jitter / curves.SPIRALS_DIVISOR
    lo = torch.cat([arm, -arm - box])  # [2M, 2] lower corner of each jitter box, both arms
    log_w = torch.cat([w, w]).log() + torch.cat([n, n]).log() + math.log(2 / n_max**2 / 2)

    def block(xb: Tensor) -> Tensor:
        a = (xb[:, None, :] - lo[None]) / noise  # [b, 2M, 2]
        if box == 0:
            per_dim = -0.5 * a**2 - 0.5 * LOG_2PI - math.log(noise)
        else:
            diff = torch.special.ndtr(a) - torch.special.ndtr(a - box / noise)
            per_dim = diff.clamp_min(1e-300).log() - math.log(box)  # 0 only far off the curve
        return torch.logsumexp(log_w + per_dim.sum(-1), dim=1)

    return lambda x: chunked(block, x, 256)


def circles_log_prob(
    factor: float = 0.5, noise: float = 0.08, scale: float = 3.0
) -> Callable[[Tensor], Tensor]:
    radii = torch.tensor([scale, factor * scale], dtype=torch.float64)
    w = torch.full((2,), 0.5, dtype=torch.float64)
    return lambda x: toy2d.ring_mixture_log_prob(x, radii, noise * scale, w)


def knn_entropy(x: np.ndarray, k: int) -> float:
    """Kozachenko–Leonenko estimate (nats) from samples x [N, 2]."""
    n = x.shape[0]
    dist, _ = cKDTree(x).query(x, k=k + 1)  # column 0 is the point itself
    eps = dist[:, k]
    return float(digamma(n) - digamma(k) + math.log(math.pi) + 2 * np.log(eps).mean())


def builder(name: str) -> Callable[..., Dataset]:
    """The dataset builder called ``name`` (closed-form toys or noisy curves)."""
    return getattr(toy2d, name, None) or getattr(curves, name)


def samples(name: str, n: int, seed: int) -> Tensor:
    """n samples [n, 2] of the dataset at its default parameters (its own sampler)."""
    return builder(name)(n_train=n, n_test=1, seed=seed).train.double()


def check_normalisation(name: str, log_prob: Callable[[Tensor], Tensor], n: int = 600) -> float:
    bounds = builder(name)(n_train=1, n_test=1).bounds
    points, area = grid_2d(bounds, n)
    return float(torch.logsumexp(log_prob(points), 0).exp() * area)


EXACT = {
    "circles": (circles_log_prob, {"factor": 0.5, "noise": 0.08, "scale": 3.0}),
    "moons": (moons_log_prob, {"noise": 0.1, "scale": 2.0}),
    "spirals": (spirals_log_prob, {"noise": 0.1, "turns": 1.5, "jitter": 0.5}),
    "swissroll": (swissroll_log_prob, {"noise": 1.0, "scale": 0.2}),
}
PINWHEEL = {"arms": 5, "radial_std": 0.3, "tangential_std": 0.1, "rate": 0.25, "scale": 2.0}


def write(results: dict[str, dict]) -> None:
    lines = ["ENTROPIES: dict[str, dict[str, Any]] = {"]
    for name, r in results.items():
        lines.append(f"    {name!r}: {{")
        lines.append(f"        'params': {r['params']!r},")
        lines.append(f"        'entropy': {r['entropy']:.4f},")
        lines.append(f"        'stderr': {r['stderr']:.4f},")
        lines.append(f"        'method': {r['method']!r},")
        lines.append(f"        'samples': {r['samples']},")
        lines.append(f"        'repeats': {r['repeats']},")
        if "bias_check" in r:  # |kNN − exact| on the exact datasets, a bound on kNN's bias
            lines.append(f"        'bias_check': {r['bias_check']:.4f},")
        lines.append("    },")
    lines.append("}")
    block = "\n".join(lines).replace("'", '"')
    text = ENTROPY_FILE.read_text()
    pattern = r"(# BEGIN GENERATED[^\n]*\n).*?(# END GENERATED)"
    text = re.sub(pattern, lambda m: m.group(1) + block + "\n" + m.group(2), text, flags=re.S)
    ENTROPY_FILE.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-exact", type=int, default=100_000, help="samples per repeat (exact)")
    parser.add_argument("--n-knn", type=int, default=400_000, help="samples per repeat (kNN)")
    parser.add_argument("--k", type=int, default=1, help="neighbour order of the kNN estimator")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--write", action="store_true", help="rewrite ebm_cli/data/entropies.py")
    args = parser.parse_args()
    torch.set_num_threads(1)
    r = args.repeats
    results: dict[str, dict] = {}
    knn_bias = 0.0  # the largest |kNN − exact| over the datasets with an exact density
    print(f"{'dataset':10s} {'H (nats)':>9s} {'s.e.':>7s}  {'kNN H':>9s} {'s.e.':>7s}  "
          f"{'kNN-exact':>9s}  {'∫p on box':>9s}")
    for name, (make, params) in EXACT.items():
        log_prob = make(**params)
        mass = check_normalisation(name, log_prob)
        exact = [-float(log_prob(samples(name, args.n_exact, s)).mean()) for s in range(r)]
        knn = [knn_entropy(samples(name, args.n_knn, 100 + s).numpy(), args.k)
               for s in range(r)]
        h, se = float(np.mean(exact)), float(np.std(exact, ddof=1) / math.sqrt(r))
        hk, sek = float(np.mean(knn)), float(np.std(knn, ddof=1) / math.sqrt(r))
        print(f"{name:10s} {h:9.4f} {se:7.4f}  {hk:9.4f} {sek:7.4f}  {hk - h:+9.4f}  {mass:9.6f}")
        knn_bias = max(knn_bias, abs(hk - h))
        method = (
            "closed-form density, Monte Carlo of -log p" if name == "circles"
            else "density by Gauss-Legendre quadrature over the latent curve, Monte Carlo"
        )
        results[name] = {"params": params, "entropy": h, "stderr": se, "method": method,
                         "samples": args.n_exact, "repeats": r}
    knn = [knn_entropy(samples("pinwheel", args.n_knn, s).numpy(), args.k)
           for s in range(r)]
    hk, sek = float(np.mean(knn)), float(np.std(knn, ddof=1) / math.sqrt(r))
    print(f"{'pinwheel':10s} {'':9s} {'':7s}  {hk:9.4f} {sek:7.4f}")
    results["pinwheel"] = {
        "params": PINWHEEL, "entropy": hk, "stderr": sek,
        "method": f"Kozachenko-Leonenko kNN estimator, k={args.k}",
        "samples": args.n_knn, "repeats": r, "bias_check": knn_bias,
    }
    results = dict(sorted(results.items()))
    if args.write:
        write(results)
        print(f"wrote {ENTROPY_FILE}")


if __name__ == "__main__":
    main()
