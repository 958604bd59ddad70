"""What the command line draws for a person: a progress bar while a campaign exports, aligned tables.

Standard library only. The bar listens to the export's own progress messages ("N of M rows written",
logged by the asset every few seconds while it writes) through the command's Dagster logger, so the
command needs no hook into the export itself.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TextIO

from exports_pipeline.core.text import char_width, shorten, text_width

PROGRESS_MESSAGE = re.compile(r"([\d,]+) of ([\d,]+) rows written")
BAR_CELLS = 24
ERASE_LINE = "\r\x1b[K"
DEFAULT_COLUMNS = 80  # a terminal that does not tell its size


class ProgressBar(logging.Handler):
    """One line on a terminal while a campaign exports: its name, a bar once the export reports rows
    written (before that, "exporting"), and the time so far. Redrawn every second and at each progress
    message; erased when the campaign is done, so that only the summaries stay."""

    def __init__(self, stream: TextIO, tick_seconds: float = 1.0):
        super().__init__(logging.INFO)
        self.stream, self.tick_seconds = stream, tick_seconds
        self.label, self.done, self.total, self.started = "", 0, 0, 0.0
        self._stopped = threading.Event()

    @contextmanager
    def showing(self, label: str) -> Iterator[None]:
        self.label, self.done, self.total, self.started = label, 0, 0, time.monotonic()
        self._stopped.clear()
        ticker = threading.Thread(target=self._tick, name="progress-bar", daemon=True)
        ticker.start()
        try:
            yield
        finally:
            self._stopped.set()
            ticker.join()
            with self.lock:
                self.stream.write(ERASE_LINE)
                self.stream.flush()

    def _tick(self) -> None:
        while not self._stopped.wait(self.tick_seconds):
            with self.lock:
                self._draw()

    def emit(self, record: logging.LogRecord) -> None:
        """Called by logging with the handler's lock held."""
        match = PROGRESS_MESSAGE.search(record.getMessage())
        if match:
            self.done, self.total = (int(group.replace(",", "")) for group in match.groups())
            self._draw()

    def _draw(self) -> None:
        state = "exporting"
        if self.total:
            filled = BAR_CELLS * self.done // self.total
            state = (
                f"[{'#' * filled}{'-' * (BAR_CELLS - filled)}] {self.done * 100 // self.total:3d}%  "
                f"{self.done:,} of {self.total:,} rows"
            )
        tail = f"  {state}  {time.monotonic() - self.started:.0f} s"
        room = self._columns() - len(tail) - 1  # a full line would wrap, which \r cannot undo
        self.stream.write(ERASE_LINE + shorten(self.label, max(room, 1), char_width) + tail)
        self.stream.flush()

    def _columns(self) -> int:
        try:
            return os.get_terminal_size(self.stream.fileno()).columns or DEFAULT_COLUMNS
        except OSError:
            return DEFAULT_COLUMNS


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: frozenset[int] = frozenset()) -> list[str]:
    """Lines of aligned columns, measured in terminal columns so that CJK and emoji names line up;
    the columns numbered in right (numbers) are aligned right, the last column is not padded."""
    widths = [max(text_width(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def pad(cell: str, index: int) -> str:
        room = " " * (widths[index] - text_width(cell))
        return room + cell if index in right else cell + room

    def line(cells: Sequence[str]) -> str:
        return "  ".join([*(pad(cell, i) for i, cell in enumerate(cells[:-1])), cells[-1]]).rstrip()

    return [line(headers), *map(line, rows)]
