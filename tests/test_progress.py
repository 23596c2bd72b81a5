"""Progress on long work: a bar with a total and an ETA on a terminal, plain lines in a log."""

from __future__ import annotations

import io
import time

from trlm.progress import progress, progress_counter


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_in_a_log_it_says_done_of_total_rate_and_eta_every_few_seconds():
    log = io.StringIO()
    for _ in progress(range(4), "preparing blend x", unit="row", stream=log, every_s=0.0):
        time.sleep(0.01)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("preparing blend x: 1/4 rows (") and "rows/s, ETA 0:0" in lines[0]
    assert lines[-1].startswith("preparing blend x: 4 rows in 0:00") and "\r" not in log.getvalue()


def test_short_work_in_a_log_says_nothing():
    log = io.StringIO()
    assert list(progress(range(3), "quick", stream=log)) == [0, 1, 2] and log.getvalue() == ""


def test_on_a_terminal_it_draws_a_bar_with_the_total_learnt_on_the_way():
    terminal = Terminal()
    with progress_counter("downloading model", unit="B", stream=terminal) as advance:
        advance(512 * 1024, total=2 * 1024 * 1024)
        advance(512 * 1024)
    drawn = terminal.getvalue()
    assert "downloading model" in drawn and "%|" in drawn and "1.00M/2.00M" in drawn  # tqdm's bar, with its total
