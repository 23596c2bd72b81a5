"""Atomic writes, and a full disk said in one line (simulated here; for real on a small tmpfs where allowed)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import pytest

from tests.helpers import QUICK, assert_one_line_refusal
from trlm.errors import TrlmError
from trlm.fsutil import atomic_write_text, disk_space
from trlm.paths import PROJECT_ROOT


@pytest.mark.parametrize(
    "error",
    [OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "Disk quota exceeded"),
     RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/3: "
                  "file write failed"),
     Exception("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: ... })")],
    ids=["ENOSPC", "EDQUOT", "torch.save", "safetensors"],
)  # fmt: skip
def test_a_full_disk_in_any_writers_words_is_one_line_naming_the_folder(tmp_path, error):
    with pytest.raises(TrlmError) as raised, disk_space(tmp_path, "saving the final model", needed=3 * 2**20):
        raise error
    said = str(raised.value)
    assert f"the disk is full: saving the final model in {tmp_path} stopped with" in said and "MiB free" in said
    assert "it needs about 3 MiB more" in said and "\n" not in said


def test_other_errors_pass_through(tmp_path):
    with pytest.raises(ValueError), disk_space(tmp_path, "x"):
        raise ValueError("not about space")


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_staging_file(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    atomic_write_text(path, "old")
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left")))
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["summary.json"]


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs (root, where the machine allows mounting); skipped elsewhere (the simulated tests stand)."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("no tmpfs can be mounted here")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder, leave: int) -> None:
    """Fills the disk of `folder` up to `leave` bytes free."""
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    (folder / "filler").write_bytes(b"\0" * max(0, free - leave))


def run(*args, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600)


@pytest.mark.slow
def test_a_full_disk_while_preparing_is_one_line(small_disk, tmp_path):
    fill(small_disk, leave=64 * 1024)
    result = run(
        "-m", "trlm.cli", "prepare", "data=demo/sft", f"paths.blends_dir={small_disk / 'blends'}", cwd=tmp_path
    )
    assert_one_line_refusal(result, f"the disk is full: preparing blend trlm-demo-sft in {small_disk / 'blends'}")
    assert "it needs about" in result.stderr
    assert not [p for p in (small_disk / "blends").iterdir() if not p.name.endswith(".lock")]  # no half blend


@pytest.mark.slow
def test_a_full_disk_while_training_is_one_line_and_the_run_resumes_once_there_is_room(small_disk, tmp_path):
    root = small_disk / "outputs"
    paths = [f"paths.output_root={root}", f"paths.cache_dir={tmp_path / 'cache'}", f"paths.blends_dir={tmp_path / 'b'}"]
    args = [str(PROJECT_ROOT / "train.py"), *paths, *QUICK, "stage=sft", "stage.evaluation.generate=false"]
    fill(small_disk, leave=6 * 2**20)  # room for the run's files, not for its checkpoints (~10 MiB each)
    result = run(*args, cwd=tmp_path)
    assert_one_line_refusal(result, f"the disk is full: training (a checkpoint) in {root / 'demo' / 'sft'}")
    (small_disk / "filler").unlink()
    again = run(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
