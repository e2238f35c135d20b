"""The ``ebm-train`` console script: signals are caught from the first instant.

Importing torch and Hydra takes seconds; a SIGINT or SIGTERM in that time (or anywhere outside
the training loop, which defers them to a step boundary) raises :class:`Signalled`, which the
application turns into one ``error:`` line and exit status 128 + signal number.
"""

from __future__ import annotations

import signal
import sys
from importlib import metadata


class Signalled(KeyboardInterrupt):
    """SIGINT or SIGTERM outside the training loop (start-up, evaluation, a sweep)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_signalled(signum: int, _frame: object) -> None:
    raise Signalled(signum)


def version_line() -> str:
    """``ebm-cli 0.1.0 (hydra-core 1.3.2, torch 2.13.0)``, from the installed packages'
    metadata (no import of torch or Hydra)."""
    def of(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"
    return f"ebm-cli {of('ebm-cli')} (hydra-core {of('hydra-core')}, torch {of('torch')})"


def main() -> None:
    """Install the handlers, then import and run the application (``--version``: print the
    version line and exit 0, before anything is imported)."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, raise_signalled)
    if "--version" in sys.argv[1:]:
        print(version_line())
        sys.exit(0)
    try:
        from ebm_cli.app.cli import main as run
    except Signalled as e:
        sys.stderr.write(f"error: stopped by {e} while starting; nothing was written\n")
        sys.exit(128 + e.signum)
    run()


if __name__ == "__main__":
    main()
