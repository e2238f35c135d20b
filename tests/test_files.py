"""``data=file``: .npy / .npz / .csv loading, the split, standardisation, and bad files refused
in one line (directly and through the CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_faults import _main_in_process

from ebm_cli.data.files import from_file

ROWS, COLS = 50, 3


def _table(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal([1.0, -2.0, 10.0], [0.5, 2.0, 3.0], size=(ROWS, COLS))  # [50, 3]


def _write_csv(path: Path, x: np.ndarray, header: bool) -> Path:
    lines = (["a,b,c"] if header else []) + [",".join(f"{v:.17g}" for v in r) for r in x]
    path.write_text("\n".join(lines) + "\n")
    return path


def _rows(ds, which: str = "all") -> np.ndarray:
    parts = {"train": [ds.train], "test": [ds.test], "all": [ds.train, ds.test]}[which]
    return np.concatenate([ds.to_original(p.double()).numpy() for p in parts])


def _same_rows(a: np.ndarray, b: np.ndarray) -> bool:
    """The same multiset of rows (float32 storage: compare to 1e-4 relative)."""
    key = lambda m: m[np.lexsort(m.T[::-1])]  # noqa: E731
    return a.shape == b.shape and np.allclose(key(a), key(b), rtol=1e-4, atol=1e-4)


def test_npy_split_and_standardisation(tmp_path: Path) -> None:
    x = _table()
    np.save(tmp_path / "x.npy", x)
    ds = from_file(str(tmp_path / "x.npy"), test_fraction=0.2, seed=1)
    assert ds.train.shape == (40, COLS) and ds.test.shape == (10, COLS)
    assert ds.train.dtype == torch.float32 and ds.event_shape == (COLS,)
    # standardised on the training rows: mean 0, sd 1 there; the transform maps back exactly
    assert torch.allclose(ds.train.mean(0), torch.zeros(COLS), atol=1e-5)
    assert torch.allclose(ds.train.std(0), torch.ones(COLS), atol=1e-5)
    assert _same_rows(_rows(ds), x)
    assert ds.log_scale == pytest.approx(float(np.log(_rows(ds, "train").std(0, ddof=1)).sum()),
                                         rel=1e-5)
    again = from_file(str(tmp_path / "x.npy"), test_fraction=0.2, seed=1)
    assert torch.equal(ds.train, again.train)
    other = from_file(str(tmp_path / "x.npy"), test_fraction=0.2, seed=2)
    assert not torch.equal(ds.test, other.test)
    raw = from_file(str(tmp_path / "x.npy"), standardize=False)
    assert raw.transform is None and raw.log_scale == 0.0
    assert _same_rows(_rows(raw), x)
    assert len(raw.bounds) == COLS and all(lo < hi for lo, hi in raw.bounds)


def test_npz_first_array_or_key(tmp_path: Path) -> None:
    x, y = _table(0), _table(1)[:, :2]
    np.savez(tmp_path / "d.npz", points=x, other=y)
    assert from_file(str(tmp_path / "d.npz")).event_shape == (COLS,)  # the first array
    ds = from_file(str(tmp_path / "d.npz"), key="other", standardize=False)
    assert ds.event_shape == (2,) and _same_rows(_rows(ds), y)
    with pytest.raises(ValueError, match=r"data.key='nope' .* holds: points, other"):
        from_file(str(tmp_path / "d.npz"), key="nope")


@pytest.mark.parametrize("header", [True, False])
def test_csv_with_and_without_header(tmp_path: Path, header: bool) -> None:
    x = _table()
    path = _write_csv(tmp_path / "d.csv", x, header)
    ds = from_file(str(path), standardize=False)  # header detected
    assert _same_rows(_rows(ds), x)
    ds = from_file(str(path), standardize=False, header=header)  # header given
    assert _same_rows(_rows(ds), x)


@pytest.mark.parametrize(("shape", "event"), [((30, 2, 5, 4), (2, 5, 4)), ((30, 6, 7), (1, 6, 7))])
def test_images_keep_their_shape(tmp_path: Path, shape: tuple, event: tuple) -> None:
    x = np.random.default_rng(0).random(shape)
    np.save(tmp_path / "img.npy", x)
    ds = from_file(str(tmp_path / "img.npy"), standardize=True)
    assert ds.event_shape == event and ds.is_image
    assert ds.transform["mean"].shape == event  # per-feature (per pixel) statistics
    assert _same_rows(_rows(ds).reshape(len(x), -1), x.reshape(len(x), -1))


def _bad_files(tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, the words its one-line error must contain)."""
    cases: dict[str, tuple[Path, str]] = {}
    cases["missing"] = (tmp / "nowhere.npy", "no such file")
    (tmp / "garbage.npy").write_bytes(b"\x00\x01 this is not numpy" * 10)
    cases["unreadable"] = (tmp / "garbage.npy", "cannot read it as .npy")
    (tmp / "binary.csv").write_bytes(bytes(range(256)) * 4)
    cases["unreadable_csv"] = (tmp / "binary.csv", "cannot read it as .csv")
    _write_csv(tmp / "ragged.csv", _table(), header=False)
    with (tmp / "ragged.csv").open("a") as f:
        f.write("1.0,2.0\n")
    cases["ragged_csv"] = (tmp / "ragged.csv", "cannot read it as .csv")
    np.save(tmp / "flat.npy", np.arange(10.0))
    cases["wrong_shape"] = (tmp / "flat.npy", "expected N×D")
    np.save(tmp / "five.npy", np.zeros((3, 2, 2, 2, 2)))
    cases["too_many_axes"] = (tmp / "five.npy", "expected N×D")
    nan = _table()
    nan[7, 1] = np.nan
    nan[9, 0] = np.inf
    np.save(tmp / "nan.npy", nan)
    cases["nan"] = (tmp / "nan.npy", "2 row(s) contain NaN or inf (first: row 7")
    np.save(tmp / "few.npy", _table()[:2])
    cases["too_few_rows"] = (tmp / "few.npy", "only 2 row(s); need at least 3")
    (tmp / "empty.csv").write_text("")
    cases["empty"] = (tmp / "empty.csv", "is empty")
    np.save(tmp / "text.npy", np.array(["a", "b"]))
    cases["not_numbers"] = (tmp / "text.npy", "numbers (int or float) are needed")
    (tmp / "points.json").write_text("[]")
    cases["suffix"] = (tmp / "points.json", "unsupported file type '.json'")
    return cases


CASES = ["missing", "unreadable", "unreadable_csv", "ragged_csv", "wrong_shape",
         "too_many_axes", "nan", "too_few_rows", "empty", "not_numbers", "suffix"]


@pytest.mark.parametrize("case", CASES)
def test_bad_file_is_one_line_naming_it(tmp_path: Path, case: str) -> None:
    path, words = _bad_files(tmp_path)[case]
    with pytest.raises(ValueError) as info:
        from_file(str(path))
    message = str(info.value)
    assert "\n" not in message and str(path) in message and words in message, message


def test_bad_options_are_refused() -> None:
    with pytest.raises(ValueError, match="data.test_fraction must be in"):
        from_file("x.npy", test_fraction=1.0)


# Through ebm-train's entry point in-process; the same refusal as a real process (exit status,
# stderr, no traceback) is test_faults.py's "energy=rosenbrock data=file data.path=…" case.
@pytest.mark.parametrize("case", ["missing", "nan"])
def test_bad_file_through_the_cli_is_one_clean_line(tmp_path: Path, case: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path, words = _bad_files(tmp_path)[case]
    proc = _main_in_process([f"hydra.run.dir={tmp_path / 'run'}", "data=file",
                             f"data.path={path}"], tmp_path, monkeypatch)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2, out
    assert "Traceback" not in out
    assert len(out.splitlines()) == 1 and words in out and "data.path" in out, out


def test_cli_missing_path_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = _main_in_process([f"hydra.run.dir={tmp_path / 'run'}", "data=file"], tmp_path,
                            monkeypatch)
    out = (proc.stdout + proc.stderr).strip()
    assert proc.returncode != 0 and "Traceback" not in out and "data.path" in out, out


def test_cli_runs_on_a_3d_file_with_ais(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """D = 3 has no quadrature: the run reports the AIS estimate and the NLL in both units,
    and samples.npy in the file's units."""
    x = _table()
    path = _write_csv(tmp_path / "pts.csv", np.concatenate([x, x + 0.1, x - 0.1]), header=True)
    run_dir = tmp_path / "run"
    proc = _main_in_process([
        f"hydra.run.dir={run_dir}", "data=file", f"data.path={path}", "sampler=mala",
        "trainer.steps=20", "trainer.batch_size=64", "trainer.n_chains=64", "log_every=10",
        "image_every=10", "eval.n_samples=100", "eval.sampler_steps=20", "eval.warmup=20",
        "eval.mmd_points=100", "eval.ais_chains=32", "eval.ais_steps=100",
    ], tmp_path, monkeypatch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("log_z_ais", "log_z_ais_se", "test_nll_ais", "test_nll_ais_original_units"):
        assert key in metrics, key
    assert "bits_per_dim" not in metrics and "test_nll" not in metrics
    samples = np.load(run_dir / "samples.npy")
    assert samples.shape == (100, COLS)
    # original units: the third feature is centred near 10 (standardised it would be near 0)
    assert abs(np.median(samples[:, 2]) - 10.0) < 5.0
    assert (run_dir / "energy_hist.png").is_file()
