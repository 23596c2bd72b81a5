"""Is a trial in flight still alive? The sweeper beats for each trial it runs; a silent trial is run again.

On an RDB storage the beat is Optuna's own (`record_heartbeat`; `fail_stale_trials` fails a trial silent
for the grace period and `RetryHeartbeatStaleTrialCallback` queues its re-run under a new number). Optuna
keeps heartbeats in RDB storage only, so on a journal the beat is a lease: the trial's `lease` user
attribute, the time of the last beat. A trial this host started whose sweeper process is gone is dead at
once; one another host started is dead when its lease is older than the grace period (a trial from a
sweeper before leases, with none, is left to its owner as before).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

log = logging.getLogger(__name__)
LEASE, WORKER = "lease", "worker"


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def owner_alive(tag: str | None) -> bool | None:
    """Whether the sweeper that started a trial is alive: known on this host, None (cannot tell) on another."""
    host, _, pid = (tag or ":").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lease_expired(user_attrs: dict[str, Any], grace: float, now: float | None = None) -> bool:
    """A journal trial's liveness: its owner on this host is gone, or its lease is older than `grace`."""
    alive = owner_alive(user_attrs.get(WORKER))
    if alive is not None:
        return not alive
    lease = user_attrs.get(LEASE)
    return lease is not None and (time.time() if now is None else now) - float(lease) > grace


class Heartbeats:
    """A daemon thread beating every `interval` s for each trial registered (by storage trial id)."""

    def __init__(self, storage: Any, interval: float, rdb: bool) -> None:
        self.storage, self.interval, self.rdb = storage, interval, rdb
        self.trials: set[int] = set()
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.run, name="trial-heartbeats", daemon=True)
        self.thread.start()

    def add(self, trial_id: int) -> None:
        with self.lock:
            self.trials.add(trial_id)
        self.beat(trial_id)  # at once: a trial with no beat yet is never found silent

    def remove(self, trial_id: int) -> None:
        with self.lock:
            self.trials.discard(trial_id)

    def beat(self, trial_id: int) -> None:
        import optuna

        try:
            if self.rdb:
                self.storage.record_heartbeat(trial_id)
            else:
                self.storage.set_trial_user_attr(trial_id, LEASE, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            self.remove(trial_id)
        except Exception as error:  # a database blip must not end the sweep: the next beat retries
            log.warning("heartbeat of trial id %d not recorded: %s", trial_id, error)

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            with self.lock:
                trials = sorted(self.trials)
            for trial_id in trials:
                self.beat(trial_id)

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=self.interval + 5)
