"""Everything that writes: TensorBoard events, figures, metrics.json and the rich console."""

from __future__ import annotations

import json
import logging
import math
import shlex
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from torch.utils.tensorboard import SummaryWriter

if TYPE_CHECKING:  # matplotlib (≈ 0.9 s to import) loads only where a figure is drawn
    from matplotlib.figure import Figure

CONSOLE = Console()
log = logging.getLogger("ebm_cli")
# The console's width when it is not a terminal (a pipe, a file, a log collector): wide enough
# that no table row or log line is wrapped (rich would use 80 columns, splitting numbers).
PIPED_WIDTH = 1000
# Lines for the file log (cli.log) alone, e.g. the step lines of a run whose console shows the
# progress bar instead: they propagate to the root's file handler, the console handler skips them.
file_log = logging.getLogger("ebm_cli.file")

# Overlaid charts in TensorBoard's "Custom Scalars" tab.
CUSTOM_SCALARS = {
    "ebm": {
        "energy: data vs samples": ["Multiline", ["energy/data", "energy/samples"]],
        "loss": ["Multiline", ["loss"]],
        "held-out NLL (nats)": ["Multiline", ["quality/test_nll", "eval/test_nll"]],
        "sampler": ["Multiline", ["sampler/acceptance_rate"]],
    }
}


def fit_console() -> None:
    """Not a terminal: no wrapping at 80 columns (tables are as wide as their content)."""
    if not CONSOLE.is_terminal:
        CONSOLE.width = PIPED_WIDTH


class ConsoleHandler(RichHandler):
    """Hydra's job logging on the console of the progress bar: rich on a terminal, one plain
    unwrapped line per record (``HH:MM:SS LEVEL message``) otherwise. Records of ``file_log``
    are left to the file handler."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(console=CONSOLE, show_path=False, **kwargs)

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == file_log.name:
            return
        if CONSOLE.is_terminal:
            super().emit(record)
            return
        try:
            stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
            CONSOLE.print(f"{stamp} {record.levelname} {self.format(record)}", soft_wrap=True,
                          markup=False, highlight=False, emoji=False)
        except Exception:
            self.handleError(record)


class Reporter:
    """One run's writers. ``live`` selects a rich progress bar (and a spinner per evaluation
    phase) over plain periodic log lines."""

    def __init__(self, run_dir: Path, config_yaml: str, total_steps: int, live: bool,
                 start_step: int = 0) -> None:
        """``start_step`` > 0 continues a run: events the old writer logged after that step
        (lost work since the checkpoint) are purged, so no step appears twice."""
        self.run_dir = run_dir
        self.phase = "start-up"  # start-up | training | evaluation: <name> | outputs
        self.seconds: dict[str, float] = {}  # wall time of each timed phase (see timed)
        purge = start_step + 1 if start_step else None
        self.writer = SummaryWriter(log_dir=str(run_dir), purge_step=purge)
        if start_step == 0:
            self.writer.add_custom_scalars(CUSTOM_SCALARS)
            self.writer.add_text("config", "```yaml\n" + config_yaml + "\n```", 0)
        self.total_steps = total_steps
        self.live = live
        self.progress: Progress | None = None
        self.phases: Progress | None = None  # the spinners of the phases after training
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
        """Progress: the bar on a terminal (and a line in cli.log), a log line otherwise."""
        keys = ("loss", "sampler/acceptance_rate", "quality/test_nll")
        short = {"sampler/acceptance_rate": "accept", "quality/test_nll": "test_nll"}
        text = "  ".join(f"{short.get(k, k)}={values[k]:.4g}" for k in keys if k in values)
        if self.progress is not None:
            self.progress.update(self.task, completed=step, status=text)
        (log if self.progress is None else file_log).info("step %d/%d  %s", step,
                                                           self.total_steps, text)

    @contextmanager
    def timed(self, name: str, stage: str = "evaluation", detail: str = "") -> Iterator[None]:
        """A named phase after training: a spinner with its elapsed time on a terminal, a log
        line otherwise; its wall time goes into ``seconds[name]`` (summed if repeated)."""
        self.phase = stage if name == stage else f"{stage}: {name}"
        label = self.phase + (f" ({detail})" if detail else "")
        task = None
        if self.live:
            if self.phases is None:
                self.phases = Progress(SpinnerColumn(finished_text="[green]✓[/green]"),
                                       TextColumn("{task.description}"), TimeElapsedColumn(),
                                       console=CONSOLE, transient=False)
                self.phases.start()
            task = self.phases.add_task(label, total=1)
        (file_log if self.live else log).info("%s", label)
        start = time.perf_counter()
        done = False
        try:
            yield
            done = True
        finally:
            seconds = time.perf_counter() - start
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds
            if self.phases is not None and task is not None:  # ✓ only when it finished
                self.phases.update(task, **({"completed": 1} if done else
                                            {"description": f"{label}: stopped"}))
            file_log.info("%s: %.2f s%s", label, seconds, "" if done else " (stopped)")

    def figure(self, tag: str, fig: Figure, step: int, save_as: str | None = None) -> None:
        if save_as:
            fig.savefig(self.run_dir / save_as, dpi=110)
        self.writer.add_figure(tag, fig, step, close=True)  # closes it (pyplot.close)

    def close_progress(self, step: int | None = None) -> None:
        """Stop the bar where training is: ``step`` (a stopped run) or its last update."""
        if self.progress is not None:
            if step is not None:
                self.progress.update(self.task, completed=step, status="stopped")
            self.progress.stop()
            self.progress = None

    def close(self) -> None:
        self.close_progress()
        if self.phases is not None:
            self.phases.stop()
            self.phases = None
        self.writer.flush()
        self.writer.close()


def write_metrics(run_dir: Path, metrics: dict[str, float]) -> None:
    """metrics.json: one flat JSON object of finite numbers (a non-finite value is left out and
    named in the log)."""
    clean = {k: v for k, v in metrics.items() if math.isfinite(v)}
    for key in sorted(set(metrics) - set(clean)):
        log.warning("metric %s is %s and is left out of metrics.json", key, metrics[key])
    (run_dir / "metrics.json").write_text(json.dumps(clean, indent=2, sort_keys=True) + "\n")


def start_banner(run_dir: Path, choices: Mapping[str, str | None], device: str, dtype: str,
                 threads: int) -> list[str]:
    """The lines printed when a run starts: where it lives, what was chosen, where it runs."""
    chosen = "  ".join(f"{group}={choices.get(group) or '-'}"
                       for group in ("data", "energy", "sampler", "trainer", "experiment",
                                     "debug"))
    return [f"run directory: {run_dir}", f"options: {chosen}",
            f"device: {device}  dtype: {dtype}  threads: {threads}",
            f"follow in TensorBoard: tensorboard --logdir {shlex.quote(str(run_dir))}"]


# A metric printed as "value ± se" with the standard error stored under this suffix.
SE_SUFFIX = "_se"
# Metrics that are ≥ 0 in truth but whose estimates can fall below 0 by chance.
NONNEGATIVE = ("kl", "mmd")


def _fmt(value: Any) -> str:
    return f"{value:.5g}" if isinstance(value, float) else str(value)


def _is_time(key: str) -> bool:
    return key == "train_seconds" or key.startswith("seconds_")


def phase_times(metrics: Mapping[str, Any]) -> str:
    """``time: startup 1.2 s · training 38 s (NLL curve 0.5 s) · chains 5.1 s · …``, the wall
    time of each phase in the order they ran (metrics.json's ``seconds_<phase>``)."""
    parts = []
    if "seconds_startup" in metrics:
        parts.append(f"startup {metrics['seconds_startup']:.3g} s")
    if "train_seconds" in metrics:
        curve = metrics.get("seconds_curve")
        parts.append(f"training {metrics['train_seconds']:.3g} s"
                     + (f" (NLL curve {curve:.2g} s)" if curve is not None else ""))
    for key, value in metrics.items():  # insertion order: the order the phases ran
        name = key.removeprefix("seconds_")
        if key.startswith("seconds_") and name not in ("startup", "curve", "compile"):
            parts.append(f"{name} {value:.2g} s")
    if "seconds_compile" in metrics:  # compile=true: part of training and chains, not a phase
        parts.append(f"of which compiling {metrics['seconds_compile']:.2g} s")
    return "time: " + " · ".join(parts)


def summary_rows(metrics: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[str]]:
    """(metric, shown value) rows, a metric with a ``<key>_se`` as ``value ± se``, and notes for
    estimates of a non-negative quantity that came out below 0 (within or beyond 2 se). The
    phases' wall times are not rows (phase_times)."""
    rows, notes = [], []
    for key in sorted(metrics):
        if (key.endswith(SE_SUFFIX) and key[: -len(SE_SUFFIX)] in metrics) or _is_time(key):
            continue
        value, se = metrics[key], metrics.get(key + SE_SUFFIX)
        shown = _fmt(value)
        if isinstance(se, float) and math.isfinite(se):
            shown = f"{_fmt(value)} ± {se:.2g}"
        rows.append((key, shown))
        if key in NONNEGATIVE and isinstance(value, float) and value < 0:
            if isinstance(se, float) and math.isfinite(se) and -value <= 2 * se:
                notes.append(f"{key} = {value:.3g} is below 0 but within 2 standard errors "
                             f"(± {se:.2g}) of 0: the estimate is unbiased, so it can fall below "
                             f"0 when the true {key} is ~0 (model and truth indistinguishable "
                             "at this sample size)")
            else:
                notes.append(f"{key} = {value:.3g} is below 0 by more than 2 standard errors: "
                             "the reference it is measured against (e.g. an estimated entropy) "
                             "is off")
    return rows, notes


def summary(metrics: dict[str, float], run_dir: Path, notes: list[str]) -> None:
    """The final table: metrics (± their standard errors), where the run lives and how to open
    it in TensorBoard; also written to the file log."""
    fit_console()  # also in a launcher's worker process, where cli.main did not run
    rows, value_notes = summary_rows(metrics)
    table = Table(title="ebm-train summary", show_header=True, header_style="bold")
    table.add_column("metric", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    for key, shown in rows:
        table.add_row(key, shown)
        file_log.info("summary: %s = %s", key, shown)
    CONSOLE.print(table)
    for note in [*value_notes, *notes]:
        CONSOLE.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True, highlight=False)
        file_log.info("note: %s", note)
    for line in (phase_times(metrics), f"output directory: {run_dir}",
                 f"open in TensorBoard: tensorboard --logdir {shlex.quote(str(run_dir))}"):
        CONSOLE.print(line, soft_wrap=True, highlight=False)
        file_log.info("%s", line)
