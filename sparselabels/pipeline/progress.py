"""Progress of a long labeling run: a one-line bar on a terminal, periodic log lines otherwise.

Runs last days and usually write to log files, so the non-terminal form prints a complete, timestamped line
every ``interval`` seconds (and one at the end) instead of redrawing. Rates count only the tokens processed
by this process, so a resumed run does not report the resumed part as instant.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

_BAR_WIDTH = 24
_REDRAW_S = 0.2


def format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # NaN or inf: unknown
        return "?"
    seconds = round(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {text}" if days else text


def format_count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


class Progress:
    """Track tokens done out of ``total``; ``update(n)`` after each batch, ``close()`` at the end.

    ``total=None``: not known in advance (a streamed source): counts and rate, no bar or ETA. ``enabled=False``
    prints nothing. ``tty=None`` asks the stream whether it is a terminal. Leaving the ``with`` block on an
    exception (Ctrl-C) ends the line cleanly with where the run stopped, instead of a finished-looking bar.
    """

    def __init__(self, total: int | None, *, done: int = 0, label: str = "generate", stream: TextIO | None = None,
                 enabled: bool = True, interval: float = 60.0, tty: bool | None = None,
                 clock=time.monotonic) -> None:
        self.total = None if total is None else int(total)
        self.done = int(done)
        self._start_done = self.done
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interval = float(interval)
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self._clock = clock
        self._start = clock()
        self._last_print = self._start
        self._closed = False

    # -- numbers -------------------------------------------------------------------------------------------
    @property
    def elapsed(self) -> float:
        return self._clock() - self._start

    @property
    def rate(self) -> float:
        """Tokens per second processed by this run (0 before the first update)."""
        elapsed = self.elapsed
        return (self.done - self._start_done) / elapsed if elapsed > 0 else 0.0

    @property
    def eta(self) -> float:
        if self.total is None:
            return float("nan")
        rate = self.rate
        remaining = max(self.total - self.done, 0)
        if remaining == 0:
            return 0.0
        return remaining / rate if rate > 0 else float("inf")

    def line(self) -> str:
        """The status text (without bar): done/total tokens, percent, tokens/s and ETA."""
        if self.total is None:
            return f"{format_count(self.done)} tokens, {format_count(self.rate)} tok/s"
        pct = 100.0 * self.done / self.total if self.total else 100.0
        return (f"{format_count(self.done)}/{format_count(self.total)} tokens ({pct:.1f}%), "
                f"{format_count(self.rate)} tok/s, ETA {format_duration(self.eta)}")

    def bar(self) -> str:
        if self.total is None:
            return "[stream]"
        frac = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = int(frac * _BAR_WIDTH)
        return "[" + "#" * filled + "-" * (_BAR_WIDTH - filled) + "]"

    # -- output --------------------------------------------------------------------------------------------
    def update(self, tokens: int) -> None:
        self.done += int(tokens)
        if not self.enabled:
            return
        now = self._clock()
        if self.tty:
            if now - self._last_print >= _REDRAW_S or (self.total is not None and self.done >= self.total):
                self._last_print = now
                self.stream.write(f"\r{self.label} {self.bar()} {self.line()}\x1b[K")
                self.stream.flush()
        elif now - self._last_print >= self.interval:
            self._last_print = now
            self._log()

    def _log(self, note: str = "") -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self.stream.write(f"{stamp} {self.label}: {self.line()}{note}\n")
        self.stream.flush()

    def close(self, *, stopped: bool = False) -> None:
        """Print the final state (a newline after the bar, or a last log line); ``stopped``: the run did not
        finish, and the line says so."""
        if self._closed:
            return
        self._closed = True
        if not self.enabled:
            return
        end = f", stopped after {format_duration(self.elapsed)}" if stopped else f", {format_duration(self.elapsed)}"
        if self.tty:
            # from the line's start, erasing what the terminal echoed into it (^C): one whole line, then a newline
            self.stream.write(f"\r\x1b[K{self.label} {self.bar()} {self.line()}{end}\n")
            self.stream.flush()
        else:
            self._log(" (stopped)" if stopped else "")

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(stopped=exc_type is not None)
