"""A run directory's checkpoints and metrics after a crash: only complete ones count."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tests.helpers import finish_run
from trlm.callbacks import CheckpointMarker, MetricsLog
from trlm.run_dir import COMPLETE_MARKER, has_progress, is_finished, latest_complete_checkpoint


def checkpoint(root, step, complete=True):
    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        (path / COMPLETE_MARKER).write_text("{}")
    return path


def test_an_incomplete_checkpoint_is_skipped_and_removed(tmp_path, caplog):
    good = checkpoint(tmp_path, 20)
    cut = checkpoint(tmp_path, 40, complete=False)  # killed mid-save
    assert latest_complete_checkpoint(tmp_path) == good
    assert not cut.exists() and "skipping incomplete checkpoint" in caplog.text and "checkpoint-40" in caplog.text


def test_a_checkpoint_with_a_truncated_state_is_incomplete(tmp_path):
    good = checkpoint(tmp_path, 2)
    bad = checkpoint(tmp_path, 4)
    (bad / "trainer_state.json").write_text('{"global_st')  # full disk
    assert latest_complete_checkpoint(tmp_path, clean=False) == good and bad.exists()


def test_steps_sort_numerically(tmp_path):
    checkpoint(tmp_path, 9)
    newest = checkpoint(tmp_path, 10)
    assert latest_complete_checkpoint(tmp_path) == newest


def test_progress_is_a_finished_run_or_a_complete_checkpoint(tmp_path):
    assert not has_progress(tmp_path)
    checkpoint(tmp_path / "checkpoints", 2, complete=False)
    assert not has_progress(tmp_path)
    checkpoint(tmp_path / "checkpoints", 4)
    assert has_progress(tmp_path)
    assert not is_finished(tmp_path)
    finish_run(tmp_path)
    assert is_finished(tmp_path)


def test_the_marker_is_written_after_the_save(tmp_path):
    path = tmp_path / "checkpoint-3"
    path.mkdir()
    state = SimpleNamespace(is_world_process_zero=True, global_step=3)
    CheckpointMarker().on_save(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    assert (path / COMPLETE_MARKER).exists()


def test_a_resume_trims_metrics_past_its_checkpoint_and_a_cut_line(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "lo')
    MetricsLog(metrics).on_train_begin(None, SimpleNamespace(is_world_process_zero=True, global_step=2), None)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == [1, 2]


def test_a_marked_checkpoint_whose_files_changed_since_is_skipped(tmp_path, caplog):
    good = checkpoint(tmp_path, 2)
    path = tmp_path / "checkpoint-4"
    path.mkdir()
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    (path / "model.safetensors").write_bytes(b"w" * 1000)
    state = SimpleNamespace(is_world_process_zero=True, global_step=4)
    CheckpointMarker().on_save(SimpleNamespace(output_dir=str(tmp_path)), state, None)
    marker = json.loads((path / COMPLETE_MARKER).read_text())
    assert marker["files"]["model.safetensors"]["size"] == 1000 and len(marker["files"]) == 2
    assert latest_complete_checkpoint(tmp_path, clean=False) == path
    (path / "model.safetensors").write_bytes(b"w" * 400)  # the marker made it to the disk, the weights did not
    assert latest_complete_checkpoint(tmp_path, clean=False) == path  # a look: the marker alone counts
    assert latest_complete_checkpoint(tmp_path) == good  # a resume checks every file against the marker
    assert "model.safetensors is missing or not the size it was saved at" in caplog.text and not path.exists()


def test_a_file_of_the_same_size_but_other_bytes_is_caught_by_its_sha256(tmp_path, caplog):
    path = tmp_path / "checkpoint-4"
    path.mkdir()
    (path / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    (path / "optimizer.pt").write_bytes(b"a" * 64)
    CheckpointMarker().on_save(SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(
        is_world_process_zero=True, global_step=4), None)  # fmt: skip
    (path / "optimizer.pt").write_bytes(b"b" * 64)
    assert latest_complete_checkpoint(tmp_path) is None
    assert "optimizer.pt does not match the sha256 it was saved with" in caplog.text
