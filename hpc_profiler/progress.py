"""Progress of a waiting driver: a bar on a terminal, steady lines in a log.

Under Slurm, ``nohup`` or a CI runner the driver's output goes to a file, where
a tqdm bar is one line rewritten with carriage returns (or nothing, when
disabled). :class:`Progress` prints instead, every ``interval_s`` seconds while
the count moves, one line a person or ``tail -f`` can read::

    extract: 40/192 sites (21%), 1.23 sites/s, ETA 2m04s

and a last line when the stage ends. On a terminal it drives a tqdm bar.
The count is absolute (``update_to``), read from the tasks' per-site work
logs (:func:`hpc_profiler.workflow.records.batch_progress`), so it moves site by
site, not task by task.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def format_eta(seconds: Optional[float]) -> str:
    """``2m04s``, ``1h05m``, ``45s``; ``-`` when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "-"
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


class Progress:
    """Counts of one stage towards ``total``, shown as a bar (terminal) or as log lines.

    Parameters
    ----------
    stage : str
        Name at the start of each line (``extract``).
    total : int
    unit : str
        ``site`` or ``plate`` (pluralised with an ``s``).
    interval_s : float
        Seconds between log lines (non-terminal only); a line is printed only
        when the count moved since the last one, plus a final line.
    stream : file, optional
        Default ``sys.stderr``.
    tty : bool, optional
        Force bar (True) or lines (False); default ``stream.isatty()``.
    clock : callable, optional
        Time source (tests).
    """

    def __init__(self, stage: str, total: int, unit: str = "site", *, interval_s: float = 30.0,
                 stream: Optional[TextIO] = None, tty: Optional[bool] = None, clock=time.time):
        self.stage, self.total, self.unit = stage, int(total), unit
        self.interval_s = float(interval_s)
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.t0 = clock()
        self.n = 0
        self._printed_n = 0
        self._next_line = self.t0 + self.interval_s
        is_tty = bool(getattr(self.stream, "isatty", lambda: False)()) if tty is None else tty
        self._bar = None
        if is_tty:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, unit=unit, desc=stage, file=self.stream)

    def line(self) -> str:
        """The current state as one line."""
        elapsed = max(self.clock() - self.t0, 1e-9)
        rate = self.n / elapsed
        eta = (self.total - self.n) / rate if rate > 0 else None
        pct = 100.0 * self.n / self.total if self.total else 100.0
        return (f"{self.stage}: {self.n}/{self.total} {self.unit}s ({pct:.0f}%), "
                f"{rate:.2f} {self.unit}s/s, ETA {format_eta(eta)}")

    def update_to(self, n: int) -> None:
        """Set the count (it never goes back); print or redraw as due."""
        n = min(max(int(n), self.n), self.total) if self.total else max(int(n), self.n)
        if self._bar is not None:
            self._bar.update(n - self.n)
            self.n = n
            return
        self.n = n
        now = self.clock()
        if now >= self._next_line and self.n != self._printed_n:
            print(self.line(), file=self.stream, flush=True)
            self._printed_n = self.n
            self._next_line = now + self.interval_s

    def close(self) -> None:
        """The last line (or close the bar)."""
        if self._bar is not None:
            self._bar.close()
            return
        if self.n != self._printed_n or self.n == 0:
            print(self.line(), file=self.stream, flush=True)
            self._printed_n = self.n
