"""Image quality and likelihood on scikit-learn's 8×8 digits: trained EBMs next to references.

Rows: held-out real digits (the test split), a full-covariance Gaussian fitted to the training
digits (its samples as drawn, and its exact bits/dim), uniform noise on [0, 1)^64, and one row
per EBM recipe: ``+experiment=digits`` (cold SGLD, T = 5e-4) and ``+experiment=digits_t1``
(MALA at T = 1), trained here or read from ``--run NAME=DIR``. An EBM row's numbers are the
run's own metrics.json (samples from fresh chains, log Z by forward and reverse AIS), plus an
AIS re-run on its checkpoint with ``--ais-check`` temperatures (default 4× the run's 500), which
must agree with the run's estimate within the standard errors if AIS has converged. Columns:
PCA-20 Fréchet distance to the training digits (samples clamped to the pixel range), the
classifier's mean confidence, classes covered (≥ 1% of samples), label entropy (nats, max
ln 10 = 2.303), held-out bits/dim (dequantised, 17 levels) ± its standard error, AIS weight
ESS (of 100 chains), and wall time.

    python benchmarks/bench_digits.py                       # trains both (≈ 15 min, 2 loaded cores)
    python benchmarks/bench_digits.py --experiment digits_t1
    python benchmarks/bench_digits.py --run digits_t1=outputs/bench_digits_t1
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from ebm_cli.checkpoint import load, trained_energy
from ebm_cli.data.images import digits
from ebm_cli.evaluation.ais import AIS_STEPS, GaussianBase, ais_log_partition
from ebm_cli.evaluation.images import fd_pca, image_metrics, reference

ROOT = Path(__file__).resolve().parents[1]
N_SAMPLES = 1000


def _bits_per_dim(nll_nats: float, d: int, levels: int) -> float:
    return (nll_nats + d * math.log(levels)) / (d * math.log(2))


def reference_rows(seed: int = 0) -> list[dict[str, object]]:
    ds = digits()
    ref = reference(ds.train, ds.train_labels)
    flat = ds.train.flatten(1).double()
    mean, cov = flat.mean(0), torch.cov(flat.T)
    jitter = 1e-6 * torch.eye(64, dtype=cov.dtype)
    gauss = torch.distributions.MultivariateNormal(mean, cov + jitter)
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(N_SAMPLES, 64, generator=g, dtype=torch.float64)
    gauss_samples = (mean + z @ torch.linalg.cholesky(gauss.covariance_matrix).T).view(-1, 1, 8, 8)
    noise = torch.rand(N_SAMPLES, 1, 8, 8, generator=g, dtype=torch.float64)
    gauss_nll = float(-gauss.log_prob(ds.test.flatten(1).double()).mean())
    rows = [
        {"model": f"held-out real digits ({ds.test.shape[0]})",
         **image_metrics(ds.test, ds.train, ds.train_labels), "bits_per_dim": None},
        {"model": f"full-cov Gaussian ({N_SAMPLES})",
         **image_metrics(gauss_samples, ds.train, ds.train_labels),
         "bits_per_dim": _bits_per_dim(gauss_nll, 64, 17)},
        {"model": "  same, FD without clamping", "fd_pca": fd_pca(gauss_samples, ref, clamp=False)},
        {"model": f"uniform noise ({N_SAMPLES})",
         **image_metrics(noise, ds.train, ds.train_labels),
         "bits_per_dim": _bits_per_dim(0.0, 64, 17)},  # density 1 on [0, 1)^64: NLL 0
    ]
    return rows


def _bits(m: dict[str, float], log_z: float) -> float:
    """bits/dim of the run's held-out NLL with log Ẑ replaced by ``log_z``."""
    return m["bits_per_dim"] + (log_z - m["log_z_ais"]) / (64 * math.log(2))


def ais_check(run_dir: Path, n_steps: int, n_chains: int = 200, seed: int = 1) -> dict[str, float]:
    """Forward AIS again on the run's checkpoint with ``n_steps`` temperatures (its own seed)."""
    state = load(run_dir / "checkpoint.pt")
    ds = digits(standardize=state.get("data_transform") is not None)
    energy_fn = trained_energy(str(run_dir), event_shape=ds.event_shape)
    for p in energy_fn.parameters():
        p.requires_grad_(False)
    result = ais_log_partition(energy_fn, GaussianBase(ds.train), n_chains, n_steps,
                               torch.Generator().manual_seed(seed))
    return {"log_z": float(result.log_z), "se": float(result.log_z_se),
            "ess": float(result.ess), "chains": n_chains, "steps": n_steps}


def ebm_row(name: str, run_dir: Path, seconds: float | None, check_steps: int) -> dict[str, object]:
    m = json.loads((run_dir / "metrics.json").read_text())
    d_ln2 = 64 * math.log(2)
    extra = (f"train {m['train_seconds']:.0f} s, {m['steps']} updates; "
             f"T = {m.get('sampler_temperature', 1.0):.2g}; "
             f"log Z (AIS, {AIS_STEPS} temperatures) = {m['log_z_ais']:.2f} "
             f"± {m['log_z_ais_se']:.2f}, weight ESS {m['ais_weight_ess']:.0f}")
    if "log_z_ais_reverse" in m:
        extra += (f"; reverse AIS from its samples {m['log_z_ais_reverse']:.2f} "
                  f"± {m['log_z_ais_reverse_se']:.2f} (ESS {m['ais_reverse_weight_ess']:.0f}), "
                  f"bits/dim {m['bits_per_dim_reverse']:.3f}")
    if check_steps > 0:
        c = ais_check(run_dir, check_steps)
        extra += (f"; AIS check with {c['steps']} temperatures, {c['chains']} chains: "
                  f"{c['log_z']:.2f} ± {c['se']:.2f} (ESS {c['ess']:.0f}), "
                  f"bits/dim {_bits(m, c['log_z']):.3f}")
    return {
        "model": f"EBM, +experiment={name}",
        **{k: m.get(k) for k in ("fd_pca", "classifier_confidence", "classes_covered",
                                 "label_entropy", "bits_per_dim", "ais_weight_ess")},
        "bits_se": m["test_nll_ais_se"] / d_ln2,
        "seconds": seconds if seconds is not None else m.get("train_seconds"),
        "extra": extra,
    }


def _fmt(v: object, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def print_table(rows: list[dict[str, object]]) -> None:
    print("| model | FD (PCA-20) ↓ | confidence | classes | label entropy | bits/dim ↓ "
          "| AIS ESS | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        bits = _fmt(r.get("bits_per_dim"), ".2f")
        if r.get("bits_se") is not None:
            bits = f"{r['bits_per_dim']:.3f} ± {r['bits_se']:.3f}"
        print(f"| {r['model']} | {_fmt(r.get('fd_pca'), '.3f')} | "
              f"{_fmt(r.get('classifier_confidence'), '.2f')} | "
              f"{_fmt(r.get('classes_covered'), '.0f')} | {_fmt(r.get('label_entropy'), '.2f')} | "
              f"{bits} | {_fmt(r.get('ais_weight_ess'), '.0f')} | "
              f"{_fmt(r.get('seconds'), '.0f')} |")
    for r in rows:
        if r.get("extra"):
            print(f"\n{r['model']}: {r['extra']}")


def train(name: str, overrides: list[str]) -> tuple[Path, float]:
    """Run ``ebm-train +experiment=NAME`` into outputs/bench_NAME; (run dir, wall seconds)."""
    run_dir = ROOT / "outputs" / f"bench_{name}"
    script = Path(sys.executable).parent / "ebm-train"
    cmd = [str(script) if script.exists() else "ebm-train", f"+experiment={name}",
           f"hydra.run.dir={run_dir}", *overrides]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return run_dir, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", action="append",
                        help="an experiment to train (repeatable; default: digits and digits_t1)")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=DIR",
                        help="an existing run of +experiment=NAME instead of training it")
    parser.add_argument("--ais-check", type=int, default=4 * AIS_STEPS, metavar="K",
                        help="temperatures of the AIS re-run on each checkpoint (0: none)")
    parser.add_argument("overrides", nargs="*", help="extra ebm-train overrides when training")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs: list[tuple[str, Path, float | None]] = []
    for item in args.run:
        name, _, path = item.partition("=")
        if not path:
            parser.error(f"--run takes NAME=DIR, got {item!r}")
        runs.append((name, Path(path), None))
    if not args.run:
        for name in args.experiment or ["digits", "digits_t1"]:
            runs.append((name, *train(name, args.overrides)))
    rows = reference_rows()
    rows += [ebm_row(name, run_dir, seconds, args.ais_check) for name, run_dir, seconds in runs]
    print_table(rows)


if __name__ == "__main__":
    main()
