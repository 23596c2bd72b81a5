"""Writing files so that a reader never sees half of one, and what trlm says when the disk is full.

A file is written under a temporary name, flushed to the disk (fsync), then renamed over its final
name, and the folder's entry flushed too: after a crash or a power loss the file is the old one or
the new one, never a torn or empty one. A write that fails for want of space (ENOSPC, a quota) —
also as torch's and safetensors' own errors say it — becomes one line naming the folder and the
space there (`disk_space`).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from trlm.errors import TrlmError

# How a full disk reads in the errors of the writers trlm uses: the OS, torch.save, safetensors.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
ALMOST_FULL = 1 << 20  # bytes free below which a failed write is taken for the full disk it likely met
DISK_FULL_SAID = ("No space left on device", "os error 28", "StorageFull", "file write failed", "Disk quota exceeded")


def fsync_path(path: Path) -> None:
    """Flushes a file (or a folder's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_with(path, lambda staging: staging.write_text(text, encoding="utf-8"))


def atomic_write_with(path: Path, write: Callable[[Path], object]) -> None:
    """`write(staging_path)`, flushed to the disk, then renamed to `path` (and the rename flushed)."""
    staging = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    try:
        write(staging)
        fsync_path(staging)
        staging.replace(path)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def sha256_of(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yields a staging folder; on success its files are flushed and it replaces `target` whole, on
    failure it is removed."""
    staging = target.with_name(f"{target.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed writer
    staging.mkdir(parents=True)
    try:
        yield staging
        for file in staging.rglob("*"):
            fsync_path(file)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
        fsync_path(target.parent)
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


def is_disk_full(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    return any(said in str(error) for said in DISK_FULL_SAID)


def free_space(folder: Path) -> int:
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    return shutil.disk_usage(existing).free


def mib(size: float) -> str:
    return f"{size / 2**20:,.0f} MiB"


@contextmanager
def disk_space(folder: Path, doing: str, needed: int | None = None) -> Iterator[None]:
    """A full disk while `doing` becomes one line naming the folder, its free space and what is needed."""
    try:
        yield
    except Exception as error:
        # A writer's own words when it can (an OS error, torch's, safetensors'), else the disk itself: torch's
        # zip writer, cut short, says only "unexpected pos" — an error while writing with no room left.
        if not is_disk_full(error) and free_space(folder) >= ALMOST_FULL:
            raise
        wanted = f"; it needs about {mib(needed)} more" if needed else ""
        raise TrlmError(
            f"the disk is full: {doing} in {folder} stopped with {mib(free_space(folder))} free{wanted}. Free "
            f"space there (or set paths.output_root to a larger disk) and run the same command again: it resumes"
        ) from None
