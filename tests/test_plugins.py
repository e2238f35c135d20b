"""The user's own classes, with the minimal contract, from a ``--config-dir`` outside the package.

An energy is any nn.Module with ``forward(x) -> [B]`` (no ``event_shape`` argument, float64
buffers and look-alike ``sample``/``mean``/``log_z`` attributes that mean nothing to the runner);
a sampler is any class with ``init``/``step``; a trainer any class with ``step``,
``state_dict``, ``load_state_dict`` and ``negatives``. A bug inside one of them is one line
naming the class.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import FAST
from test_faults import _clean_failure, _main_in_process

MODULE = textwrap.dedent('''
    """A user's own energy, sampler and trainer, outside ebm_cli."""
    from dataclasses import dataclass
    from typing import NamedTuple

    import torch
    from torch import nn

    from ebm_cli.samplers.base import ChainState


    class Quadratic(nn.Module):
        """E(x) = ½ Σ_d x_d² / s² plus a small MLP term; float64 buffers, no event_shape."""

        def __init__(self, scale: float = 1.0, hidden: int = 8, dim: int = 2) -> None:
            super().__init__()
            self.register_buffer("s", torch.tensor(scale, dtype=torch.float64))
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
            self.mean = torch.zeros(3, dtype=torch.float64)  # not the runner's business
            self.cov = "not a covariance"
            self.log_z = "not a number"
            self.event_shape = (dim,)

        def sample(self) -> int:  # a method of the same name as an optional extra
            return 42

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.flatten(1)
            return 0.5 * (x / self.s.to(x)).pow(2).sum(1) + 0.1 * self.net(x).squeeze(1)


    class Broken(nn.Module):
        def __init__(self, when: str = "forward") -> None:
            super().__init__()
            self.lin = nn.Linear(2, 1)
            if when == "init":
                raise ZeroDivisionError("bad constructor")

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x).squeeze(1) / 0 if False else self._oops(x)

        def _oops(self, x: torch.Tensor) -> torch.Tensor:
            raise KeyError("bug in forward")


    class Info(NamedTuple):
        accept_prob: torch.Tensor
        is_accepted: torch.Tensor


    @dataclass(frozen=True)
    class RandomWalk:
        """Random-walk Metropolis, x' = x + σ ξ, accepted with min(1, exp(E(x) − E(x')))."""

        scale: float = 0.5

        def init(self, energy_fn: nn.Module, x: torch.Tensor) -> ChainState:
            with torch.no_grad():
                return ChainState(x, energy_fn(x))

        def step(self, energy_fn, state, generator):
            x, e = state.x, state.energy
            prop = x + self.scale * torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                                device=x.device)
            with torch.no_grad():
                e_prop = energy_fn(prop)
            prob = torch.exp(torch.clamp(e - e_prop, max=0.0))
            accept = torch.rand(prob.shape, generator=generator, dtype=prob.dtype,
                                device=prob.device) < prob
            x = torch.where(accept[:, None], prop, x)
            e = torch.where(accept, e_prop, e)
            return ChainState(x, e), Info(prob, accept)


    class ContrastiveDivergence:
        """CD-k from the data: loss = mean E(data) − mean E(k sampler steps from the data)."""

        def __init__(self, energy_fn, sampler, k: int = 5, lr: float = 1e-3) -> None:
            self.energy_fn, self.sampler, self.k = energy_fn, sampler, k
            self.opt = torch.optim.Adam(energy_fn.parameters(), lr=lr)
            self.last = None

        def step(self, batch, generator):
            state = self.sampler.init(self.energy_fn, batch)
            for _ in range(self.k):
                state, _ = self.sampler.step(self.energy_fn, state, generator)
            self.last = state.x.detach()
            loss = self.energy_fn(batch).mean() - self.energy_fn(self.last).mean()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            return {"loss": loss.detach()}

        def state_dict(self):
            return {"opt": self.opt.state_dict()}

        def load_state_dict(self, state):
            self.opt.load_state_dict(state["opt"])

        def negatives(self):
            return self.last
''')
CONFIGS = {
    "energy/quad.yaml": "_target_: my_plugins.Quadratic\nscale: 1.0\nhidden: 8\ndim: 2\n",
    "energy/quad20.yaml": "_target_: my_plugins.Quadratic\nscale: 2.0\nhidden: 4\ndim: 20\n",
    "energy/broken.yaml": "_target_: my_plugins.Broken\nwhen: forward\n",
    "sampler/rw.yaml": "_target_: my_plugins.RandomWalk\nscale: 0.5\n",
    "trainer/cd.yaml": ("_target_: my_plugins.ContrastiveDivergence\nsteps: 30\nbatch_size: 64\n"
                        "k: 5\nlr: 0.001\n"),
}


@pytest.fixture
def plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module and a config directory outside the package; returns the config directory."""
    (tmp_path / "my_plugins.py").write_text(MODULE)
    conf = tmp_path / "conf"
    for name, text in CONFIGS.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return conf


def _run(conf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str):
    return _main_in_process(["--config-dir", str(conf), f"hydra.run.dir={tmp_path / 'run'}",
                             *args], tmp_path, monkeypatch)


def test_a_user_energy_with_float64_buffers_trains_and_evaluates(
        plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = _run(plugins, tmp_path, monkeypatch, *FAST, "energy=quad", "sampler=mala")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert np.isfinite(metrics["test_nll"]) and np.isfinite(metrics["mmd"])


def test_a_user_sampler_serves_training_and_sampling(
        plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = _run(plugins, tmp_path, monkeypatch, *FAST, "sampler=rw")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["steps"] == 30


def test_a_user_trainer_with_a_user_sampler_and_energy(
        plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = _run(plugins, tmp_path, monkeypatch, *FAST, "trainer=cd", "sampler=rw",
                "energy=quad")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert np.isfinite(json.loads((tmp_path / "run" / "metrics.json").read_text())["test_nll"])


def test_sampling_a_user_energy_takes_its_dimension_from_the_energy(
        plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """N(0, s²I) in 20-D with s = 2 (plus a small MLP term): samples.npy holds draws of the
    energy itself, in its own units, whatever data group is configured."""
    proc = _run(plugins, tmp_path, monkeypatch, "energy=quad20", "trainer=none", "sampler=rw",
                "sampler.scale=0.8", "trainer.steps=60", "trainer.warmup_steps=20",
                "trainer.n_chains=256", "data=file", "data.path=/nonexistent.npy")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    samples = np.load(tmp_path / "run" / "samples.npy")
    assert samples.shape == (256, 20)


def test_a_bug_in_the_users_forward_is_one_line_naming_the_class(
        plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = _run(plugins, tmp_path, monkeypatch, *FAST, "energy=broken")
    line = _clean_failure(proc)
    assert proc.returncode == 1
    assert "my_plugins.Broken" in line and "KeyError" in line and "EBM_TRACEBACK=1" in line


def test_a_bug_in_the_users_constructor_is_one_line_naming_the_class(
        plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = _run(plugins, tmp_path, monkeypatch, *FAST, "energy=broken", "energy.when=init")
    line = _clean_failure(proc)
    assert proc.returncode == 1
    assert "my_plugins.Broken" in line and "ZeroDivisionError" in line


def test_the_traceback_is_there_when_asked_for(
        plugins: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EBM_TRACEBACK", "1")
    proc = _run(plugins, tmp_path, monkeypatch, *FAST, "energy=broken")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "bug in forward" in proc.stderr


def test_sampling_a_known_energy_sets_its_dimension_from_energy_dim(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    proc = _main_in_process([f"hydra.run.dir={tmp_path / 'run'}", "trainer=none", "energy=funnel",
                             "energy.dim=10", "sampler=mala", "trainer.steps=20",
                             "trainer.warmup_steps=20", "trainer.n_chains=64"],
                            tmp_path, monkeypatch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert np.load(tmp_path / "run" / "samples.npy").shape == (64, 10)


def test_samples_of_a_sampling_run_are_in_the_energys_units_whatever_the_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """N(3, 4·I) in 5-D, with data=file naming a file of another scale and dimension: the
    final states of 1024 chains are (after warm-up) independent draws, so their mean and
    variance are within 5 Monte Carlo standard errors of 3 and 4 (se of the mean σ/√n; of the
    variance σ²·√(2/(n − 1)))."""
    data = tmp_path / "other.npy"
    np.save(data, 100.0 + 25.0 * np.random.default_rng(0).standard_normal((500, 2)))
    proc = _main_in_process([f"hydra.run.dir={tmp_path / 'run'}", "trainer=none",
                             "energy=correlated_gaussian", "energy.dim=5",
                             "energy.correlation=0.0", "energy.scales=2.0", "energy.mean=3.0",
                             "sampler=mala", "trainer.steps=100", "trainer.warmup_steps=200",
                             "trainer.n_chains=1024", "data=file", f"data.path={data}"],
                            tmp_path, monkeypatch)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    x = np.load(tmp_path / "run" / "samples.npy")
    n = x.shape[0]
    assert x.shape == (1024, 5)
    assert np.all(np.abs(x.mean(0) - 3.0) < 5 * 2.0 / np.sqrt(n))
    assert np.all(np.abs(x.var(0, ddof=1) - 4.0) < 5 * 4.0 * np.sqrt(2 / (n - 1)))
