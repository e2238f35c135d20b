"""A user's own data from a file: ``.npy``, ``.npz`` or ``.csv`` -> a ``Dataset``.

Arrays are N samples × D features ([N, D]), or images: N×C×H×W ([N, C, H, W]); an N×H×W array
is read as single-channel images [N, 1, H, W]. The rows are split at random (``seed``) into train
and test; with ``standardize`` every feature is mapped to x_model = (x − mean)/std, mean/std taken
over the training split (a feature with std 0 keeps std 1), and the Dataset carries them
(``transform``) so the run reports samples in the file's units. A file that cannot be used is
refused with one ValueError line naming the file and the problem.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ebm_cli.data.base import Dataset

SUFFIXES = (".npy", ".npz", ".csv")


def _fail(path: Path, problem: str) -> ValueError:
    return ValueError(f"data.path={path}: {problem}")


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return (text[0] if text else type(e).__name__).split("; use `usecols`")[0][:160]


def _read_npz(path: Path, key: str | None) -> np.ndarray:
    with np.load(path, allow_pickle=False) as archive:
        names = list(archive.files)
        if not names:
            raise _fail(path, "the .npz archive holds no arrays")
        if key is None:
            return archive[names[0]]  # the only / first array, in the archive's order
        if key not in names:
            raise ValueError(
                f"data.key={key!r} is not an array of data.path={path}; it holds: "
                f"{', '.join(names)}"
            )
        return archive[key]


def _csv_has_header(path: Path, delimiter: str) -> bool:
    """True when the first non-empty line has a field that is not a number."""
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                fields = [v.strip() for v in line.strip().split(delimiter)]
                try:
                    [float(v) for v in fields]
                except ValueError:
                    return True
                return False
    return False


def _read_csv(path: Path, header: bool | None, delimiter: str) -> np.ndarray:
    skip = _csv_has_header(path, delimiter) if header is None else bool(header)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # numpy warns on an empty file; we refuse it below
        return np.loadtxt(path, delimiter=delimiter, skiprows=int(skip), ndmin=2,
                          dtype=np.float64)


def read_array(
    path: str | Path, key: str | None = None, header: bool | None = None, delimiter: str = ","
) -> np.ndarray:
    """The array stored in ``path`` (float64), with its shape checked: [N, D], [N, H, W] or
    [N, C, H, W], all values finite. Raises a one-line ValueError naming the file otherwise."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise _fail(path, f"unsupported file type {path.suffix or '(none)'!r}; "
                          f"use one of {', '.join(SUFFIXES)}")
    if not path.exists():
        raise _fail(path, "no such file")
    if not path.is_file():
        raise _fail(path, "not a regular file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            array = _read_npz(path, key)
        else:
            array = _read_csv(path, header, delimiter)
    except ValueError as e:
        if str(e).startswith(("data.path=", "data.key=")):
            raise
        raise _fail(path, f"cannot read it as {suffix} ({_reason(e)})") from None
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise _fail(path, f"cannot read it as {suffix} ({_reason(e)})") from None
    if not isinstance(array, np.ndarray):
        raise _fail(path, f"holds a {type(array).__name__}, not an array")
    if array.dtype.kind not in "biuf":
        raise _fail(path, f"holds {array.dtype} values; numbers (int or float) are needed")
    if array.ndim not in (2, 3, 4):
        raise _fail(path, f"array of shape {array.shape}; expected N×D (2-D), N×H×W or "
                          "N×C×H×W images")
    if array.shape[0] == 0 or array[0].size == 0:
        raise _fail(path, f"array of shape {array.shape} is empty")
    array = array.astype(np.float64, copy=False)
    bad = ~np.isfinite(array.reshape(array.shape[0], -1)).all(1)  # [N] rows with NaN/inf
    if bad.any():
        raise _fail(path, f"{int(bad.sum())} row(s) contain NaN or inf (first: row "
                          f"{int(np.argmax(bad))}, counting from 0)")
    if array.ndim == 3:
        array = array[:, None]  # N×H×W -> N×1×H×W
    return array


def split_rows(n: int, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A random split of n rows -> (train indices, test indices), test = round(fraction·n) ≥ 1."""
    n_test = max(1, round(test_fraction * n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    return perm[n_test:], perm[:n_test]


def standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Per-feature (x − mean)/std with mean/std [*event] over the training rows (std 0 -> 1)."""
    mean = train.mean(0)  # [*event]
    std = train.std(0)  # [*event], unbiased
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std, {"mean": mean, "std": std}


def data_box(x: Tensor, margin: float = 0.25) -> tuple[tuple[float, float], ...]:
    """Per-coordinate (lo − m, hi + m), m = margin·(hi − lo) (1 for a constant coordinate)."""
    flat = x.flatten(1)
    lo, hi = flat.min(0).values, flat.max(0).values
    m = torch.where(hi > lo, margin * (hi - lo), torch.ones_like(hi))
    return tuple((float(a), float(b)) for a, b in zip(lo - m, hi + m))


def from_file(
    path: str,
    key: str | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    standardize: bool = True,
    header: bool | None = None,
    delimiter: str = ",",
) -> Dataset:
    """``data=file``: the rows of ``path`` split into train/test, optionally standardised.

    path: .npy, .npz (array ``key``, default the first) or .csv (N rows × D columns; a header
    line is detected when ``header`` is None). test_fraction ∈ (0, 1): share of rows held out
    (at least 1); seed: the split. Needs ≥ 2 training rows. Returns float32 tensors.
    """
    if isinstance(test_fraction, bool) or not 0 < test_fraction < 1:
        raise ValueError(f"data.test_fraction must be in (0, 1), got {test_fraction!r}")
    if len(delimiter) != 1:
        raise ValueError(f"data.delimiter must be one character, got {delimiter!r}")
    array = read_array(path, key, header, delimiter)
    n = array.shape[0]
    n_test = max(1, round(test_fraction * n))
    if n - n_test < 2:
        raise _fail(Path(path).expanduser(), f"only {n} row(s); need at least {n_test + 2} "
                    f"(2 to train, {n_test} held out with data.test_fraction={test_fraction})")
    x = torch.from_numpy(array).float()  # [N, *event]
    train_idx, test_idx = split_rows(n, test_fraction, seed)
    train, test = x[train_idx], x[test_idx]
    transform = None
    if standardize:
        train, test, transform = standardise(train, test)
    return Dataset(
        name=f"file:{Path(path).stem}",
        train=train,
        test=test,
        bounds=data_box(torch.cat([train, test])),
        transform=transform,
    )
