"""Every command in the README runs (a smoke tier: few steps, small evaluations).

The README is parsed at collection time, so this follows whatever it says: each command of its
```bash blocks is a case. An ``ebm-train …`` command runs with small overrides appended — only
keys that exist in that command's composed config (``fast_argv``) — and must exit 0 without a
traceback. Placeholders are filled in: an ``outputs/…`` run directory by a small finished run
made once (a fresh copy for each ``resume=``), a sweep directory (``outputs/multirun/…``) by the
sweep of the block's preceding ``-m`` command, a ``data.path=`` file by a small generated file of
that kind, any other ``<name>`` by ``name``. A block with other shell commands (``mkdir``,
``cat <<'YAML'``) runs whole in bash, with an ``ebm-train`` first on PATH that adds the same
overrides. A SLURM launcher cannot run here: its command is composed (``--cfg hydra``) instead.
Benchmark scripts run only their ``--help``; ``tensorboard`` (a server), installs and the test
command are skipped, each as a visible skip.

Cost: most commands run in this process through ``ebm_cli.app.cli.main`` (no interpreter start-up);
those that start worker processes (joblib, submitit launchers) or need a shell run as
subprocesses in one background lane, started with the first test, while the in-process ones go
on. Image runs (``+experiment=digits*``, ``energy=conv``) and the joblib/submitit launchers'
commands are in the slow tier (``-m slow``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TESTS = Path(__file__).resolve().parent

# The smoke tier: small values for keys that exist in a command's config. A value is only ever
# lowered (a README value below it is kept); ``None`` in the config (all rows) is replaced.
STEPS = 10
FAST_VALUES = {
    "trainer.steps": STEPS,
    "trainer.warmup_steps": 10,
    "trainer.n_chains": 64,
    "trainer.trace_chains": 32,
    "trainer.batch_size": 64,
    "trainer.buffer_size": 256,
    "data.n_train": 512,
    "data.n_test": 256,
    "eval.n_samples": 64,
    "eval.sampler_steps": 5,
    "eval.warmup": 5,
    "eval.grid": 32,
    "eval.mmd_points": 64,
    "eval.ais_chains": 8,
    "eval.ais_steps": 10,
    "hydra.sweeper.n_trials": 2,
}
FIXED = {"log_every": STEPS, "image_every": 0, "checkpoint_every": 0}  # always set
SHELL_WORDS = ("mkdir", "cat", "cd", "export", "echo", "cp", "mv", "ls", "touch", "printf")
SKIPPED = {  # first word(s) of a command -> why it is not run
    "pip": "an install step", "pip3": "an install step", "python3 -m venv": "an install step",
    "python -m venv": "an install step", ".": "activates a venv", "source": "activates a venv",
    "ruff": "the test command itself", "python -m pytest": "the test command itself",
    "tensorboard": "starts a server",
}


@dataclass(frozen=True)
class Case:
    """One README command. kind: ebm (``ebm-train`` args), shell (a whole bash block), sweep
    (``python -m ebm_cli.app.sweep`` args), bench (a benchmark script: ``--help`` only), skip."""

    id: str
    block: int
    kind: str
    args: tuple[str, ...] = ()
    script: str = ""
    reason: str = ""
    after: str = ""  # for ``sweep``: the id of the block's last ``-m`` case

    @property
    def multirun(self) -> bool:
        return self.kind == "ebm" and any(a in ("-m", "--multirun") for a in self.args)

    @property
    def workers(self) -> bool:
        """A launcher that starts worker processes (each pays Python's and torch's start-up)."""
        launchers = ("hydra/launcher=joblib", "hydra/launcher=submitit_local")
        return any(a in launchers for a in self.args)

    @property
    def background(self) -> bool:
        """Runs as a subprocess: a shell, a script, or a launcher with worker processes."""
        return self.kind in ("shell", "bench") or self.workers

    @property
    def slow(self) -> bool:
        """Image runs (several seconds each even at these sizes: ConvNet, AIS, a classifier),
        launchers with worker processes (10–20 s of start-ups each) and sweeps with more than
        two jobs or Optuna (tests/test_sweeps.py runs every launcher and sweeper in the fast
        tier; the README's first sweep stays here)."""
        text = " ".join(self.args) + self.script
        images = re.search(r"experiment=digits|energy=conv|data=(digits|mnist)", text)
        sweeps = [a for a in self.args if "," in a and "=" in a and not a.startswith("hydra.")]
        big_sweep = ("-m" in self.args or "--multirun" in self.args) and (
            len(sweeps) > 1 or "optuna" in text)
        return bool(images) or self.workers or big_sweep


# --- reading the README --------------------------------------------------------------------------

def _logical_lines(block: str) -> Iterator[tuple[str, bool]]:
    """(line, is_heredoc_body) with backslash continuations joined."""
    lines = block.replace("\\\n", " ").splitlines()
    end = None
    for line in lines:
        if end is not None:
            yield line, True
            if line.strip() == end:
                end = None
            continue
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if heredoc:
            end = heredoc.group(1)
        if line.strip():
            yield line, False


def _program(words: list[str]) -> str:
    """The README command's program, as a key of SKIPPED or a kind."""
    for n in (3, 2, 1):
        head = " ".join(words[:n])
        if head in SKIPPED:
            return head
    if words[0] == "ebm-train":
        return "ebm"
    if words[0] in ("python", "python3"):
        if words[1:3] == ["-m", "ebm_cli.app.sweep"]:
            return "sweep"
        if len(words) > 1 and words[1].startswith("benchmarks/"):
            return "bench"
    return "shell" if words[0] in SHELL_WORDS else "unknown"


def _case_id(block: int, words: list[str]) -> str:
    return f"b{block}: " + " ".join(words)[:90]


def readme_cases(text: str) -> list[Case]:
    cases: list[Case] = []
    seen: set[tuple[str, ...]] = set()
    for block_no, block in enumerate(re.findall(r"```bash\n(.*?)```", text, re.S)):
        commands = []
        for line, heredoc in _logical_lines(block):
            if heredoc:
                continue
            for part in re.split(r"\s*&&\s*", line):
                words = shlex.split(part, comments=True)
                if words:
                    commands.append(words)
        programs = [_program(w) for w in commands]
        if "shell" in programs:  # the block's commands depend on each other: run it whole
            cases.append(Case(f"b{block_no}: bash block ({len(commands)} commands)", block_no,
                              "shell", script=block))
            continue
        last_sweep = ""
        for words, program in zip(commands, programs, strict=True):
            key = tuple(words)
            if key in seen:  # the same command twice (the install line ends with `ebm-train`)
                continue
            seen.add(key)
            cid = _case_id(block_no, words)
            if program in SKIPPED:
                cases.append(Case(cid, block_no, "skip", reason=SKIPPED[program]))
            elif program == "unknown":
                cases.append(Case(cid, block_no, "skip", reason=f"unknown program {words[0]}"))
            elif program == "ebm":
                case = Case(cid, block_no, "ebm", tuple(words[1:]))
                last_sweep = cid if case.multirun else last_sweep
                cases.append(case)
            elif program == "sweep":
                cases.append(Case(cid, block_no, "sweep", tuple(words[3:]), after=last_sweep))
            else:  # a benchmark: its --help only (a run is minutes of CPU)
                cases.append(Case(cid, block_no, "bench", (words[1], "--help")))
    return cases


CASES = readme_cases(README.read_text())


# --- the smoke overrides -------------------------------------------------------------------------

def _trial(args: list[str]) -> tuple[list[str], list[str], str]:
    """(overrides with each sweep at its first value, ``--config-dir`` values, config name) of
    ``ebm-train ARGS``; values Hydra cannot enumerate (Optuna's ``interval(…)``) are dropped."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:  # ebm-train's own spelling fixes (``+experiment=x`` is ``experiment=x``)
        from ebm_cli.app.cli import legacy
    except ImportError:
        def legacy(arg: str) -> str:
            return arg
    parser = OverridesParser.create()
    overrides, dirs, name = [], [], "config"
    words = iter(legacy(a) for a in args)
    for a in words:
        if a in ("--config-dir", "-cd") or a.startswith("--config-dir="):
            dirs.append(a.split("=", 1)[1] if "=" in a else next(words, ""))
        elif a in ("--config-name", "-cn"):
            name = next(words, name)
        elif a in ("--config-path", "-cp", "--package", "-p", "--experimental-rerun"):
            next(words, None)
        elif not a.startswith("-"):
            try:
                override = parser.parse_overrides([a])[0]
                if override.is_sweep_override():
                    a = f"{override.get_key_element()}={next(override.sweep_string_iterator())}"
            except Exception:  # not enumerable here; ebm-train itself reports a bad one
                continue
            overrides.append(a)
    return overrides, dirs, name


def _compose(args: list[str]):
    """The config ``ebm-train ARGS`` would get (sweeps at their first value), hydra node too."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides, dirs, name = _trial(args)
    if dirs:
        overrides.append(f"hydra.searchpath=[{','.join('file://' + d for d in dirs)}]")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module("ebm_cli.configs", version_base="1.3"):
            return compose(name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def fast_argv(args: list[str], resume_steps: int = 2 * STEPS) -> list[str]:
    """``ebm-train ARGS`` made small: the README's own value of a key we set is replaced.

    ``--help`` and ``--cfg`` run as written. A ``resume=`` command continues a small run with
    that run's own (already small) overrides; a ``trainer.steps`` it gives becomes
    ``resume_steps`` (more than the run has done, as "train longer" means).
    """
    from omegaconf import OmegaConf

    if any(a in ("--help", "-h", "--cfg", "-c", "--info", "--hydra-help") for a in args):
        return list(args)
    if any(a.startswith("resume=") for a in args):
        return [f"trainer.steps={resume_steps}" if a.startswith("trainer.steps=") else a
                for a in args]
    cfg = _compose(args)
    if OmegaConf.select(cfg, "hydra.launcher._target_", default="").endswith("SlurmLauncher"):
        # No cluster here: compose the launcher's config (sweeps at their first value, since
        # --cfg excludes --multirun) instead of submitting jobs.
        return [*_trial(args)[0], "--cfg", "hydra", "--package", "hydra.launcher"]
    fast = dict(FIXED)
    for key, value in FAST_VALUES.items():
        current = OmegaConf.select(cfg, key, default="<absent>")
        if current == "<absent>":
            continue
        if current is None or (isinstance(current, int) and current > value):
            fast[key] = value
    kept = [a for a in args if a.split("=", 1)[0] not in fast]
    return kept + [f"{k}={v}" for k, v in fast.items()]


# --- placeholders --------------------------------------------------------------------------------

def _data_file(path: str, args: list[str], where: Path) -> Path:
    """A small file for ``data.path=PATH`` of PATH's kind: 2-D points (csv with a header, npy,
    npz under ``data.key``) or 8×8 one-channel images for ``energy=conv``."""
    rng = np.random.default_rng(0)
    name = Path(path).name
    target = where / "data" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    if "energy=conv" in args:
        x = rng.random((300, 1, 8, 8)).astype(np.float32)
    else:
        centres = rng.choice([-2.0, 2.0], size=(300, 1)) * np.array([[1.0, 0.0]])
        x = (centres + 0.5 * rng.standard_normal((300, 2))).astype(np.float32)
    if name.endswith(".csv"):
        np.savetxt(target, x, delimiter=",", header="x,y", comments="")
    elif name.endswith(".npz"):
        key = next((a.split("=", 1)[1] for a in args if a.startswith("data.key=")), "arr_0")
        np.savez(target, **{key: x, "other": x[:10]})
    else:
        np.save(target, x)
    return target


def _substitute(args: tuple[str, ...], where: Path, run_dir: Path | None,
                sweep_dir: Path | None = None) -> list[str]:
    out = []
    for a in args:
        if a.startswith("data.path=") and not Path(a.split("=", 1)[1]).exists():
            a = f"data.path={_data_file(a.split('=', 1)[1], list(args), where)}"
        elif re.search(r"(^|=)outputs/multirun/\S+", a) and sweep_dir is not None:
            a = re.sub(r"outputs/multirun/\S+", str(sweep_dir), a)
        elif re.search(r"(^|=)outputs/\S+", a) and run_dir is not None:
            a = re.sub(r"outputs/\S+", str(run_dir), a)
        out.append(re.sub(r"<([^<>]+)>", r"\1", a))
    return out


def _needs_run(case: Case) -> bool:
    return any(re.search(r"(^|=)outputs/(?!multirun/)\S+", a) for a in case.args)


# --- running -------------------------------------------------------------------------------------

@dataclass
class Result:
    returncode: int | str | None
    output: str
    cwd: Path
    argv: list[str] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the command itself


def _in_process(args: list[str], cwd: Path) -> Result:
    """``ebm-train ARGS`` through ``ebm_cli.app.cli.main`` in this process (cf. test_faults)."""
    from hydra.core.global_hydra import GlobalHydra

    from ebm_cli.app import cli

    GlobalHydra.instance().clear()  # a run that failed may have left it initialised
    old_cwd, old_argv = Path.cwd(), sys.argv
    os.chdir(cwd)
    sys.argv = ["ebm-train", *args]
    out = io.StringIO()
    code: int | str | None = 0
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                cli.main()
            except SystemExit as e:
                code = e.code
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv
    return Result(code or 0, out.getvalue(), cwd, args, time.perf_counter() - start)


def _wrapper_dir(base: Path) -> Path:
    """A directory holding ``ebm-train``: this interpreter, ``fast_argv``, then the real main."""
    bin_dir = base / "bin"
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / "ebm-train"
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "from test_readme import fast_argv\n"
        "from ebm_cli.app.cli import main\n"
        "sys.argv = ['ebm-train', *fast_argv(sys.argv[1:])]\n"
        "main()\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _env(bin_dir: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["COLUMNS"] = "200"
    if bin_dir is not None:
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env


def _subprocess(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> Result:
    start = time.perf_counter()
    try:
        proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env=env)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        code, output = "timeout", f"{e.stdout or ''}{e.stderr or ''}"
    return Result(code, output, cwd, argv, time.perf_counter() - start)


def _sweep_cli(args: list[str], cwd: Path) -> Result:
    """``python -m ebm_cli.app.sweep ARGS`` in this process."""
    from ebm_cli.app.sweep import cli as sweep_cli

    out = io.StringIO()
    code: int | str | None = 0
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            sweep_cli(args)
        except SystemExit as e:
            code = e.code
    return Result(code or 0, out.getvalue(), cwd, args, time.perf_counter() - start)


class Runner:
    """Runs cases once each, in a fresh directory; a background lane for subprocess cases."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.results: dict[str, Result] = {}
        self.futures: dict[str, Future[Result]] = {}
        self.pool = ThreadPoolExecutor(max_workers=1)  # one lane: the file shares 2 cores
        self._run_dir: Path | None = None
        self.bin_dir = _wrapper_dir(base)
        self.env = _env(self.bin_dir)

    def finished_run(self) -> Path:
        """A small default run (``ebm-train`` + fast overrides) with its checkpoint: what the
        README's ``outputs/<date>/<time>`` stands for. Made once; callers copy it to change it."""
        if self._run_dir is None:
            run_dir = self.base / "finished" / "outputs" / "run"
            result = _in_process([*fast_argv([]), f"hydra.run.dir={run_dir}"], self.base)
            assert result.returncode == 0 and (run_dir / "checkpoint.pt").exists(), result.output
            self._run_dir = run_dir
        return self._run_dir

    def _cwd(self, case: Case) -> Path:
        cwd = self.base / re.sub(r"[^A-Za-z0-9]+", "_", case.id)[:60]
        cwd.mkdir(parents=True, exist_ok=True)
        return cwd

    def _args(self, case: Case, cwd: Path) -> list[str]:
        """The case's ``ebm-train`` arguments with its placeholders filled in."""
        run_dir = None
        if _needs_run(case):
            run_dir = self.finished_run()
            if any(a.startswith("resume=") for a in case.args):  # resume writes into it
                run_dir = shutil.copytree(run_dir, cwd / "outputs" / "resumed")
                if not any(a.startswith("trainer.steps=") for a in case.args):
                    # "continue a run": one that stopped after its last checkpoint, before it
                    # wrote metrics.json (a finished run has nothing to continue)
                    (run_dir / "metrics.json").unlink()
        return _substitute(case.args, cwd, run_dir)

    def _prepare(self, case: Case) -> Callable[[], Result]:
        """What runs the case. Everything that touches Hydra's process-wide state (composing,
        in-process runs) happens in this thread; a background case's callable only waits on a
        subprocess, which makes its own overrides (the ``ebm-train`` wrapper)."""
        cwd = self._cwd(case)
        if case.kind == "shell":
            return partial(_subprocess, ["bash", "-e", "-c", case.script], cwd, self.env)
        if case.kind == "bench":
            return partial(_subprocess, [sys.executable, str(ROOT / case.args[0]),
                                         *case.args[1:]], cwd, self.env, 120)
        if case.kind == "sweep":
            args = _substitute(case.args, cwd, None, self._sweep_dir(case))
            return partial(_sweep_cli, args, cwd)
        args = self._args(case, cwd)
        if case.background:
            return partial(_subprocess, [str(self.bin_dir / "ebm-train"), *args], cwd, self.env)
        return partial(_in_process, fast_argv(args), cwd)

    def _sweep_dir(self, case: Case) -> Path:
        """The sweep directory of the block's preceding ``-m`` command (run here if needed)."""
        sweeps = [c for c in CASES if c.id == case.after] or [c for c in CASES if c.multirun]
        source = self.result(sweeps[0])
        found = sorted((source.cwd / "outputs" / "multirun").glob("*/*"))
        assert found, f"{sweeps[0].id} left no sweep directory: {source.output[-2000:]}"
        return found[-1]

    def start(self, cases: list[Case]) -> None:
        """Start the background cases now (they do not wait for the in-process ones)."""
        if any(_needs_run(c) for c in cases):
            self.finished_run()
        for case in cases:
            if case.background and case.id not in self.futures:
                self.futures[case.id] = self.pool.submit(self._prepare(case))

    def result(self, case: Case) -> Result:
        if case.id not in self.results:
            if case.background:
                self.start([case])
                self.results[case.id] = self.futures[case.id].result()
            else:
                self.results[case.id] = self._prepare(case)()
        return self.results[case.id]


@pytest.fixture(scope="module")
def runner(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Runner]:
    run = Runner(tmp_path_factory.mktemp("readme"))
    selected = {item.callspec.params["case"].id for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")
                and "case" in item.callspec.params}
    run.start([c for c in CASES if c.id in selected and c.background])
    yield run
    run.pool.shutdown(wait=True, cancel_futures=True)


def _param(case: Case):
    marks = [pytest.mark.slow] if case.slow else []
    return pytest.param(case, id=case.id, marks=marks)


# In-process cases first, so that the background lane runs beside them.
ORDERED = sorted(CASES, key=lambda c: c.background)


def test_readme_has_the_commands_it_should() -> None:
    kinds = {c.kind for c in CASES}
    assert {"ebm", "skip"} <= kinds
    assert sum(c.kind == "ebm" for c in CASES) >= 10, [c.id for c in CASES]


@pytest.mark.parametrize("case", [_param(c) for c in ORDERED])
def test_readme_command_runs(case: Case, runner: Runner) -> None:
    if case.kind == "skip":
        pytest.skip(f"{case.id}: {case.reason}")
    result = runner.result(case)
    print(f"{case.id}: {result.seconds:.1f} s{' (background)' if case.background else ''}")
    assert result.returncode == 0, f"{result.argv}\n{result.output[-4000:]}"
    assert "Traceback" not in result.output, result.output[-4000:]
    if case.kind == "ebm" and not case.multirun and "--help" not in case.args and not any(
            a.startswith("--cfg") for a in result.argv):
        assert "ebm-train summary" in result.output, result.output[-2000:]
