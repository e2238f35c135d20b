"""Everything that writes: TensorBoard events, figures, metrics.json and the rich console."""

from __future__ import annotations

import json
import logging
import math
import shlex
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from torch.utils.tensorboard import SummaryWriter

CONSOLE = Console()
log = logging.getLogger("ebm_cli")

# Overlaid charts in TensorBoard's "Custom Scalars" tab.
CUSTOM_SCALARS = {
    "ebm": {
        "energy: data vs samples": ["Multiline", ["energy/data", "energy/samples"]],
        "loss": ["Multiline", ["loss"]],
        "sampler": ["Multiline", ["sampler/acceptance_rate"]],
    }
}


class ConsoleHandler(RichHandler):
    """Hydra's job logging through rich, on the same console as the progress bar."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(console=CONSOLE, show_path=False, **kwargs)


class Reporter:
    """One run's writers. ``live`` selects a rich progress bar over plain periodic log lines."""

    def __init__(self, run_dir: Path, config_yaml: str, total_steps: int, live: bool,
                 start_step: int = 0) -> None:
        """``start_step`` > 0 continues a run: events the old writer logged after that step
        (lost work since the checkpoint) are purged, so no step appears twice."""
        self.run_dir = run_dir
        self.phase = "start-up"  # start-up | training | evaluation: named when a run is stopped
        purge = start_step + 1 if start_step else None
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge)
        if start_step == 0:
            self.writer.add_custom_scalars(CUSTOM_SCALARS)
            self.writer.add_text("config", "```yaml\n" + config_yaml + "\n```", 0)
        self.total_steps = total_steps
        self.progress: Progress | None = None
        if live:
            self.progress = Progress(
                TextColumn("[bold]step {task.completed}/{task.total}"),
                BarColumn(),
                TextColumn("{task.fields[status]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=CONSOLE,
                transient=False,
            )
            self.task = self.progress.add_task("train", total=total_steps, status="",
                                               completed=start_step)
            self.progress.start()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def status(self, step: int, values: dict[str, float]) -> None:
        """Progress: the bar on a terminal, a log line otherwise."""
        keys = ("loss", "sampler/acceptance_rate")
        text = "  ".join(
            f"{k.split('/')[-1].replace('acceptance_rate', 'accept')}={values[k]:.4g}"
            for k in keys
            if k in values
        )
        if self.progress is not None:
            self.progress.update(self.task, completed=step, status=text)
        else:
            log.info("step %d/%d  %s", step, self.total_steps, text)

    def figure(self, tag: str, fig: Figure, step: int, save_as: str | None = None) -> None:
        if save_as:
            fig.savefig(self.run_dir / save_as, dpi=110)
        self.writer.add_figure(tag, fig, step, close=True)
        plt.close(fig)

    def close_progress(self) -> None:
        if self.progress is not None:
            self.progress.update(self.task, completed=self.total_steps)
            self.progress.stop()
            self.progress = None

    def close(self) -> None:
        self.close_progress()
        self.writer.flush()
        self.writer.close()


def write_metrics(run_dir: Path, metrics: dict[str, float]) -> None:
    """metrics.json: one flat JSON object of finite numbers (a non-finite value is left out and
    named in the log)."""
    clean = {k: v for k, v in metrics.items() if math.isfinite(v)}
    for key in sorted(set(metrics) - set(clean)):
        log.warning("metric %s is %s and is left out of metrics.json", key, metrics[key])
    (run_dir / "metrics.json").write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")


def summary(metrics: dict[str, float], run_dir: Path, notes: list[str]) -> None:
    """The final table: metrics, where the run lives and how to open it in TensorBoard."""
    table = Table(title="ebm-train summary", show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in sorted(metrics):
        value = metrics[key]
        table.add_row(key, f"{value:.5g}" if isinstance(value, float) else str(value))
    CONSOLE.print(table)
    for note in notes:
        CONSOLE.print(f"[yellow]note:[/yellow] {note}")
    CONSOLE.print(f"output directory: {run_dir}", soft_wrap=True, highlight=False)
    CONSOLE.print(f"open in TensorBoard: tensorboard --logdir {shlex.quote(str(run_dir))}",
                  soft_wrap=True, highlight=False)
