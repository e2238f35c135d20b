"""The ``ebm-train`` console script: signals are caught from the first instant.

Importing torch and Hydra takes seconds; a SIGINT or SIGTERM in that time (or anywhere outside
the training loop, which defers them to a step boundary) raises :class:`Signalled`, which the
application turns into one ``error:`` line and exit status 128 + signal number.
"""

from __future__ import annotations

import signal
import sys


class Signalled(KeyboardInterrupt):
    """SIGINT or SIGTERM outside the training loop (start-up, evaluation, a sweep)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_signalled(signum: int, _frame: object) -> None:
    raise Signalled(signum)


def main() -> None:
    """Install the handlers, then import and run the application."""
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, raise_signalled)
    try:
        from ebm_cli.app.cli import main as run
    except Signalled as e:
        sys.stderr.write(f"error: stopped by {e} while starting; nothing was written\n")
        sys.exit(128 + e.signum)
    run()


if __name__ == "__main__":
    main()
