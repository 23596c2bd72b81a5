"""Writing files so that a reader never sees half of one: a temporary name, then a rename."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_with(path, lambda staging: staging.write_text(text, encoding="utf-8"))


def atomic_write_with(path: Path, write: Callable[[Path], object]) -> None:
    """`write(staging_path)`, then the staging file renamed to `path`."""
    staging = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    write(staging)
    staging.replace(path)


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yields a staging folder; on success it replaces `target` whole, on failure it is removed."""
    staging = target.with_name(f"{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed writer
    staging.mkdir(parents=True)
    try:
        yield staging
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_empty_dirs(path: Path, stop: Path) -> None:
    """Removes `path` and its parents up to (not including) `stop` while they are empty."""
    path, stop = path.resolve(), stop.resolve()
    while path != stop and stop in path.parents:
        try:
            path.rmdir()
        except OSError:  # not empty, or gone
            return
        path = path.parent
