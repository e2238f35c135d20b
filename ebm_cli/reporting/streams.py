"""Console streams that outlive their reader: a closed or broken stdout degrades the console
output only, never the run, its files or its exit status."""

from __future__ import annotations

import io
import os
from typing import Any


class SafeStream(io.TextIOBase):
    """stdout that survives its reader going away (``ebm-train | head -1``, ``>&-``): after the
    first failed write, console output is dropped; the run, its files and exit status are not."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.broken = stream is None

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                self.stream.write(text)
                return len(text)
            except (BrokenPipeError, OSError, ValueError):
                self._break()
        return len(text)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.stream.flush()
            except (BrokenPipeError, OSError, ValueError):
                self._break()

    def _break(self) -> None:
        self.broken = True
        try:  # the interpreter's own flush at exit must not fail either
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.close(devnull)
        except OSError:
            pass

    def isatty(self) -> bool:
        return not self.broken and bool(self.stream.isatty())

    def fileno(self) -> int:
        if self.broken:
            raise OSError("stdout is closed")
        return int(self.stream.fileno())
