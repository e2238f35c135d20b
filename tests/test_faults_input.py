"""Faults in the input: every refusal is one ``error:`` line, exit status 2, before any work.

Each CLI case runs ``ebm-train`` as a user would, in-process through ``ebm_cli.app.cli.main``
(the stages these refusals come from, check_config and the data file, each have a real-process
case in tests/test_faults.py: ``seed=abc`` and ``data.path=/nonexistent.npy``), and asserts one
line naming the key or file, no traceback, and for files that the file is unchanged. Unit tests
pin the mechanisms: non-finite floats, nested ``_target_`` nodes typed by what they build (a
planted payload must never run), interpolations reported under the key the user set, sizes
against memory, and the diagonal fallback of the chains' Gaussian.
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import typing
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FAST
from omegaconf import OmegaConf
from test_faults import _clean_failure, _main_in_process

from ebm_cli import build, resources
from ebm_cli.app.config_check import (
    ConfigError,
    check_node,
    check_sizes,
    check_value,
    namer,
    source_key,
)
from ebm_cli.data import files
from ebm_cli.data.toy2d import draw_split
from ebm_cli.trainers import buffer
from ebm_cli.trainers.buffer import DataNoise
from ebm_cli.trainers.optim import LRSchedule

HUGE = 10**14  # no machine has 10¹⁴ × (tens of bytes) of memory


def _refused(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """``ebm-train ARGS`` in-process: exit status 2 and one clean ``error:`` line, returned."""
    proc = _main_in_process([f"hydra.run.dir={tmp_path / 'run'}", *args], tmp_path, monkeypatch)
    line = _clean_failure(proc)
    assert proc.returncode == 2, (proc.returncode, line)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # refused before any training
    return line


# ---------------------------------------------------------------- the CLI, one case per class

CASES = [
    # 1. seeds beyond torch's 64-bit range (also the seed + 1 stream, and a data seed)
    (["seed=18446744073709551615"], "seed=18446744073709551615", "2**64 - 2"),
    (["data.seed=1180591620717411303424"], "data.seed", "2**64 - 1"),
    # 2. threads beyond 4 × the cores
    (["threads=100000"], "threads=100000", "cores"),
    # 3. non-finite floats, also in nested _target_ nodes
    (["trainer.alpha=nan"], "trainer.alpha=nan", "finite"),
    (["trainer.lr_schedule.eta_min=nan"], "trainer.lr_schedule.eta_min", "finite"),
    (["trainer.optimizer.lr=inf"], "trainer.optimizer.lr", "finite"),
    (["experiment=fig3_rosenbrock_mh_vs_hmc", "trainer.samplers.HMC.step_size=nan"],
     "trainer.samplers.HMC.step_size", "finite"),
    # 4. the key the user typed, not the interpolation that uses it
    (["trainer.steps=abc"], "trainer.steps='abc'", "integer >= 1"),
    (["trainer.steps=[1,2]"], "trainer.steps=[1, 2]", "integer >= 1"),
    (["trainer.lr_schedule.T_max=${trainer.alpha}", "trainer.alpha=abc"],
     "trainer.alpha='abc' (used by trainer.lr_schedule.T_max)", "int"),
    # 5. a nested node typed by what it builds
    (["trainer.optimizer._target_=torch.optim.lr_scheduler.CosineAnnealingLR"],
     "trainer.optimizer._target_", "Optimizer"),
    (["trainer.steps={_target_:os.getpid}"], "trainer.steps=", "integer >= 1"),
    # 6. sizes beyond this machine's memory (known from the config, or in a data constructor)
    ([f"data.n_train={HUGE}"], "data.n_train", "allowed: at most"),
    (["data=moons", f"data.n_test={HUGE}"], "data.n_test", "allowed: at most"),
    (["eval.grid=1000000"], "eval.grid", "allowed: at most"),
    (["eval.mmd_points=10000000000"], "eval.mmd_points", "allowed: at most"),
]


@pytest.mark.parametrize(("args", "key", "words"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_bad_value_is_one_line_naming_the_key(args: list[str], key: str, words: str,
                                              tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    line = _refused(args, tmp_path, monkeypatch)
    assert key in line and words in line, line
    assert "T_max" not in line or "used by" in line  # never blamed on the interpolation


def test_seed_beyond_torch_as_a_user_sees_it(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    proc = _main_in_process([f"hydra.run.dir={tmp_path / 'run'}", "seed=1180591620717411303424"],
                            tmp_path, monkeypatch)
    line = _clean_failure(proc)
    assert proc.returncode == 2 and "seed=1180591620717411303424" in line, line


def _wires_check_sizes() -> bool:
    return "check_sizes" in inspect.getsource(build)


SIZE_CASES = [
    ([f"trainer.n_chains={HUGE}"], "trainer.n_chains"),
    (["trainer.init=replay_buffer", f"trainer.buffer_size={HUGE}"], "trainer.buffer_size"),
    ([f"eval.n_samples={HUGE}"], "eval.n_samples"),
    ([f"eval.ais_chains={HUGE}"], "eval.ais_chains"),
    (["trainer=none", "energy=rosenbrock", f"trainer.steps={HUGE}"], "trainer.steps"),
]


@pytest.mark.skipif(not _wires_check_sizes(),
                    reason="run.py does not call config_check.check_sizes after the data yet")
@pytest.mark.parametrize(("args", "key"), SIZE_CASES, ids=[c[1] for c in SIZE_CASES])
def test_size_known_with_the_data_is_refused_before_training(
        args: list[str], key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    line = _refused(args, tmp_path, monkeypatch)
    assert key in line and "memory" in line and "allowed: at most" in line, line


# 5. a planted payload: a _target_ where an int is expected must never be imported or called

def _payload(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path, Path]:
    """A module in tmp_path that touches ``imported`` on import and ``called`` when called."""
    name = f"payload_{uuid.uuid4().hex[:8]}"
    imported, called = tmp_path / "imported", tmp_path / "called"
    (tmp_path / f"{name}.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(imported)!r}).touch()\n"
        "def boom() -> int:\n"
        f"    Path({str(called)!r}).touch()\n"
        "    return 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, imported, called


def test_a_target_node_where_an_int_is_expected_never_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module, imported, called = _payload(tmp_path, monkeypatch)
    line = _refused([f"trainer.n_chains={{_target_:{module}.boom}}"], tmp_path, monkeypatch)
    assert "trainer.n_chains" in line and "must be of type int" in line, line
    assert not called.exists() and not imported.exists()


# 7. values that overflow float32; 9. paths that cannot be opened


def test_values_beyond_float32_as_a_user_sees_it(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "huge.npy"
    x = np.random.default_rng(0).normal(size=(40, 2))
    x[5, 1] = 1e200  # finite in float64, inf in float32
    np.save(path, x)
    before = path.read_bytes()
    proc = _main_in_process([f"hydra.run.dir={tmp_path / 'run'}", "data=file",
                             f"data.path={path}"], tmp_path, monkeypatch)
    line = _clean_failure(proc)
    assert proc.returncode == 2, line
    assert str(path) in line and "3.4028235e+38" in line and "row 5" in line, line
    assert path.read_bytes() == before


def _loop(tmp_path: Path, name: str) -> Path:
    a, b = tmp_path / f"{name}_a", tmp_path / name
    os.symlink(b, a)
    os.symlink(a, b)
    return b


@pytest.mark.parametrize("data", ["file", "mnist"])
@pytest.mark.parametrize("problem", ["name too long", "symlink loop"])
def test_unopenable_path_is_one_line_naming_it(data: str, problem: str, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    suffix = ".npy" if data == "file" else ""
    if problem == "name too long":
        path = tmp_path / ("x" * 300 + suffix)
        words = "too long"
    else:
        path = _loop(tmp_path, "loop" + suffix)
        words = "symlink loop"
    extra = ["energy=conv"] if data == "mnist" else []
    line = _refused([f"data={data}", f"data.path={path}", *extra], tmp_path, monkeypatch)
    assert "data.path=" in line and str(path)[:100] in line and words in line, line
    assert "no such file" not in line
    if problem == "symlink loop":
        assert os.readlink(path) == str(tmp_path / f"loop{suffix}_a")  # left as it was


def test_an_idx_file_in_a_symlink_loop_is_named(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    directory = tmp_path / "mnist"
    directory.mkdir()
    _loop(directory, "train-images-idx3-ubyte")
    line = _refused(["data=mnist", f"data.path={directory}", "energy=conv"], tmp_path,
                    monkeypatch)
    assert "train-images-idx3-ubyte" in line and "symlink loop" in line, line


# ---------------------------------------------------------------- mechanisms


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str) -> str:
    name = f"targets_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_float_parameters_refuse_nan_always_and_inf_unless_the_default_is_infinite(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = _module(tmp_path, monkeypatch,
                  "import math\n"
                  "def f(bound: float = math.inf, rate: float = 1.0, xs: list[float] = (1.0,),"
                  " opt: float | None = None, anything=None):\n    pass\n")
    check_node({"_target_": f"{mod}.f", "bound": math.inf, "rate": 2, "xs": [1.0, -3.5]}, "g")
    check_node({"_target_": f"{mod}.f", "bound": -math.inf, "opt": None}, "g")
    for key, value in [("bound", math.nan), ("rate", math.inf), ("rate", math.nan),
                       ("xs", [1.0, math.nan]), ("xs", [math.inf]), ("opt", math.nan),
                       ("opt", -math.inf), ("anything", math.nan)]:
        with pytest.raises(ConfigError, match=rf"^g\.{key}=.* finite") as info:
            check_node({"_target_": f"{mod}.f", key: value}, "g")
        assert "\n" not in str(info.value)


def test_tensor_arguments_refuse_non_finite_numbers() -> None:
    check_value([[0.0, 1.0], [2, 3]], torch.Tensor, "energy.means")
    for bad in (math.nan, [0.0, math.inf], [[0.0], [math.nan]]):
        with pytest.raises(ConfigError, match="energy.means"):
            check_value(bad, torch.Tensor, "energy.means")


def test_a_target_node_is_typed_by_what_it_builds(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    module, imported, called = _payload(tmp_path, monkeypatch)
    node = {"_target_": f"{module}.boom"}
    # never where a scalar or a list of scalars goes, whatever the function returns
    for hint in (int, float, bool, str, int | None, list[float], tuple[int, ...],
                 typing.Literal["a", "b"]):
        with pytest.raises(ConfigError, match=r"^trainer\.x=.* not a _target_ node"):
            check_value(node, hint, "trainer.x")
    with pytest.raises(ConfigError, match=r"g\.xs"):  # nor as a list's element
        check_value([1.0, node], list[float], "g.xs")
    assert not imported.exists()  # refused before importing
    # a class or Callable: the built type must fit
    with pytest.raises(ConfigError, match="does not fit"):  # builds an int, not a Module
        check_value(node, torch.nn.Module, "energy.net")
    with pytest.raises(ConfigError, match="does not fit"):  # a partial is not a Module
        check_value({**node, "_partial_": True}, torch.nn.Module, "energy.net")
    with pytest.raises(ConfigError, match="does not fit"):  # Adam is not an LR scheduler
        check_value({"_target_": "torch.optim.Adam", "_partial_": True}, LRSchedule | None,
                    "trainer.lr_schedule")
    with pytest.raises(ConfigError, match="does not fit"):  # a Linear is not an Optimizer
        check_value({"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 1},
                    torch.optim.Optimizer, "trainer.optimizer")
    check_value({"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-3},
                typing.Callable[..., torch.optim.Optimizer], "trainer.optimizer")
    check_value({"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "_partial_": True,
                 "T_max": 10}, LRSchedule | None, "trainer.lr_schedule")
    check_value({"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 1},
                torch.nn.Module, "energy.net")
    check_value(node, typing.Any, "trainer.samplers.x")  # unknown hints stay accepted
    check_value({"HMC": {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 1}},
                dict[str, typing.Any], "trainer.samplers")
    with pytest.raises(ConfigError, match=r"trainer\.samplers\.HMC\.in_features"):
        check_value({"HMC": {"_target_": "torch.nn.Linear", "in_features": "two",
                             "out_features": 1}}, dict[str, typing.Any], "trainer.samplers")
    assert not called.exists()  # checking imports, never calls


def test_an_interpolated_value_is_reported_under_the_key_that_was_set() -> None:
    raw = OmegaConf.to_container(OmegaConf.create({
        "trainer": {"steps": "abc", "lr_schedule": {"T_max": "${..steps}", "other": "${.T_max}"},
                    "abs": "${trainer.steps}"},
        "loop": "${loop}",
    }), resolve=False)
    assert source_key(raw, "trainer.lr_schedule.T_max") == "trainer.steps"
    assert source_key(raw, "trainer.lr_schedule.other") == "trainer.steps"  # followed through
    assert source_key(raw, "trainer.abs") == "trainer.steps"
    assert source_key(raw, "trainer.steps") == "trainer.steps"
    assert source_key(raw, "loop") == "loop"  # a cycle: the key itself
    name = namer(raw)
    assert name("trainer.lr_schedule.T_max", "abc") == (
        "trainer.steps='abc' (used by trainer.lr_schedule.T_max)")


def _cfg(**trainer: int) -> dict:
    return {"dtype": "float32", "trainer": {"batch_size": 256, "n_chains": 256, **trainer},
            "eval": {"n_samples": 1000, "ais_chains": 100}}


@pytest.mark.parametrize("key", ["trainer.batch_size", "trainer.n_chains", "trainer.buffer_size",
                                 "eval.n_samples", "eval.ais_chains", "trainer.steps"])
def test_check_sizes_names_the_key_that_cannot_fit(key: str) -> None:
    check_sizes(_cfg(buffer_size=10000, trace_chains=256, steps=1000), (1, 28, 28))  # fits
    cfg = _cfg(buffer_size=10000, trace_chains=256, steps=1000)
    group, name = key.split(".")
    cfg[group][name] = HUGE
    with pytest.raises(ConfigError) as info:
        check_sizes(cfg, (1, 28, 28))
    line = str(info.value)
    assert line.startswith(f"{key}={HUGE} needs at least") and "allowed: at most" in line, line
    largest = int(line.rsplit(" ", 1)[1])
    cfg[group][name] = largest
    check_sizes(cfg, (1, 28, 28))  # the value it offers is allowed


def test_resources_describe_this_machine() -> None:
    assert resources.physical_memory() > 2**28
    assert resources.max_threads() == resources.THREADS_PER_CORE * (os.cpu_count() or 1)
    assert resources.size_problem("k", 10, 8, "x") is None
    line = resources.size_problem("k", HUGE, 8, "x")
    assert line is not None and line.startswith(f"k={HUGE} ")


def test_toy_data_refuses_before_drawing() -> None:
    def sample(n: int, g: torch.Generator) -> torch.Tensor:
        raise AssertionError("drawn")

    with pytest.raises(ValueError, match=r"^data\.n_train=.* memory"):
        draw_split(sample, HUGE, 10, 0)


def test_float32_bound_and_float64_standardisation(tmp_path: Path) -> None:
    x = np.random.default_rng(1).normal(size=(50, 2)) * 1e30  # squares overflow float32
    np.save(tmp_path / "big.npy", x)
    ds = files.from_file(str(tmp_path / "big.npy"))
    assert torch.isfinite(ds.train).all() and ds.train.dtype == torch.float32
    assert torch.allclose(ds.train.mean(0), torch.zeros(2), atol=1e-5)
    assert torch.allclose(ds.train.std(0), torch.ones(2), atol=1e-5)
    assert all(math.isfinite(lo) and math.isfinite(hi) for lo, hi in ds.bounds)
    x[3, 0] = -1e39
    np.save(tmp_path / "over.npy", x)
    with pytest.raises(ValueError, match=r"1 row\(s\) hold values beyond ±3.4028235e\+38"):
        files.from_file(str(tmp_path / "over.npy"))
    assert files.read_array(tmp_path / "over.npy", max_abs=None)[3, 0] == -1e39  # told otherwise


def test_chain_noise_falls_back_to_a_diagonal_gaussian(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    assert not buffer.full_covariance_fits(buffer.MAX_FULL_COV_DIM + 1)
    assert not buffer.full_covariance_fits(1000, memory=8 * 1000**2 * 4)  # over 1/8 of memory
    assert buffer.full_covariance_fits(100)
    monkeypatch.setattr(buffer, "MAX_FULL_COV_DIM", 3)
    g = torch.Generator().manual_seed(0)
    scales = torch.tensor([0.5, 1.0, 2.0, 4.0])
    train = torch.randn(20000, 4, generator=g) * scales + torch.arange(4.0)  # [N, 4]
    with caplog.at_level(logging.WARNING, logger="ebm_cli.trainers.buffer"):
        noise = DataNoise(train, "gaussian", 1.5, "trainer.noise_init")
    assert noise.diagonal and "diagonal" in caplog.text and "trainer.noise_init" in caplog.text
    x = torch.randn(7, 4, generator=g, dtype=torch.float64) * 3
    var = train.double().var(0) * 1.5**2
    var = var + 1e-6 * var.mean()
    ref = torch.distributions.Normal(train.double().mean(0), var.sqrt()).log_prob(x).sum(1)
    assert torch.allclose(noise.log_prob(x), ref, rtol=1e-12, atol=1e-12)  # exact
    draws = noise.sample(40000, torch.Generator().manual_seed(1)).double()  # [n, 4]
    se = var.sqrt() / math.sqrt(40000)  # MC standard error of each mean
    assert ((draws.mean(0) - train.double().mean(0)).abs() < 5 * se).all()
    assert torch.allclose(draws.std(0), var.sqrt(), rtol=0.03)  # sd's MCSE ≈ 0.35 % here


@pytest.mark.slow
def test_a_run_with_the_diagonal_fallback_trains(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(buffer, "MAX_FULL_COV_DIM", 2)
    path = tmp_path / "three.npy"
    np.save(path, np.random.default_rng(0).normal(size=(300, 3)))
    args = [f"hydra.run.dir={tmp_path / 'run'}", "data=file", f"data.path={path}",
            *[a for a in FAST if not a.startswith(("data.", "eval.grid", "trainer.steps"))],
            "trainer.steps=5", "trainer.batch_size=64", "trainer.warmup_steps=0",
            "eval.ais_chains=8", "eval.ais_steps=5", "image_every=0"]
    proc = _main_in_process(args, tmp_path, monkeypatch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "run" / "metrics.json").is_file()
