"""``ema``: the exponential moving average θ̄ of the energy's weights (ebm_cli/run.py).

θ̄ follows its closed form; the run loop updates it after every update; the held-out curve, the
final evaluation and ``energy=checkpoint`` read θ̄; a stopped and resumed run ends bitwise equal
to one that never stopped; a bad value, a sampling run with ``ema`` or a resume that switches it
is refused in one line.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import FAST
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ebm_cli import assess, checkpoint
from ebm_cli.app import resume, rundir
from ebm_cli.app.config_check import ConfigError, check_config
from ebm_cli.build import build
from ebm_cli.energies.mlp import MLPEnergy
from ebm_cli.evaluation.quadrature import CURVE_GRID, held_out_nll, log_partition_2d, nll
from ebm_cli.reporting.report import Reporter
from ebm_cli.run import Loop, _setup, averaged, train

# Cheap training runs: FAST, Langevin negatives, a small MLP, no images during training.
CHEAP = [*FAST, "sampler=langevin", "energy.width=16", "energy.depth=2", "trainer.batch_size=64",
         "trainer.n_chains=64", "image_every=0", "eval_every=10", "trainer.steps=20",
         "eval.n_samples=64", "eval.mmd_points=64", "eval.grid=16"]


def _hydra(overrides: list[str]) -> DictConfig:
    """The config as Hydra composes it (before check_config)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("ebm_cli.configs", version_base="1.3"):
            return compose("config", overrides=overrides)
    finally:
        GlobalHydra.instance().clear()


def _compose(*overrides: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The validated plain config and the unresolved one (what a checkpoint stores)."""
    cfg = _hydra([*CHEAP, *overrides])
    stored = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(stored, dict)
    return check_config(cfg), stored


@pytest.fixture(scope="module")
def base() -> tuple[dict[str, Any], dict[str, Any]]:
    """The CHEAP config, composed once (plain, stored)."""
    return _compose()


def _with(base: tuple[dict[str, Any], dict[str, Any]], ema: float | None
          ) -> tuple[dict[str, Any], dict[str, Any]]:
    """``base`` with ``ema`` set in both forms, as ``ema=…`` on the command line would."""
    cfg, stored = copy.deepcopy(base)
    cfg["ema"] = stored["ema"] = ema
    return cfg, stored


def _loop(cfg: dict[str, Any], stored: dict[str, Any], run_dir: Path, steps: int,
          state: dict[str, Any] | None = None) -> Loop:
    """A run's loop, as train() builds it, run up to ``steps`` (from ``state`` if given)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    device, dtype = _setup(cfg)
    parts = build(cfg, device, dtype)
    parts.steps = steps
    reporter = Reporter(run_dir, "", steps, live=False)
    loop = Loop(cfg, parts, run_dir, reporter, stored, device, dtype)
    if state is not None:
        loop.restore(state)
    loop.run()
    reporter.close()
    return loop


# ---- the average --------------------------------------------------------------------------------
def test_the_average_follows_its_closed_form_and_keeps_the_models_buffers() -> None:
    # θ̄₁ = θ₁, θ̄ₖ = d·θ̄ₖ₋₁ + (1 − d)·θₖ, computed from the recorded θₖ (float64: the library's
    # lerp and this formula differ by rounding only, ~1e-16 relative).
    torch.manual_seed(0)
    model = MLPEnergy(width=8, depth=2, spectral_norm=True).double()
    decay = 0.7
    ema = averaged(model, decay)
    assert ema is not None and averaged(model, None) is None
    x = torch.randn(32, 2, dtype=torch.float64)
    expected: list[torch.Tensor] | None = None
    for _ in range(4):  # gradient steps (by hand: an optimizer's first import costs seconds)
        model.zero_grad()
        model(x).pow(2).mean().backward()  # training mode: spectral norm's power iteration runs
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
        theta = [p.detach().clone() for p in model.parameters()]
        expected = theta if expected is None else [
            decay * e + (1 - decay) * t for e, t in zip(expected, theta)]
        ema.update_parameters(model)
    assert expected is not None
    for got, want, now in zip(ema.module.parameters(), expected, model.parameters()):
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12)
        assert not torch.equal(got, now)  # an average, not the last weights
    assert int(ema.n_averaged) == 4
    # Buffers (the power-iteration vectors u, v) are the live model's, unit vectors as they are.
    buffers = dict(model.named_buffers())
    assert buffers and all(torch.equal(b, buffers[k]) for k, b in ema.module.named_buffers())


def test_a_decay_too_slow_for_the_run_is_warned_about(base, tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    # 20 updates: d = 0.9 leaves their first half d^10 = 35 % of θ̄, d = 0.5 leaves 0.1 %
    for decay, warned in ((0.9, True), (0.5, False)):
        caplog.clear()
        cfg, stored = _with(base, decay)
        device, dtype = _setup(cfg)
        reporter = Reporter(tmp_path, "", 20, live=False)
        Loop(cfg, build(cfg, device, dtype), tmp_path, reporter, stored, device, dtype)
        reporter.close()
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert bool(warnings) == warned, warnings
        assert not warned or "d^10 = 35 %" in warnings[0] and "0.5" in warnings[0]


# ---- the run -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ema_run(tmp_path_factory: pytest.TempPathFactory, base) -> tuple[dict[str, Any], Path]:
    """One finished training run with ema=0.9 through train(): (metrics + the config and the
    weights the final figures were drawn with, run directory). The figures are recorded, not
    drawn (matplotlib would be most of the test's time)."""
    cfg, stored = _with(base, 0.9)
    run_dir = tmp_path_factory.mktemp("ema") / "run"
    run_dir.mkdir()
    drawn: dict[str, torch.Tensor] = {}

    def record(_reporter: Reporter, parts: Any, _samples: Any, _step: int, final: bool) -> None:
        assert final
        drawn.update({k: v.clone() for k, v in parts.energy_fn.state_dict().items()})

    reporter = Reporter(run_dir, "", cfg["trainer"]["steps"], live=False)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(assess, "plot", record)
        metrics = train(cfg, run_dir, reporter, stored_config=stored)
    reporter.close()
    return {**metrics, "cfg": cfg, "drawn": drawn}, run_dir


def test_evaluation_and_energy_checkpoint_read_the_average(ema_run) -> None:
    metrics, run_dir = ema_run
    cfg = metrics["cfg"]
    assert metrics["ema_decay"] == 0.9
    assert json.loads((run_dir / "metrics.json").read_text())["ema_decay"] == 0.9
    state = checkpoint.load(run_dir / "checkpoint.pt")
    assert int(state["ema"]["n_averaged"]) == 20  # one update of θ̄ per trainer update
    # energy=checkpoint loads θ̄ (the evaluated weights), not θ
    averaged_fn = checkpoint.trained_energy(str(run_dir))
    raw_fn = checkpoint.trained_energy(str(run_dir))
    raw_fn.load_state_dict(state["energy"])
    for (k, a), r in zip(averaged_fn.state_dict().items(), raw_fn.state_dict().values()):
        assert torch.equal(a, state["ema"][f"module.{k}"])
        assert not torch.equal(a, r), k
        assert torch.equal(metrics["drawn"][k], a), k  # the final figures: θ̄ too
    # test_nll = mean E(test) + log Z on the 2·grid quadrature: deterministic, so it is exactly
    # θ̄'s, and θ's differs from it
    _setup(cfg)
    ds = build(cfg, torch.device("cpu"), torch.float32).dataset
    grid = 2 * cfg["eval"]["grid"]

    def test_nll(fn: torch.nn.Module) -> float:
        with torch.no_grad():
            return float(nll(fn, ds.test, log_partition_2d(fn, ds.bounds, grid)))

    assert metrics["test_nll"] == test_nll(averaged_fn)
    assert abs(metrics["test_nll"] - test_nll(raw_fn)) > 1e-6


def test_the_held_out_curve_reads_the_average(ema_run) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics, run_dir = ema_run
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    last = acc.Scalars("quality/test_nll")[-1]
    assert last.step == 20
    ds = build(metrics["cfg"], torch.device("cpu"), torch.float32).dataset
    value = held_out_nll(checkpoint.trained_energy(str(run_dir)), ds.test, ds.bounds, CURVE_GRID)
    assert math.isclose(last.value, value, rel_tol=1e-6)  # TensorBoard stores float32


# ---- resume ------------------------------------------------------------------------------------
def test_a_resumed_run_ends_bitwise_equal_to_one_that_never_stopped(tmp_path: Path,
                                                                    base) -> None:
    cfg, stored = _with(base, 0.8)
    straight = _loop(cfg, stored, tmp_path / "straight", 16)
    _loop(cfg, stored, tmp_path / "stopped", 7)
    state = checkpoint.load(tmp_path / "stopped" / "checkpoint.pt")
    resumed = _loop(cfg, stored, tmp_path / "stopped", 16, state)
    a, b = straight.ema, resumed.ema
    assert a is not None and b is not None and int(b.n_averaged) == 16
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), k
    for x, y in zip(straight.parts.energy_fn.parameters(), resumed.parts.energy_fn.parameters()):
        assert torch.equal(x, y)
    assert straight.held_out_nll(10) == resumed.held_out_nll(10)  # the curve reads θ̄: equal


def _fake_run_dir(tmp_path: Path, state: dict[str, Any], overrides: list[str]) -> Path:
    """A run directory resume.prepare accepts: its overrides and a checkpoint."""
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(
        "".join(f"- {o}\n" for o in overrides))
    checkpoint.save(run_dir / "checkpoint.pt", state)
    return run_dir


def test_a_resume_cannot_switch_the_average(tmp_path: Path, base) -> None:
    _, stored = _with(base, 0.99)
    run_dir = _fake_run_dir(tmp_path, {"energy": {}, "step": 5, "config": stored},
                            [*CHEAP, "ema=0.99"])
    try:
        with pytest.raises(ConfigError, match=r"^resume=.*: ema differ from the run's own"):
            resume.prepare([f"resume={run_dir}", "ema=null"])  # on, resumed with it off
        assert resume.prepare([f"resume={run_dir}"])[-1].startswith("resume=")
    finally:
        rundir.unlock_all()


def test_a_checkpoint_from_before_the_key_resumes_without_it(tmp_path: Path, base) -> None:
    stored = copy.deepcopy(base[1])
    del stored["ema"]  # a config stored before `ema` existed: that run had no average
    run_dir = _fake_run_dir(tmp_path, {"energy": {}, "step": 5, "config": stored}, CHEAP)
    try:
        assert resume.prepare([f"resume={run_dir}"])[-1].startswith("resume=")
        with pytest.raises(ConfigError, match=r"^resume=.*: ema differ from the run's own"):
            resume.prepare([f"resume={run_dir}", "ema=0.999"])  # off, resumed with it on
    finally:
        rundir.unlock_all()


def test_the_loop_refuses_a_checkpoint_with_or_without_an_average_it_lacks(
        ema_run, tmp_path: Path, base) -> None:
    # train() called directly (no resume check first): the loop itself refuses the mismatch
    _, run_dir = ema_run
    state = checkpoint.load(run_dir / "checkpoint.pt")
    with pytest.raises(checkpoint.CheckpointError, match="with an EMA.*ema=None"):
        _loop(*_with(base, None), tmp_path / "off", 20, state)
    del state["ema"]
    with pytest.raises(checkpoint.CheckpointError, match="without an EMA.*ema=0.9"):
        _loop(*_with(base, 0.9), tmp_path / "on", 20, state)


def test_energy_checkpoint_refuses_an_average_that_is_not_one(ema_run, tmp_path: Path) -> None:
    _, run_dir = ema_run
    state = checkpoint.load(run_dir / "checkpoint.pt")
    state["ema"] = {"n_averaged": torch.tensor(3)}
    checkpoint.save(tmp_path / "bad.pt", state)
    with pytest.raises(checkpoint.CheckpointError, match="not an average"):
        checkpoint.trained_energy(str(tmp_path / "bad.pt"))


# ---- bad values --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def composed() -> DictConfig:
    return _hydra(CHEAP)


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.5", "nan", "true", "abc", "[0.9]"])
def test_a_bad_decay_is_refused_in_one_line(composed: DictConfig, value: str) -> None:
    cfg = copy.deepcopy(composed)
    cfg.ema = _parsed(value)  # as the override ema=VALUE sets it
    with pytest.raises(ConfigError) as e:
        check_config(cfg)
    message = str(e.value)
    assert message.startswith(f"ema={_parsed(value)!r} is not allowed; it must be null (off) "
                              "or a decay d in (0, 1)"), message
    assert "\n" not in message


def _parsed(value: str) -> Any:
    """A command-line value as Hydra's override grammar reads it (``ema=VALUE``)."""
    return OverridesParser.create().parse_override(f"ema={value}").value()


def test_good_decays_pass(composed: DictConfig) -> None:
    for value in (None, 0.5, 0.999, 1 - 1e-9):
        cfg = copy.deepcopy(composed)
        cfg.ema = value
        assert check_config(cfg)["ema"] == value


def test_a_sampling_run_with_an_average_is_refused() -> None:
    cfg = _hydra([*FAST, "trainer=none", "ema=0.9"])
    with pytest.raises(ConfigError, match=r"^ema=0.9 averages trained weights.*ema=null$"):
        check_config(cfg)


def test_a_bad_decay_on_the_command_line_is_one_error_line(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from test_faults import _clean_failure, _main_in_process

    line = _clean_failure(_main_in_process([f"hydra.run.dir={tmp_path / 'r'}", *FAST, "ema=2"],
                                           tmp_path, monkeypatch))
    assert line.startswith("error: ema=2 is not allowed; it must be null (off)"), line
    assert not (tmp_path / "r").exists()


# ---- end to end (slow) ---------------------------------------------------------------------------
@pytest.mark.slow
def test_ema_run_stopped_and_resumed_ends_with_the_same_metrics(tmp_path: Path) -> None:
    from conftest import run_cli

    # a constant lr: a cosine schedule's T_max follows trainer.steps, which the resume extends
    args = [*FAST, "sampler=langevin", "ema=0.95", "trainer.lr_schedule=null"]
    straight = run_cli([f"hydra.run.dir={tmp_path / 'a'}", *args], cwd=tmp_path)
    assert straight.returncode == 0, straight.stdout + straight.stderr
    first = run_cli([f"hydra.run.dir={tmp_path / 'b'}", *args, "trainer.steps=12"], cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    (tmp_path / "b" / "metrics.json").unlink()
    resumed = run_cli([f"resume={tmp_path / 'b'}", "trainer.steps=30"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in "ab")
    for m in (a, b):
        for key in [k for k in m if k == "train_seconds" or k.startswith("seconds_")]:
            m.pop(key)
    assert a == b and a["ema_decay"] == 0.95
    sa, sb = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in "ab")
    for part in ("energy", "ema"):
        for k, v in sa[part].items():
            assert torch.equal(v, sb[part][k]), (part, k)
