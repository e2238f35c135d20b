"""Image data (digits, MNIST IDX files), the conv energy, image metrics and figures, and a tiny
digits run through the CLI."""

from __future__ import annotations

import gzip
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_faults import _main_in_process

from ebm_cli.data.images import digits, mnist, read_idx
from ebm_cli.energies.conv import ConvEnergy
from ebm_cli.evaluation.images import frechet_distance, image_metrics, reference
from ebm_cli.reporting.image_plots import energy_histogram_figure, image_grid, samples_grid_figure

# ---------------------------------------------------------------- data


def test_digits_scaling_split_and_labels() -> None:
    ds = digits(test_fraction=0.2, seed=0)
    assert ds.train.shape == (1438, 1, 8, 8) and ds.test.shape == (359, 1, 8, 8)
    assert ds.is_image and ds.dim == 64 and ds.levels == 17
    assert float(ds.train.min()) >= 0 and float(ds.train.max()) < 1
    assert ds.train_labels.shape == (1438,) and set(ds.train_labels.tolist()) == set(range(10))
    # dequantised: floor(17 x) recovers the integer pixel 0..16
    v = torch.floor(17 * ds.train.double())
    assert v.min() == 0 and v.max() == 16
    plain = digits(dequantize=False)
    assert plain.levels is None and float(plain.train.max()) == 1.0
    assert torch.equal(torch.round(16 * plain.train.double()), v)  # same split, same pixels
    assert torch.equal(digits(seed=0).train, ds.train)
    assert not torch.equal(digits(seed=1).train, ds.train)
    std = digits(standardize=True)  # per pixel; maps back to the same [0, 1) images
    assert torch.allclose(std.train.mean(0), torch.zeros(1, 8, 8), atol=1e-5)
    assert torch.allclose(std.to_original(std.test), ds.test, atol=1e-5)
    assert std.log_scale < 0 and len(std.bounds) == 64  # pixels vary by < 1 in [0, 1) units


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", s) for s in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """20 training and 6 test images of 5×4 pixels; training files gzipped, test files not."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (20, 5, 4)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, 20),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (6, 5, 4)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, 6),
    }
    for name, a in arrays.items():
        gz = name.startswith("train")
        _write_idx(tmp_path / (name + (".gz" if gz else "")), a, compress=gz)
    return tmp_path, arrays


def test_mnist_reads_idx_files(tiny_mnist: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, arrays = tiny_mnist
    ds = mnist(str(path), seed=0)
    assert ds.train.shape == (20, 1, 5, 4) and ds.test.shape == (6, 1, 5, 4)
    assert ds.levels == 256 and ds.is_image
    assert np.array_equal(np.floor(256 * ds.train.double().numpy()[:, 0]),
                          arrays["train-images-idx3-ubyte"])
    assert np.array_equal(ds.train_labels.numpy(), arrays["train-labels-idx1-ubyte"])
    sub = mnist(str(path), n_train=8, n_test=3)
    assert sub.train.shape[0] == 8 and sub.test.shape[0] == 3 and sub.train_labels.shape == (8,)
    plain = mnist(str(path), dequantize=False)
    assert np.array_equal(np.round(255 * plain.test.double().numpy()[:, 0]),
                          arrays["t10k-images-idx3-ubyte"])


def test_mnist_bad_files_are_one_line(tiny_mnist: tuple[Path, dict[str, np.ndarray]]) -> None:
    path, _ = tiny_mnist
    raw = (path / "t10k-images-idx3-ubyte").read_bytes()
    (path / "t10k-images-idx3-ubyte").write_bytes(raw[:-7])  # truncated
    expected = r"should hold 120 values for shape \(6, 5, 4\), found 113"
    with pytest.raises(ValueError, match=expected):
        mnist(str(path))
    (path / "t10k-images-idx3-ubyte").write_bytes(b"PK\x03\x04 not idx at all")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(path / "t10k-images-idx3-ubyte")
    (path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte .* not found"):
        mnist(str(path))
    with pytest.raises(ValueError, match="not a directory"):
        mnist(str(path / "nowhere"))


# ---------------------------------------------------------------- energy


@pytest.mark.parametrize("event", [(1, 8, 8), (3, 7, 5), (1, 28, 28)])
def test_conv_energy_any_image_shape(event: tuple[int, int, int]) -> None:
    energy_fn = ConvEnergy(event, channels=(8, 16, 16), spectral_norm=True)
    x = torch.randn(5, *event, requires_grad=True)
    energy = energy_fn(x)
    assert energy.shape == (5,)
    (grad,) = torch.autograd.grad(energy.sum(), x)
    assert grad.shape == x.shape
    # chains are independent: no batch coupling (no batch norm)
    assert torch.allclose(energy_fn.eval()(x[:2]), energy_fn(x)[:2], atol=1e-6)
    assert torch.allclose(energy_fn(x.flatten(1)), energy_fn(x))  # flattened input is reshaped


def test_conv_energy_refuses_vectors() -> None:
    with pytest.raises(ValueError, match="energy=conv needs image data"):
        ConvEnergy((2,))
    with pytest.raises(ValueError, match="energy.channels"):
        ConvEnergy((1, 8, 8), channels=())


# ---------------------------------------------------------------- metrics


def test_frechet_distance_closed_forms() -> None:
    # 1-D: (μ₁ − μ₂)² + (σ₁ − σ₂)²
    d = frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-1.0]), np.array([[1.0]]))
    assert d == pytest.approx(4.0 + 1.0)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T + np.eye(5)
    assert frechet_distance(np.zeros(5), cov, np.zeros(5), cov) == pytest.approx(0, abs=1e-9)
    # commuting (diagonal) covariances: Σ (√λ₁ − √λ₂)²
    d = frechet_distance(np.zeros(3), np.diag([1.0, 4, 9]), np.ones(3), np.diag([4.0, 4, 1]))
    assert d == pytest.approx(3 + 1 + 0 + 4)


@pytest.fixture(scope="module")
def digit_sets() -> dict[str, torch.Tensor]:
    ds = digits()
    flat = ds.train.flatten(1).double()
    chol = torch.linalg.cholesky(torch.cov(flat.T) + 1e-9 * torch.eye(64, dtype=flat.dtype))
    g = torch.Generator().manual_seed(0)
    gauss = flat.mean(0) + torch.randn(1000, 64, generator=g, dtype=flat.dtype) @ chol.T
    return {"train": ds.train, "labels": ds.train_labels, "real": ds.test,
            "gaussian": gauss.view(-1, 1, 8, 8), "noise": torch.rand(1000, 1, 8, 8, generator=g)}


def test_fd_is_zero_for_the_reference_and_orders_real_gaussian_noise(digit_sets) -> None:
    s = digit_sets
    ref = reference(s["train"], s["labels"])
    assert reference(s["train"], s["labels"]) is ref  # cached per process
    same = image_metrics(s["train"], s["train"], s["labels"])
    assert same["fd_pca"] == pytest.approx(0.0, abs=1e-8)
    fd = {k: image_metrics(s[k], s["train"], s["labels"])["fd_pca"]
          for k in ("real", "gaussian", "noise")}
    # measured at seed 0: real ≈ 0.06, clamped Gaussian ≈ 0.12, uniform noise ≈ 2.3
    assert fd["real"] < fd["gaussian"] < fd["noise"], fd
    assert fd["real"] < 0.1 and fd["noise"] > 1.0, fd


def test_classifier_metrics_separate_real_digits(digit_sets) -> None:
    s = digit_sets
    real = image_metrics(s["real"], s["train"], s["labels"])
    noise = image_metrics(s["noise"], s["train"], s["labels"])
    assert real["classes_covered"] == 10
    assert real["label_entropy"] == pytest.approx(math.log(10), abs=0.05)  # balanced classes
    assert real["classifier_confidence"] > noise["classifier_confidence"] + 0.2
    one_class = image_metrics(s["train"][s["labels"] == 3], s["train"], s["labels"])
    assert one_class["classes_covered"] == 1 and one_class["label_entropy"] < 0.1


def test_image_figures() -> None:
    x = np.random.default_rng(0).random((10, 1, 8, 8))
    grid = image_grid(x, n_rows=2)
    assert grid.shape == (2 * 9 - 1, 5 * 9 - 1)
    assert image_grid(np.random.default_rng(0).random((4, 3, 5, 5))).shape == (11, 11, 3)
    samples_grid_figure(x, x, "t")
    energy_histogram_figure(np.random.randn(50), np.array([1.0, np.nan, 2.0]), "t")


# ---------------------------------------------------------------- end to end


def test_tiny_digits_run_writes_image_metrics(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "run"
    proc = _main_in_process([
        f"hydra.run.dir={run_dir}", "+experiment=digits", "energy.channels=[4,8]",
        "trainer.steps=6", "trainer.n_chains=16", "trainer.batch_size=16",
        "trainer.sampler_steps=3", "trainer.buffer_size=64", "log_every=3", "image_every=3",
        "checkpoint_every=0", "eval.n_samples=40", "eval.sampler_steps=5", "eval.warmup=0",
        "eval.mmd_points=40", "eval.ais_chains=16", "eval.ais_steps=50",
    ], tmp_path, monkeypatch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("log_z_ais", "log_z_ais_se", "test_nll_ais", "bits_per_dim", "fd_pca",
                "classifier_confidence", "classes_covered", "label_entropy", "mmd"):
        assert key in metrics, key
    assert "test_nll" not in metrics  # no quadrature in 64-D
    samples = np.load(run_dir / "samples.npy")
    assert samples.shape == (40, 1, 8, 8)
    for name in ("samples.png", "energy_hist.png", "checkpoint.pt"):
        assert (run_dir / name).is_file(), name
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    assert {"samples", "energy_histogram"} <= set(acc.Tags()["images"]), acc.Tags()["images"]
    assert len(acc.Images("samples")) >= 2  # at step 3 (image_every) and at the end
    assert "eval/fd_pca" in acc.Tags()["scalars"]


def test_conv_base_scale_adds_the_gaussian_base_and_is_checked() -> None:
    # E_s(x) − E(x) = ‖x‖²/(2s²) for the same network weights; s ≤ 0 is refused in one line.
    torch.manual_seed(0)
    plain = ConvEnergy((1, 8, 8), channels=(4, 8))
    based = ConvEnergy((1, 8, 8), channels=(4, 8), base_scale=2.0)
    based.load_state_dict(plain.state_dict())
    x = torch.randn(5, 1, 8, 8)
    expected = x.flatten(1).square().sum(1) / (2 * 2.0**2)
    assert torch.allclose(based(x) - plain(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"^energy\.base_scale must be > 0"):
        ConvEnergy((1, 8, 8), base_scale=0.0)
