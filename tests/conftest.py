"""Shared test helpers: run the installed ``ebm-train`` as a user would."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)


def _prefer_the_installed_package() -> None:
    """Test the package as installed, like the ``ebm-train`` the subprocess tests run.

    ``python -m pytest`` puts the checkout first on sys.path, where ``ebm_cli`` has no
    ``configs`` subpackage (the top-level configs/ become ``ebm_cli.configs`` only when
    installed), so in-process Hydra composition would fail after a plain ``pip install .``.
    An editable install maps them with its own import hook and keeps the checkout.
    """
    checkout = Path(__file__).resolve().parents[1]
    rest = [p for p in sys.path if Path(p or ".").resolve() != checkout]
    spec = importlib.machinery.PathFinder.find_spec("ebm_cli", rest)
    if spec is not None and spec.origin and Path(spec.origin).parent != checkout / "ebm_cli":
        sys.path[:] = rest


_prefer_the_installed_package()

# Small, fast settings for end-to-end runs: the config's debug group (configs/debug/fast.yaml)
# plus smaller 2-D data sets.
FAST = ["debug=fast", "data.n_train=512", "data.n_test=256"]


def ebm_train_command() -> list[str]:
    """The installed console script next to this interpreter, else the module."""
    script = Path(sys.executable).parent / "ebm-train"
    if script.exists():
        return [str(script)]
    found = shutil.which("ebm-train")
    return [found] if found else [sys.executable, "-m", "ebm_cli.app.entry"]


def run_cli(args: list[str], cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "COLUMNS": "200"}
    env.pop("HYDRA_FULL_ERROR")
    return subprocess.run(
        ebm_train_command() + args, cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=env,
    )


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished FAST run, trained once per test module; tests damage copies of it."""
    root = tmp_path_factory.mktemp("finished")
    proc = run_cli([f"hydra.run.dir={root / 'done'}", *FAST], cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root / "done"
