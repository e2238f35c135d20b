"""Image datasets: scikit-learn's 8×8 digits (shipped, no download) and MNIST from IDX files.

Both are returned as [N, 1, H, W] float32 in [0, 1) with their training labels.

Scaling and dequantisation. A pixel is an integer v ∈ {0, …, L−1} (digits: L = 17, values 0..16;
MNIST: L = 256). With ``dequantize`` (the default) it becomes x = (v + u)/L with u ~ U[0, 1)
drawn once per pixel from the dataset's seed, so the data have a density on [0, 1)^D and a
model's continuous NLL bounds the discrete one: −log P(v) ≤ −log p(x) + D log L (Theis et al.
2016, "A note on the evaluation of generative models", §3.1); the Dataset records ``levels`` = L
and bits/dim = (NLL + D log L)/(D log 2). Without it, x = v/(L−1) ∈ [0, 1] (no density, no
bits/dim).

``standardize`` additionally maps every pixel to (x − mean)/std over the training images (the
Dataset's ``transform``; a pixel with std 0 keeps std 1): the model and its sampler then work in
units where every pixel varies by ~1, so one Langevin step size suits the near-constant border
pixels (sd 1/(17·√12) ≈ 0.017 on digits) and the strokes (sd ≈ 0.4) alike. Samples, plots, image
metrics and bits/dim are reported in [0, 1) units (``Dataset.to_original``, ``log_scale``).
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ebm_cli.data.base import Dataset, seeded_generator
from ebm_cli.data.files import path_problem, shown_path, split_rows, standardise

IDX_UBYTE = 0x08  # the IDX type code of unsigned bytes
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _scale(v: Tensor, levels: int, dequantize: bool, generator: torch.Generator) -> Tensor:
    """Integer pixels v [N, …] in 0..levels−1 -> float32 in [0, 1) (see the module docstring)."""
    v = v.double()
    if dequantize:
        u = torch.rand(v.shape, generator=generator, dtype=torch.float64)  # U[0, 1)
        return ((v + u) / levels).float()
    return (v / (levels - 1)).float()


def _image_dataset(name: str, train: Tensor, test: Tensor, labels: Tensor,
                   levels: int, dequantize: bool, standardize: bool) -> Dataset:
    d = math.prod(train.shape[1:])
    transform = None
    bounds = ((0.0, 1.0),) * d
    if standardize:
        train, test, transform = standardise(train, test)
        lo, hi = (-transform["mean"] / transform["std"]).flatten(), (
            (1 - transform["mean"]) / transform["std"]).flatten()
        bounds = tuple((float(a), float(b)) for a, b in zip(lo, hi))  # [0, 1] per pixel
    return Dataset(
        name=name, train=train, test=test, bounds=bounds, transform=transform,
        train_labels=labels, levels=levels if dequantize else None,
    )


def digits(test_fraction: float = 0.2, seed: int = 0, dequantize: bool = True,
           standardize: bool = False) -> Dataset:
    """``data=digits``: the 1797 8×8 digits of scikit-learn (UCI optdigits), [N, 1, 8, 8].

    Pixels are 0..16 (17 levels); see the module docstring for the scaling. A random
    ``test_fraction`` of the images (seed ``seed``) is held out.
    """
    from sklearn.datasets import load_digits

    if isinstance(test_fraction, bool) or not 0 < test_fraction < 1:
        raise ValueError(f"data.test_fraction must be in (0, 1), got {test_fraction!r}")
    bunch = load_digits()
    v = torch.from_numpy(bunch.images.astype(np.int64)).unsqueeze(1)  # [1797, 1, 8, 8]
    labels = torch.from_numpy(bunch.target.astype(np.int64))  # [1797]
    g = seeded_generator(seed)
    train_idx, test_idx = split_rows(v.shape[0], test_fraction, seed)
    x = _scale(v, 17, dequantize, g)
    return _image_dataset("digits", x[train_idx], x[test_idx], labels[train_idx], 17,
                          dequantize, standardize)


# ---------------------------------------------------------------- IDX (MNIST) files


def _find(directory: Path, stem: str) -> Path:
    """The IDX file ``stem`` (or .gz / '.idx' spellings) in ``directory``; a candidate that is
    there but unusable (a symlink loop, unreadable) is reported as such."""
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx"),
                 stem.replace("-idx", ".idx") + ".gz"):
        problem = path_problem(directory / name)
        if problem is None:
            return directory / name
        if problem != "no such file":
            raise ValueError(f"data.path={shown_path(directory)}: {name}: {problem}")
    raise ValueError(f"data.path={shown_path(directory)}: {stem} (or {stem}.gz) not found there")


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file of unsigned bytes (gzip-compressed or not) -> uint8 array of its shape.

    Format (LeCun et al., the MNIST page): two zero bytes, a type byte (0x08 = ubyte), the
    number of dimensions n, n big-endian uint32 sizes, then the values in C order.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as e:
        raise ValueError(f"data.path: cannot read {path} ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"data.path: {path} is not an IDX file (bad magic number)")
    if raw[2] != IDX_UBYTE:
        raise ValueError(f"data.path: {path} holds IDX type 0x{raw[2]:02x}; only unsigned "
                         "bytes (0x08) are supported")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(raw) < header:
        raise ValueError(f"data.path: {path} has a truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = math.prod(shape)
    if len(raw) - header != size:
        raise ValueError(f"data.path: {path} should hold {size} values for shape {shape}, "
                         f"found {len(raw) - header}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _load_split(directory: Path, split: str) -> tuple[Tensor, Tensor]:
    images_path = _find(directory, MNIST_FILES[f"{split}_images"])
    labels_path = _find(directory, MNIST_FILES[f"{split}_labels"])
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(f"data.path: {images_path} must be N×H×W and {labels_path} N, got "
                         f"{images.shape} and {labels.shape}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"data.path: {images_path} holds {images.shape[0]} images but "
                         f"{labels_path} {labels.shape[0]} labels")
    return torch.from_numpy(images.astype(np.int64)).unsqueeze(1), torch.from_numpy(
        labels.astype(np.int64))


def _subset(n: int | None, total: int, key: str, g: torch.Generator) -> Tensor:
    if n is None or n >= total:
        return torch.arange(total)
    if n < 1:
        raise ValueError(f"data.{key} must be >= 1 or null (all), got {n}")
    return torch.randperm(total, generator=g)[:n].sort().values


def mnist(
    path: str,
    n_train: int | None = None,
    n_test: int | None = None,
    dequantize: bool = True,
    standardize: bool = False,
    seed: int = 0,
) -> Dataset:
    """``data=mnist``: MNIST (or Fashion-MNIST: same files) from the four IDX files in the
    directory ``path`` (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
    t10k-labels-idx1-ubyte, each optionally .gz). Nothing is downloaded. The standard train/test
    split; ``n_train``/``n_test`` keep a random subset (seed ``seed``). 256 levels; see the
    module docstring for the scaling. Returns [N, 1, 28, 28].
    """
    directory = Path(path).expanduser()
    problem = path_problem(directory, directory=True)
    if problem:
        detail = "" if problem == "not a directory" else f" ({problem})"
        raise ValueError(f"data.path={shown_path(directory)}: not a directory{detail}; it must "
                         "hold the MNIST IDX files")
    train_v, train_y = _load_split(directory, "train")
    test_v, _ = _load_split(directory, "test")
    if train_v.shape[1:] != test_v.shape[1:]:
        raise ValueError(f"data.path={directory}: train images are {tuple(train_v.shape[2:])} "
                         f"but test images {tuple(test_v.shape[2:])}")
    g = seeded_generator(seed)
    keep_train = _subset(n_train, train_v.shape[0], "n_train", g)
    keep_test = _subset(n_test, test_v.shape[0], "n_test", g)
    if keep_train.numel() < 2:
        raise ValueError(f"data.path={directory}: need at least 2 training images, "
                         f"found {keep_train.numel()}")
    train = _scale(train_v[keep_train], 256, dequantize, g)
    test = _scale(test_v[keep_test], 256, dequantize, g)
    return _image_dataset("mnist", train, test, train_y[keep_train], 256, dequantize,
                          standardize)
