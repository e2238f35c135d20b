"""Image quality on scikit-learn's 8×8 digits: a trained EBM next to reference points.

Rows: held-out real digits (the test split), a full-covariance Gaussian fitted to the training
digits (its samples as drawn, and its exact bits/dim), uniform noise on [0, 1)^64, and the EBM of
``ebm-train +experiment=digits`` (trained here, or read from ``--run DIR``; its numbers are the
run's own metrics.json: samples from fresh SGLD chains, log Z by AIS). Columns: PCA-20 Fréchet
distance to the training digits (samples clamped to the pixel range), the classifier's mean
confidence, classes covered (≥ 1% of samples), label entropy (nats, max ln 10 = 2.303), held-out
bits/dim (dequantised, 17 levels), and wall time.

    python benchmarks/bench_digits.py                 # trains (≈ 5–10 min on 2 loaded cores)
    python benchmarks/bench_digits.py --run outputs/bench_digits
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

from ebm_cli.data.images import digits
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


def ebm_row(run_dir: Path, seconds: float | None) -> dict[str, object]:
    m = json.loads((run_dir / "metrics.json").read_text())
    return {
        "model": "EBM, +experiment=digits",
        **{k: m.get(k) for k in ("fd_pca", "classifier_confidence", "classes_covered",
                                 "label_entropy", "bits_per_dim")},
        "seconds": seconds if seconds is not None else m.get("train_seconds"),
        "extra": f"train {m['train_seconds']:.0f} s; log Z (AIS) = {m['log_z_ais']:.1f} "
                 f"± {m['log_z_ais_se']:.2f}, weight ESS {m['ais_weight_ess']:.0f}; "
                 f"T = {m.get('sampler_temperature', 1.0):.2g}",
    }


def _fmt(v: object, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def print_table(rows: list[dict[str, object]]) -> None:
    print("| model | FD (PCA-20) ↓ | confidence | classes | label entropy | bits/dim ↓ | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {_fmt(r.get('fd_pca'), '.3f')} | "
              f"{_fmt(r.get('classifier_confidence'), '.2f')} | "
              f"{_fmt(r.get('classes_covered'), '.0f')} | {_fmt(r.get('label_entropy'), '.2f')} | "
              f"{_fmt(r.get('bits_per_dim'), '.2f')} | {_fmt(r.get('seconds'), '.0f')} |")
    for r in rows:
        if r.get("extra"):
            print(f"\n{r['model']}: {r['extra']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="an existing +experiment=digits run directory")
    parser.add_argument("overrides", nargs="*", help="extra ebm-train overrides when training")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seconds = None
    run_dir = args.run
    if run_dir is None:
        run_dir = ROOT / "outputs" / "bench_digits"
        script = Path(sys.executable).parent / "ebm-train"
        cmd = [str(script) if script.exists() else "ebm-train", "+experiment=digits",
               f"hydra.run.dir={run_dir}", *args.overrides]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=ROOT)
        seconds = time.perf_counter() - start
    rows = reference_rows()
    rows.append(ebm_row(run_dir, seconds))
    print_table(rows)


if __name__ == "__main__":
    main()
