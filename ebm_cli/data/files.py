"""A user's own data from a file: ``.npy``, ``.npz`` or ``.csv`` -> a ``Dataset``.

Arrays are N samples × D features ([N, D]), or images: N×C×H×W ([N, C, H, W]); an N×H×W array
is read as single-channel images [N, 1, H, W]. The rows are split at random (``seed``) into train
and test; with ``standardize`` every feature is mapped to x_model = (x − mean)/std, mean/std taken
over the training split (a feature with std 0 keeps std 1), and the Dataset carries them
(``transform``) so the run reports samples in the file's units. A file that cannot be used is
refused with one ValueError line naming the file and the problem.

Values are checked in float64 (finite) and must fit the float32 tensors they become: at most
FLOAT32_MAX in magnitude (``max_abs``). Standardisation runs in float64 before the conversion.
"""

from __future__ import annotations

import errno
import os
import stat
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ebm_cli.data.base import Dataset, seeded_generator
from ebm_cli.resources import gib, physical_memory

SUFFIXES = (".npy", ".npz", ".csv")
FLOAT32_MAX = float(np.finfo(np.float32).max)  # ≈ 3.4028235e38
# float64 copies of the array alive while a file becomes a Dataset: the array, the train/test
# split, their standardised versions.
LOAD_COPIES = 3
SHOWN_PATH = 200  # longer paths are shortened in messages (a name too long is still named)


def shown_path(path: Path | str) -> str:
    """The path for a message: itself, or its start and end around '…' when very long."""
    text = str(path)
    if len(text) <= SHOWN_PATH:
        return text
    return f"{text[:120]}…{text[-60:]} ({len(text)} characters)"


def _fail(path: Path, problem: str) -> ValueError:
    return ValueError(f"data.path={shown_path(path)}: {problem}")


def _too_long(path: Path) -> str:
    """Which limit a name too long for the file system breaks (ENAMETOOLONG)."""
    try:
        name_max, path_max = os.pathconf("/", "PC_NAME_MAX"), os.pathconf("/", "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    longest = max((len(part.encode()) for part in path.parts), default=0)
    if longest > name_max:
        return (f"the name is too long: a component of the path has {longest} bytes, the file "
                f"system allows at most {name_max}")
    return (f"the name is too long: the path has {len(str(path).encode())} bytes, the file "
            f"system allows at most {path_max}")


def path_problem(path: Path, directory: bool = False) -> str | None:
    """Why ``path`` cannot be used as a regular file (or, with ``directory``, a directory):
    a few words for the message, or None when it can."""
    try:
        mode = os.stat(path).st_mode  # follows symlinks: ELOOP for a symlink loop
    except OSError as e:
        if e.errno == errno.ENAMETOOLONG:
            return _too_long(path)
        if e.errno == errno.ELOOP:
            return "a symlink loop: too many levels of symbolic links"
        if e.errno == errno.ENOENT:
            return "no such directory" if directory else "no such file"
        if e.errno == errno.ENOTDIR:
            return "a component of the path is not a directory"
        if e.errno == errno.EACCES:
            return "permission denied"
        return (e.strerror or type(e).__name__).lower()
    if directory:
        return None if stat.S_ISDIR(mode) else "not a directory"
    return None if stat.S_ISREG(mode) else "not a regular file"


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


def _load_npy(path: Path) -> np.ndarray:
    """np.load after its header: an array whose float64 copies cannot fit is refused first."""
    header = np.load(path, mmap_mode="r", allow_pickle=False)  # reads the header only
    need = LOAD_COPIES * 8 * header.size
    if need > physical_memory():
        raise _fail(path, f"an array of shape {header.shape} needs at least {gib(need)} as "
                          f"float64 ({LOAD_COPIES} copies), more than the "
                          f"{gib(physical_memory())} of memory here")
    del header
    return np.load(path, allow_pickle=False)


def read_array(
    path: str | Path, key: str | None = None, header: bool | None = None, delimiter: str = ",",
    max_abs: float | None = FLOAT32_MAX,
) -> np.ndarray:
    """The array stored in ``path`` (float64), with its shape checked: [N, D], [N, H, W] or
    [N, C, H, W], all values finite and at most ``max_abs`` in magnitude (default: the largest
    float32, None: no bound). Raises a one-line ValueError naming the file otherwise."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in SUFFIXES:
        raise _fail(path, f"unsupported file type {path.suffix or '(none)'!r}; "
                          f"use one of {', '.join(SUFFIXES)}")
    problem = path_problem(path)
    if problem:
        raise _fail(path, problem)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = _load_npy(path)
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
    except MemoryError:
        raise _fail(path, f"too large to load into the {gib(physical_memory())} of memory "
                          "here") from None
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
    flat = array.reshape(array.shape[0], -1)  # [N, D]
    bad = ~np.isfinite(flat).all(1)  # [N] rows with NaN/inf
    if bad.any():
        raise _fail(path, f"{int(bad.sum())} row(s) contain NaN or inf (first: row "
                          f"{int(np.argmax(bad))}, counting from 0)")
    if max_abs is not None:
        big = (np.abs(flat) > max_abs).any(1)  # [N] rows that would overflow float32
        if big.any():
            raise _fail(path, f"{int(big.sum())} row(s) hold values beyond ±{max_abs:.8g}, the "
                              f"largest magnitude allowed (float32; first: row "
                              f"{int(np.argmax(big))}, counting from 0): rescale the data")
    if array.ndim == 3:
        array = array[:, None]  # N×H×W -> N×1×H×W
    return array


def split_rows(n: int, test_fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """A random split of n rows -> (train indices, test indices), test = round(fraction·n) ≥ 1."""
    n_test = max(1, round(test_fraction * n))
    perm = torch.randperm(n, generator=seeded_generator(seed))
    return perm[n_test:], perm[:n_test]


def standardise(train: Tensor, test: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Per-feature (x − mean)/std with mean/std [*event] over the training rows (std 0 -> 1)."""
    mean = train.mean(0)  # [*event]
    std = train.std(0)  # [*event], unbiased
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std, {"mean": mean, "std": std}


def data_box(x: Tensor, margin: float = 0.25) -> tuple[tuple[float, float], ...]:
    """Per-coordinate (lo − m, hi + m), m = margin·(hi − lo) (1 for a constant coordinate)."""
    flat = x.flatten(1).double()  # float64: hi − lo of float32 data may overflow float32
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
    x = torch.from_numpy(array)  # [N, *event] float64
    train_idx, test_idx = split_rows(n, test_fraction, seed)
    train, test = x[train_idx], x[test_idx]
    transform = None
    if standardize:  # in float64: the squares of float32-sized values overflow float32
        train, test, transform = standardise(train, test)
        largest_std = float(transform["std"].max())
        if largest_std > FLOAT32_MAX:  # std ≤ √2·max|x| can pass the float32 range
            raise _fail(Path(path).expanduser(), f"a feature's standard deviation "
                        f"({largest_std:.3g}) is beyond {FLOAT32_MAX:.8g}, the largest float32: "
                        "rescale the data")
        transform = {k: v.float() for k, v in transform.items()}
    train, test = train.float(), test.float()
    return Dataset(
        name=f"file:{Path(path).stem}",
        train=train,
        test=test,
        bounds=data_box(torch.cat([train, test])),
        transform=transform,
    )
