"""``compile``: torch.compile of the energy — validation, shared weights, plain checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import FAST, run_cli
from hydra import compose, initialize_config_module

import ebm_cli.app.cli  # noqa: F401  (registers the config's resolvers)
from ebm_cli.app.config_check import ConfigError, check_config
from ebm_cli.build import build, compile_energy
from ebm_cli.energies.mlp import MLPEnergy


def _config(*overrides: str) -> dict:
    with initialize_config_module("ebm_cli.configs", version_base="1.3"):
        return check_config(compose("config", overrides=list(overrides)))


@pytest.mark.parametrize("value", ["reduce-overhead", "max-autotune", "yes", "1"])
def test_bad_compile_values_are_refused_naming_the_key(value: str) -> None:
    with pytest.raises(ConfigError, match=r"^compile=.* it must be one of true, false, default, "):
        _config(f"compile={value}")


@pytest.mark.parametrize("method", ["exact", "sliced", "denoising"])
def test_compile_with_score_matching_is_refused(method: str) -> None:
    """AOTAutograd has no double backward (measured: 'torch.compile with aot_autograd does not
    currently support double backward' at the first loss.backward() of every method)."""
    with pytest.raises(ConfigError, match=r"^compile=true cannot be used with .*ScoreMatching.*"
                                          r"use compile=false$"):
        _config("compile=true", "trainer=score_matching", f"trainer.method={method}")


@pytest.mark.parametrize("value", ["false", "true", "default", "max-autotune-no-cudagraphs"])
def test_allowed_compile_values_pass(value: str) -> None:
    assert _config(f"compile={value}")["compile"] in (False, True, value)


def test_build_gives_the_trainer_a_compiled_view_of_the_same_weights() -> None:
    parts = build(_config("compile=true", "data.n_train=512", "data.n_test=64"),
                  torch.device("cpu"), torch.float32)
    assert parts.trainer.energy_fn is parts.fast_energy_fn is not parts.energy_fn
    assert isinstance(parts.fast_energy_fn, torch._dynamo.eval_frame.OptimizedModule)
    shared = {id(p) for p in parts.energy_fn.parameters()}
    assert {id(p) for p in parts.fast_energy_fn.parameters()} == shared  # one set of weights
    assert not any(k.startswith("_orig_mod.") for k in parts.energy_fn.state_dict())
    plain = build(_config("data.n_train=512", "data.n_test=64"), torch.device("cpu"),
                  torch.float32)
    assert plain.fast_energy_fn is plain.energy_fn  # compile=false: nothing wrapped


def test_compiled_energy_matches_eager_energy_and_gradient() -> None:
    torch.manual_seed(0)
    energy_fn = MLPEnergy((2,), 32, 2, "silu")
    compiled = compile_energy(energy_fn, True, torch.device("cpu"))
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), requires_grad=True)
    e_eager = energy_fn(x)
    (g_eager,) = torch.autograd.grad(e_eager.sum(), x)
    e_comp = compiled(x)
    (g_comp,) = torch.autograd.grad(e_comp.sum(), x)
    # float32 kernels fused differently: agreement to a few ulps of values of order 1
    torch.testing.assert_close(e_comp, e_eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_comp, g_eager, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_run_trains_and_its_checkpoint_serves_uncompiled_runs(tmp_path: Path) -> None:
    """A compile=true run ends with a plain checkpoint: resume= without compile and
    energy=checkpoint both load it."""
    run_dir = tmp_path / "compiled"
    proc = run_cli([f"hydra.run.dir={run_dir}", *FAST, "compile=true", "sampler=langevin"],
                   cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
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
