"""One writer per run directory and per blend being built."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from trlm.locks import FileLock, LockHeld


def test_a_held_lock_refuses_a_second_holder_naming_the_first(tmp_path):
    lock = FileLock(tmp_path / ".lock", "stage sft")
    held_by_us = rf"in use \(stage sft\) by pid {os.getpid()} on {socket.gethostname()}"
    with lock.hold(), pytest.raises(LockHeld, match=held_by_us), FileLock(tmp_path / ".lock", "stage sft").hold():
        pass
    assert not (tmp_path / ".lock").exists()


def held_by(path, pid: int, host: str, **record) -> None:
    """A lock as another process left it: filelock's marker (pid, host) and trlm's record beside it."""
    path.write_text(f"{pid}\n{host}\n")
    if record:
        path.with_name(f"{path.name}.holder").write_text(json.dumps({"pid": pid, "host": host, **record}))


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    held_by(tmp_path / ".lock", int(dead.stdout), socket.gethostname(), since=0)
    with FileLock(tmp_path / ".lock", "x").hold():
        assert FileLock(tmp_path / ".lock", "x").holder()["pid"] == os.getpid()


def test_a_lock_held_on_another_host_is_trusted(tmp_path):
    held_by(tmp_path / ".lock", 1, "elsewhere", since=time.time())
    with pytest.raises(LockHeld, match="pid 1 on elsewhere"), FileLock(tmp_path / ".lock", "x").hold():
        pass


def test_a_holder_without_trlms_record_is_named_from_filelocks_marker(tmp_path):
    held_by(tmp_path / ".lock", 1, "elsewhere")
    with pytest.raises(LockHeld, match="pid 1 on elsewhere"), FileLock(tmp_path / ".lock", "x").hold():
        pass


@pytest.mark.parametrize(("restart_then", "restart_now", "taken_over"), [(0, 1, True), (1, 1, False)])
def test_a_lock_of_the_same_slurm_job_is_stale_only_from_before_a_requeue(
    tmp_path, monkeypatch, restart_then, restart_now, taken_over
):
    """The same job id held it: before a requeue (a lower restart count) that run is gone; in the same
    run it is another task of this job, on another node (a pid here says nothing about it)."""
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_RESTART_COUNT", str(restart_now))
    held_by(tmp_path / ".lock", 1, "n2", since=time.time(), slurm_job_id="42", slurm_restart=restart_then)
    if taken_over:
        with FileLock(tmp_path / ".lock", "x").hold():
            assert FileLock(tmp_path / ".lock", "x").holder()["slurm_restart"] == restart_now
    else:
        with pytest.raises(LockHeld, match="pid 1 on n2"), FileLock(tmp_path / ".lock", "x").hold():
            pass


def test_waiting_holders_take_turns(tmp_path):
    order: list[str] = []

    def worker(name: str) -> None:
        with FileLock(tmp_path / ".lock", name).hold(wait=True, poll_s=0.01):
            order.append(f"{name}+")
            time.sleep(0.05)
            order.append(f"{name}-")

    threads = [threading.Thread(target=worker, args=(name,)) for name in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert order in (["a+", "a-", "b+", "b-"], ["b+", "b-", "a+", "a-"])  # never interleaved


def test_a_lock_file_of_garbage_bytes_is_taken_for_one_being_written_then_stale(tmp_path):
    path = tmp_path / ".lock"
    path.write_bytes(b"\xff\xfe\x00 not json")
    assert FileLock(path, "x").holder() is None
    with FileLock(path, "x").hold():  # unchanged for a moment: not a writer's, a torn one
        assert FileLock(path, "x").holder()["pid"] == os.getpid()


def test_the_lock_stands_on_filelock(tmp_path):
    import filelock

    with FileLock(tmp_path / ".lock", "x").hold():
        assert filelock.SoftFileLock(str(tmp_path / ".lock"), is_singleton=False).is_lock_held_by_us
