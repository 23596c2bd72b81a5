"""One writer at a time: a lock file that names its holder (host, pid) and is taken over when stale.

`O_CREAT | O_EXCL` is atomic on local and network filesystems alike, so two processes (or two
Slurm jobs on different nodes) never both hold a lock. A lock whose holder was on this host and
is no longer alive is stale and taken over, and so is one held by an earlier run of the same Slurm
job (a requeued job keeps its id, and may land on another node); any other holder on another host
is trusted until it is removed by hand (its pid means nothing here), and the message says how.
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

from trlm.errors import TrlmError

log = logging.getLogger(__name__)
WAIT_REPORT_S = 30.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def slurm_restart() -> int:
    """How many times Slurm requeued this job (0 in its first run, or outside Slurm)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0"))


class LockHeld(TrlmError):
    pass


class FileLock:
    def __init__(self, path: Path, purpose: str) -> None:
        self.path, self.purpose = path, purpose

    def holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_bytes().decode("utf-8"))
        except (OSError, ValueError):  # missing, cut short, or not UTF-8
            return None
        return holder if isinstance(holder, dict) else None

    def _stale(self, holder: dict | None) -> bool:
        if holder is None:  # being written this instant, or cut short: give its writer a moment
            try:
                return time.time() - self.path.stat().st_mtime > 10
            except FileNotFoundError:
                return True
        job = os.environ.get("SLURM_JOB_ID")
        if job and holder.get("slurm_job_id") == job:  # this job's earlier run, before its requeue,
            return holder.get("slurm_restart", 0) < slurm_restart()  # not another task of this run
        return holder.get("host") == socket.gethostname() and not _alive(int(holder.get("pid", -1)))

    def _try_acquire(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = self.holder()
            if self._stale(holder):
                log.warning("taking over a stale lock %s (held by %s)", self.path, holder)
                self.path.unlink(missing_ok=True)
                return self._try_acquire()
            return False
        with os.fdopen(fd, "w") as handle:
            holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(), "for": self.purpose,
                      "slurm_job_id": os.environ.get("SLURM_JOB_ID"), "slurm_restart": slurm_restart()}  # fmt: skip
            json.dump(holder, handle)
        return True

    def describe_holder(self) -> str:
        holder = self.holder() or {}
        since = holder.get("since")
        age = f", for {time.time() - since:.0f} s" if since else ""
        return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{age}"

    @contextmanager
    def hold(self, wait: bool = False, poll_s: float = 0.5) -> Iterator[None]:
        """Holds the lock for the block; `wait=False` raises `LockHeld` naming the holder at once."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        waited_since = last_report = time.monotonic()
        while not self._try_acquire():
            if not wait:
                raise LockHeld(
                    f"{self.path.parent} is in use ({self.purpose}) by {self.describe_holder()}: wait for it "
                    f"to finish, or, if that process is gone, delete {self.path}"
                )
            if time.monotonic() - last_report > WAIT_REPORT_S:
                log.info("waiting for %s (%s, held by %s) for %.0f s", self.path, self.purpose,
                         self.describe_holder(), time.monotonic() - waited_since)  # fmt: skip
                last_report = time.monotonic()
            time.sleep(poll_s)
        try:
            yield
        finally:
            self.path.unlink(missing_ok=True)
