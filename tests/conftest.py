"""Shared test helpers: run the installed ``ebm-train`` as a user would."""

from __future__ import annotations

import fcntl
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


# The default tier's slowest files, slowest first (--durations summed per file). With ``-n 2
# --dist loadfile`` a file is one unit of work and xdist hands units out in this order (its own
# order, most tests first, is switched off below), so the long files start first and the run
# ends on short ones instead of one worker finishing a long file alone. test_trust.py comes
# before test_faults.py: it needs ``finished_run`` at once, test_faults.py only after its signal
# test, by when the other worker has made it. A file not listed keeps its place, after these.
SLOWEST_FIRST = (
    "test_trust.py", "test_faults.py", "test_readme.py", "test_adaptation.py",
    "test_trainer_matrix.py", "test_sweeps.py", "test_samplers.py", "test_plugins.py",
    "test_cli.py", "test_tensorboard.py", "test_trainers.py", "test_ais.py",
)


def pytest_configure(config: pytest.Config) -> None:
    if getattr(config.option, "loadscopereorder", False):
        config.option.loadscopereorder = False  # keep SLOWEST_FIRST's order (pytest-xdist)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files in SLOWEST_FIRST order (a stable sort: tests keep their order within a file)."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished FAST run, trained once per test session (shared by the xdist workers, under
    a lock); tests read it or damage copies of it, never the run itself."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's directory, above each worker's own
    run_dir = root / "finished_run" / "done"
    with open(root / "finished_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (run_dir / "metrics.json").is_file():  # not made yet, or a failed try
            shutil.rmtree(run_dir.parent, ignore_errors=True)
            run_dir.parent.mkdir(parents=True)
            proc = run_cli([f"hydra.run.dir={run_dir}", *FAST], cwd=run_dir.parent)
            assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir
