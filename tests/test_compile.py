"""``compile``: compiled sampler transitions (samplers/compiled.py) — validation, shared
weights, plain checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FAST, run_cli
from hydra import compose, initialize_config_module

import ebm_cli.app.cli  # noqa: F401  (registers the config's resolvers)
from ebm_cli import build as build_module
from ebm_cli.app.config_check import ConfigError, check_config
from ebm_cli.build import build, compile_energy
from ebm_cli.energies.mlp import MLPEnergy
from ebm_cli.samplers.compiled import CompiledTransitions


def _config(*overrides: str) -> dict:
    with initialize_config_module("ebm_cli.configs", version_base="1.3"):
        return check_config(compose("config", overrides=list(overrides)))


@pytest.mark.parametrize("value", ["reduce-overhead", "max-autotune", "yes", "1"])
def test_bad_compile_values_are_refused_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError,
                       match=r"^compile=.* it must be one of true, false, auto, default, "):
        _config(f"compile={value}")


@pytest.mark.parametrize("method", ["exact", "sliced", "denoising"])
def test_compile_with_score_matching_is_allowed(method: str) -> None:
    """Only the samplers' transitions compile; the loss's double backward stays eager."""
    assert _config("compile=true", "trainer=score_matching", f"trainer.method={method}")[
        "compile"] is True


@pytest.mark.parametrize("value", ["false", "true", "auto", "default",
                                   "max-autotune-no-cudagraphs"])
def test_allowed_compile_values_pass(value: str) -> None:
    assert _config(f"compile={value}")["compile"] in (False, True, value)


def test_build_gives_the_trainer_compiled_transitions_over_the_same_weights() -> None:
    parts = build(_config("compile=true", "data.n_train=512", "data.n_test=64"),
                  torch.device("cpu"), torch.float32)
    assert parts.trainer.energy_fn is parts.fast_energy_fn is not parts.energy_fn
    assert isinstance(parts.fast_energy_fn, CompiledTransitions)
    shared = {id(p) for p in parts.energy_fn.parameters()}
    assert {id(p) for p in parts.fast_energy_fn.parameters()} == shared  # one set of weights
    assert not any(k.startswith("_orig_mod.") for k in parts.energy_fn.state_dict())
    x = torch.randn(8, 2)
    assert torch.equal(parts.fast_energy_fn(x), parts.energy_fn(x))  # the loss stays eager
    plain = build(_config("data.n_train=512", "data.n_test=64"), torch.device("cpu"),
                  torch.float32)
    assert plain.fast_energy_fn is plain.energy_fn  # compile=false: nothing wrapped


def test_auto_compiles_transitions_only_where_a_compiler_is_found(
        monkeypatch: pytest.MonkeyPatch) -> None:
    energy_fn = MLPEnergy((2,), 8, 1, "silu")
    monkeypatch.setattr(build_module, "_compiler_problem", lambda device: None)
    assert isinstance(compile_energy(energy_fn, "auto", torch.device("cpu")),
                      CompiledTransitions)
    monkeypatch.setattr(build_module, "_compiler_problem", lambda device: "no C++ compiler")
    assert compile_energy(energy_fn, "auto", torch.device("cpu")) is energy_fn  # eager
    with pytest.raises(ConfigError, match=r"^compile=true: no C\+\+ compiler; use compile=false"):
        compile_energy(energy_fn, True, torch.device("cpu"))


@pytest.mark.slow
def test_compiled_run_trains_and_its_checkpoint_serves_uncompiled_runs(tmp_path: Path) -> None:
    """A compile=true run reports its compile time and ends with a plain checkpoint: resume=
    without compile and energy=checkpoint both load it."""
    run_dir = tmp_path / "compiled"
    proc = run_cli([f"hydra.run.dir={run_dir}", *FAST, "compile=true", "sampler=langevin"],
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 < metrics["seconds_compile"] < metrics["train_seconds"] + metrics["seconds_chains"]
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["step"] == 30
    assert not any(k.startswith("_orig_mod.") for k in state["energy"])
    assert all(torch.isfinite(v).all() for v in state["energy"].values())

    resumed = run_cli([f"resume={run_dir}", "compile=false", "trainer.steps=40"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 40

    sampled = tmp_path / "sampled"
    proc = run_cli([f"hydra.run.dir={sampled}", *FAST, "trainer=none", "sampler=mala",
                    "energy=checkpoint", f"energy.path={run_dir}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (sampled / "samples.npy").is_file()
