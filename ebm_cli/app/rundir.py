"""Run directories: one writer each, unique names, leftovers of killed runs cleared.

- ``claim(base)``: a new directory ``base`` (or ``base.2``, ``base.3``, … when taken), made with an
  atomic ``mkdir``, so two identical commands started in the same second get two directories.
  Registered as the ``ebm_new_dir`` resolver (cached, so Hydra's sweep jobs see one value).
- ``lock(run_dir)``: an ``O_EXCL`` lock file holding ``pid host``; a second process on the same
  directory is refused; a lock whose process is gone (same host) is stale and taken over.
- ``holds_a_run(run_dir)``: a fresh run never writes into a directory that holds one, unless the
  user asks (``overwrite=true``), and then the old run's own files are removed first.
- ``discard_new(run_dir)``: a run refused at start-up leaves no directory behind — only one this
  process made (``claim``, or ``mark_new`` for a ``hydra.run.dir`` that did not exist), holding
  nothing but the run's own files; anything that existed before is never removed.
"""

from __future__ import annotations

import atexit
import errno
import os
import shutil
import socket
from pathlib import Path

from ebm_cli.app.config_check import ConfigError

LOCK_FILE = ".ebm-train.lock"
# The files a run writes (Hydra's and ours); ``overwrite=true`` removes these and nothing else.
RUN_FILES = ("checkpoint.pt", "metrics.json", "samples.npy", "data.npy", "samples.png",
             "energy.png", "energy_hist.png", "trace.png", "error.txt", "ebm-train.log", "cli.log")
LEFTOVERS = "checkpoint.pt.*.tmp"  # what checkpoint.save leaves when killed mid-write
RUN_GLOBS = ("events.out.tfevents.*", LEFTOVERS)
PROBE_BYTES = 1 << 20  # what the start-up probe writes: an already-full disk is caught up front

_held: set[Path] = set()
_claimed: dict[str, str] = {}
_new: dict[Path, list[Path]] = {}  # directories this process made -> the parents it made too
# Set by the command-line application for a single run: Hydra resolves hydra.run.dir in a sweep
# too (and never uses it there), and its RunMode is not set yet when it first resolves it.
claiming = False


def claim(base: str) -> str:
    """Make and return a new directory: ``base`` itself, else ``base.2``, ``base.3``, …
    (once per process and ``base``: Hydra resolves its output keys more than once)."""
    if base in _claimed:
        return _claimed[base]
    _claimed[base] = _claim(base)
    return _claimed[base]


def _missing_parents(path: Path) -> list[Path]:
    """The ancestors of ``path`` that do not exist yet, nearest first."""
    missing = []
    for parent in path.absolute().parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def _claim(base: str) -> str:
    path = Path(base)
    made_parents = _missing_parents(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for k in range(1, 10_000):
        candidate = path if k == 1 else path.with_name(f"{path.name}.{k}")
        try:
            candidate.mkdir()
            _new[candidate.resolve()] = made_parents
            return str(candidate)
        except FileExistsError:
            continue
    raise ConfigError(f"no free run directory name next to {base}")


def run_dir_of(resume: str | None, base: str) -> str:
    """``hydra.run.dir``: the resumed run's own directory, else — in the ``ebm-train`` process of
    a single run (``claiming``) — a newly claimed one, else ``base``."""
    if resume:
        return str(resume)
    return claim(base) if claiming else base


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def lock(run_dir: Path) -> None:
    """Take ``run_dir``'s lock for this process (re-entrant); refuse if another holds it."""
    run_dir = run_dir.resolve()
    if run_dir in _held:
        return
    path = run_dir / LOCK_FILE
    me = f"{os.getpid()} {socket.gethostname()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid_text, _, host = path.read_text().strip().partition(" ")
                pid = int(pid_text)
            except (OSError, ValueError):
                pid, host = -1, ""
            if host == socket.gethostname() and (pid == os.getpid() or not _alive(pid)):
                path.unlink(missing_ok=True)  # our own, or stale: its process is gone
                continue
            raise ConfigError(
                f"{run_dir} is in use by process {pid} on {host or 'an unknown host'} (lock file "
                f"{path}); wait for it to finish, or delete the lock file if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as f:
            f.write(me + "\n")
        _held.add(run_dir)
        return
    raise ConfigError(f"cannot take the lock {path}")


def unlock(run_dir: Path) -> None:
    run_dir = run_dir.resolve()
    if run_dir in _held:
        _held.discard(run_dir)
        (run_dir / LOCK_FILE).unlink(missing_ok=True)


@atexit.register
def unlock_all() -> None:
    for run_dir in list(_held):
        unlock(run_dir)


def holds_a_run(run_dir: Path) -> bool:
    """Does ``run_dir`` hold (part of) an earlier run?"""
    return run_dir.is_dir() and (
        (run_dir / ".hydra").exists() or (run_dir / "checkpoint.pt").exists()
        or (run_dir / "metrics.json").exists() or any(run_dir.glob("events.out.tfevents.*")))


def clear_run(run_dir: Path) -> None:
    """``overwrite=true``: remove the earlier run's own files (nothing else in the directory)."""
    for name in RUN_FILES:
        target = run_dir / name
        if target.is_file() or target.is_symlink():  # a directory of that name is left alone
            target.unlink()
    for pattern in RUN_GLOBS:
        for target in run_dir.glob(pattern):
            target.unlink(missing_ok=True)
    shutil.rmtree(run_dir / ".hydra", ignore_errors=True)


def mark_new(run_dir: Path) -> None:
    """``run_dir`` does not exist yet and this process's run will make it (a literal
    ``hydra.run.dir``): a refused start may remove it again."""
    if not run_dir.exists():
        _new[run_dir.resolve()] = _missing_parents(run_dir)


def discard_new(run_dir: Path) -> bool:
    """Remove ``run_dir`` after a refused start, if this process made it and it holds only the
    run's own files (RUN_FILES, RUN_GLOBS, .hydra, the lock); then the empty parents it made.
    Returns whether it is gone; a directory with anything else in it is left as it is."""
    run_dir = run_dir.resolve()
    if run_dir not in _new or not run_dir.is_dir():
        return False
    own = set(RUN_FILES) | {LOCK_FILE, ".hydra"}
    for entry in run_dir.iterdir():
        if entry.name not in own and not any(entry.match(g) for g in RUN_GLOBS):
            return False
    clear_run(run_dir)
    unlock(run_dir)
    try:
        run_dir.rmdir()
    except OSError:
        return False
    for parent in _new.pop(run_dir):
        try:
            parent.rmdir()  # only when empty
        except OSError:
            break
    return True


def remove_leftovers(run_dir: Path) -> list[Path]:
    """Temporary checkpoint files of a save that a kill interrupted; returns what was removed."""
    gone = sorted(run_dir.glob(LEFTOVERS))
    for path in gone:
        path.unlink(missing_ok=True)
    return gone


def probe(path: Path) -> None:
    """Make ``path`` and write (and fsync) real bytes there: an unwritable location or a full
    disk is refused before any work, naming the path and the reason."""
    test = path / f".ebm-write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(test, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise ConfigError(f"cannot write the output directory {path}: {describe(e)}") from None
    finally:
        try:
            test.unlink(missing_ok=True)
        except OSError:
            pass


def describe(e: OSError) -> str:
    """``No space left on device (ENOSPC)``: the reason and its errno name."""
    name = errno.errorcode.get(e.errno or 0, "")
    return f"{e.strerror or e}" + (f" ({name})" if name else "")
