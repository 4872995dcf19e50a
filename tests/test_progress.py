"""Progress of a waiting driver (issue 18): steady lines when the output is a log."""
from __future__ import annotations

import io

from hpc_profiler.progress import Progress, format_eta


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def test_lines_at_the_interval_only_when_the_count_moves_and_a_last_line():
    out, clock = io.StringIO(), Clock()
    p = Progress("extract", 100, "site", interval_s=10, stream=out, tty=False, clock=clock)
    clock.t += 5
    p.update_to(10)  # before the interval: nothing
    assert out.getvalue() == ""
    clock.t += 5
    p.update_to(20)  # 20 sites in 10 s: 2 sites/s, 80 left: 40 s
    assert out.getvalue() == "extract: 20/100 sites (20%), 2.00 sites/s, ETA 40s\n"
    clock.t += 20
    p.update_to(20)  # no movement: no line
    p.update_to(15)  # never goes back
    assert out.getvalue().count("\n") == 1 and p.n == 20
    clock.t += 10  # 40 s in all
    p.update_to(100)
    p.close()  # already printed at 100: no duplicate
    lines = out.getvalue().splitlines()
    assert lines[-1] == "extract: 100/100 sites (100%), 2.50 sites/s, ETA 0s"
    assert len(lines) == 2


def test_close_prints_the_final_state_and_eta_formats():
    out, clock = io.StringIO(), Clock()
    p = Progress("illum", 4, "plate", interval_s=60, stream=out, tty=False, clock=clock)
    clock.t += 2
    p.update_to(3)
    p.close()
    assert out.getvalue() == "illum: 3/4 plates (75%), 1.50 plates/s, ETA 1s\n"
    assert [format_eta(x) for x in (None, 45, 124, 3900)] == ["-", "45s", "2m04s", "1h05m"]
