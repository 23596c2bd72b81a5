"""One writer at a time, on filelock's soft lock — plus the one rule trlm needs that filelock cannot know.

`filelock.SoftFileLock` takes a lock by creating its marker file exclusively (atomic on local and
network filesystems alike, so two processes, or two Slurm jobs on different nodes, never both hold
it), records its holder (pid, host, start) in it, and takes over a marker whose holder was on this
host and is gone. A holder on another host is trusted until removed by hand: its pid means nothing
here. trlm adds a record beside the marker (`<lock>.holder`: what the holder is doing, since when,
its Slurm job and restart count) for two things: messages that say who holds a run and why, and the
Slurm rule — a lock held by an earlier run of the same Slurm job is stale (a requeued job keeps its
id, may land on another node, and its earlier run is gone), while one held by another task of the
same run is not.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import filelock

from trlm.errors import TrlmError
from trlm.fsutil import atomic_write_text

log = logging.getLogger(__name__)
WAIT_REPORT_S = 30.0
MALFORMED_GRACE_S = 3.0  # filelock reclaims a marker it cannot read once it has stayed so for ~2 s


def slurm_restart() -> int:
    """How many times Slurm requeued this job (0 in its first run, or outside Slurm)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0"))


class LockHeld(TrlmError):
    pass


class FileLock:
    def __init__(self, path: Path, purpose: str) -> None:
        self.path, self.purpose = path, purpose
        self.record = path.with_name(f"{path.name}.holder")

    def holder(self) -> dict | None:
        """Who holds (or last held) the lock: trlm's record beside the marker, else what filelock's marker says."""
        try:
            holder = json.loads(self.record.read_bytes().decode("utf-8"))
        except (OSError, ValueError):  # missing, cut short, or not UTF-8
            holder = None
        if isinstance(holder, dict):
            return holder
        marker = self.marker_holder()
        return {"pid": marker[0], "host": marker[1]} if marker else None

    def marker_holder(self) -> tuple[int, str] | None:
        """(pid, host) of filelock's marker: its `pid=` / `host=` record, or the older two-line one."""
        try:
            lines = self.path.read_bytes().decode("utf-8").splitlines()
        except (OSError, ValueError):
            return None
        fields = dict(line.split("=", 1) for line in lines if "=" in line)
        if "pid" in fields and "host" in fields:
            return int(fields["pid"]), fields["host"]
        if len(lines) >= 2 and lines[0].isdigit():
            return int(lines[0]), lines[1]
        return None

    def held_before_requeue(self) -> bool:
        """The lock's holder was this Slurm job before it was requeued: that run is gone, whatever its host."""
        job, holder = os.environ.get("SLURM_JOB_ID"), self.holder() or {}
        return bool(job) and holder.get("slurm_job_id") == job and holder.get("slurm_restart", 0) < slurm_restart()

    def describe_holder(self) -> str:
        holder = self.holder() or {}
        since = holder.get("since")
        age = f", for {time.time() - since:.0f} s" if since else ""
        return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{age}"

    def try_acquire(self, lock: filelock.BaseFileLock) -> bool:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            return False
        return True

    @contextmanager
    def hold(self, wait: bool = False, poll_s: float = 0.5) -> Iterator[None]:
        """Holds the lock for the block; `wait=False` raises `LockHeld` naming the holder at once."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.SoftFileLock(str(self.path), is_singleton=False)
        if self.path.exists() and self.held_before_requeue():
            log.warning("taking over %s, held by this Slurm job before its requeue (%s)", self.path,
                        self.describe_holder())  # fmt: skip
            lock.break_lock()
        started = last_report = time.monotonic()
        while not self.try_acquire(lock):
            unreadable = self.path.exists() and self.marker_holder() is None
            if not wait and not (unreadable and time.monotonic() - started < MALFORMED_GRACE_S):
                raise LockHeld(
                    f"{self.path.parent} is in use ({self.purpose}) by {self.describe_holder()}: wait for it "
                    f"to finish, or, if that process is gone, delete {self.path}"
                )
            if time.monotonic() - last_report > WAIT_REPORT_S:
                log.info("waiting for %s (%s, held by %s) for %.0f s", self.path, self.purpose,
                         self.describe_holder(), time.monotonic() - started)  # fmt: skip
                last_report = time.monotonic()
            time.sleep(poll_s if wait else min(poll_s, 0.2))
        record = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "for": self.purpose,
                  "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "slurm_restart": slurm_restart()}  # fmt: skip
        try:
            atomic_write_text(self.record, json.dumps(record))
            yield
        finally:
            self.record.unlink(missing_ok=True)
            lock.release()
