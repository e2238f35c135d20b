"""What a user sees of one run: a terminal (pseudo-terminal) run, the progress bar stopped by
Ctrl-C, refused starts that leave nothing behind, ``--help`` and ``--version``, and summary
values that look wrong but are not."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import io
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import torch
from conftest import FAST, ebm_train_command
from rich.console import Console

from ebm_cli.evaluation.mmd import mmd_with_se
from ebm_cli.reporting import report

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def _in_pty(args: list[str], cwd: Path, timeout: float = 240) -> tuple[int, str]:
    """``ebm-train ARGS`` with stdout and stderr on a 120×40 pseudo-terminal: (code, text)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items()
           if k not in ("HYDRA_FULL_ERROR", "COLUMNS", "LINES", "NO_COLOR", "TERM")}
    proc = subprocess.Popen([*ebm_train_command(), *args], cwd=cwd, stdin=slave, stdout=slave,
                            stderr=slave, env={**env, "TERM": "xterm-256color"})
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.5)[0]:
                try:
                    data = os.read(master, 1 << 16)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    return code, b"".join(chunks).decode(errors="replace")


@pytest.fixture(scope="module")
def terminal_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("tty")
    code, out = _in_pty([f"hydra.run.dir={root / 'run'}", *FAST], root)
    assert code == 0, out
    return root / "run", out


@pytest.mark.slow
def test_terminal_run_shows_banner_bar_and_every_phase(terminal_run: tuple[Path, str]) -> None:
    run_dir, out = terminal_run
    text = ANSI.sub("", out)
    assert f"run directory: {run_dir}" in text and "tensorboard --logdir" in text
    assert text.index("run directory:") < text.index("step 30/30")  # banner first
    assert "step 30/30" in text  # the rich bar
    for phase in ("chains", "mmd", "quadrature", "modes", "figures", "outputs"):
        assert re.search(rf"✓ (evaluation: )?{phase}\b", text), phase  # its spinner, done
    assert "ebm-train summary" in text and "time: startup" in text


@pytest.mark.slow
def test_cli_log_is_written_when_the_run_is_in_a_terminal(terminal_run: tuple[Path, str]
                                                          ) -> None:
    run_dir, _ = terminal_run
    log = (run_dir / "cli.log").read_text()
    for text in ("run directory:", "step 30/30", "evaluation: chains", "summary: kl ="):
        assert text in log, text


def test_a_stopped_bar_shows_the_step_reached(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C at step 37 of 100: the bar ends at 37/100 (Loop.run calls close_progress(step))."""
    screen = io.StringIO()
    monkeypatch.setattr(report, "CONSOLE", Console(file=screen, force_terminal=True, width=100))
    reporter = report.Reporter(tmp_path, "", total_steps=100, live=True)
    reporter.status(25, {"loss": 0.5})  # the last logging step before the signal
    reporter.close_progress(37)
    reporter.close()
    last = ANSI.sub("", screen.getvalue()).replace("\r", "\n").strip().splitlines()[-1]
    assert "step 37/100" in last and "stopped" in last, last
    assert "100/100" not in screen.getvalue()


def _main(args: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[object, str]:
    """``ebm-train ARGS`` in this process: (exit code, stdout + stderr)."""
    from ebm_cli.app import cli

    monkeypatch.chdir(cwd)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["ebm-train", *args])
    out = io.StringIO()
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            cli.main()
        except SystemExit as e:
            code = e.code
    return code, out.getvalue()


def test_a_refused_start_leaves_no_run_directory(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The sampler refuses step_size=-1 while the run is built, after Hydra made its directory:
    that directory goes again (the default name, or a new hydra.run.dir), nothing that existed
    before does (here the parent of the new hydra.run.dir and a file in it)."""
    bad = [*FAST, "sampler.step_size=-1"]
    code, out = _main(bad, tmp_path, monkeypatch)
    assert code == 2 and "sampler.step_size" in out, out
    runs = [p for p in (tmp_path / "outputs").rglob("*") if p.is_file()]
    assert not runs, runs  # no run directory, no event file
    kept = tmp_path / "mine"
    kept.mkdir()
    (kept / "notes.txt").write_text("not the run's")
    code, out = _main([f"hydra.run.dir={kept / 'new' / 'run'}", *bad], tmp_path, monkeypatch)
    assert code == 2 and not (kept / "new").exists(), out
    assert (kept / "notes.txt").read_text() == "not the run's"


def test_help_introduces_ebm_train_before_hydra(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    code, out = _main(["--help"], tmp_path, monkeypatch)
    assert code in (0, None), out
    intro, _, hydra_part = out.partition("== Config (Hydra)")
    assert intro.startswith("ebm-train: train an energy-based model"), out[:200]
    for group in ("data", "energy", "sampler", "trainer", "experiment", "debug"):
        assert re.search(rf"^{group}: \w", intro, re.M), group  # the group and its options
    assert re.search(r"^sampler: .*\bhmc\b.*\bmala\b", intro, re.M)
    assert intro.count("\n  ebm-train ") >= 2  # examples
    assert "trainer:" in hydra_part and "--hydra-help" in out


def test_version_prints_the_installed_version() -> None:
    proc = subprocess.run([*ebm_train_command(), "--version"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"ebm-cli {importlib.metadata.version('ebm-cli')} ")


def test_a_negative_kl_within_its_standard_error_says_why() -> None:
    rows, notes = report.summary_rows({"kl": -0.003, "kl_se": 0.002, "mmd": -0.2,
                                       "mmd_se": 0.01, "test_nll": 2.1, "train_seconds": 3.0})
    assert ("kl", "-0.003 ± 0.002") in rows and ("test_nll", "2.1") in rows
    assert all(key != "train_seconds" for key, _ in rows)  # times: their own line
    assert "within 2 standard errors" in notes[0] and notes[0].startswith("kl =")
    assert "by more than 2 standard errors" in notes[1] and notes[1].startswith("mmd =")


def test_mmd_jackknife_standard_error_does_not_underestimate() -> None:
    """Against the spread of MMD² over 200 independent sample pairs, at P = Q (where MMD² is
    degenerate and can be < 0) and at P ≠ Q: the mean jackknife variance is at least the Monte
    Carlo variance (less 3 of its relative standard errors, √(2/(R−1))) and not wildly more."""
    g = torch.Generator().manual_seed(1)
    reps = 200
    for shift in (0.0, 0.5):
        values, ses = [], []
        for _ in range(reps):
            x = torch.randn(40, 2, generator=g, dtype=torch.float64)
            y = torch.randn(50, 2, generator=g, dtype=torch.float64) + shift
            value, se = mmd_with_se(x, y, bandwidths=[0.5, 1.0, 2.0])
            values.append(value)
            ses.append(se)
        ratio = float(torch.stack(ses).pow(2).mean() / torch.stack(values).var())
        assert 1 - 3 * (2 / (reps - 1)) ** 0.5 <= ratio <= 3.0, (shift, ratio)
