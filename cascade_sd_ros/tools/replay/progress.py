"""A one-line progress bar for the replay: bag time, rounds opened and final, wall speed.

On a terminal the line redraws in place (at most ``min_interval_s`` apart); into a pipe or a log
it prints a plain line every ``log_interval_s`` so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class ProgressState:
    bag_s: float  # [s] bag time published so far, from the first message
    total_s: float  # [s] bag duration
    rounds_opened: int
    rounds_final: int
    wall_s: float  # [s] since the replay started
    held: bool = False  # fast mode: waiting on the pipeline


def render(state: ProgressState, width: int = 24) -> str:
    """The bar as text, e.g. ``[#####-------] 1.00/2.08 s  rounds 3/2 final  0.9x``."""
    frac = 1.0 if state.total_s <= 0 else min(max(state.bag_s / state.total_s, 0.0), 1.0)
    filled = int(round(frac * width))
    speed = state.bag_s / state.wall_s if state.wall_s > 0 else 0.0
    held = "  (waiting on the cascade)" if state.held else ""
    return (
        f"[{'#' * filled}{'-' * (width - filled)}] {state.bag_s:6.2f}/{state.total_s:.2f} s bag  "
        f"rounds {state.rounds_opened} opened, {state.rounds_final} final  {speed:4.1f}x{held}"
    )


class ProgressBar:
    """Writes :func:`render` lines to a stream, throttled."""

    def __init__(
        self,
        stream: TextIO | None = None,
        min_interval_s: float = 0.1,
        log_interval_s: float = 2.0,
        enabled: bool = True,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._tty = bool(getattr(self._stream, "isatty", lambda: False)())
        self._interval = min_interval_s if self._tty else log_interval_s
        self._enabled = enabled
        self._last = float("-inf")
        self._last_line = ""

    def update(self, state: ProgressState, force: bool = False) -> None:
        if not self._enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self._interval:
            return
        self._last = now
        line = render(state)
        if self._tty:
            pad = max(0, len(self._last_line) - len(line))
            self._stream.write("\r" + line + " " * pad)
        else:
            self._stream.write(line + "\n")
        self._last_line = line
        self._stream.flush()

    def close(self, state: ProgressState) -> None:
        """Final line, always written, ending the redrawn line."""
        if not self._enabled:
            return
        self.update(state, force=True)
        if self._tty:
            self._stream.write("\n")
            self._stream.flush()
