"""records.py reads what earlier versions wrote and writes it back unchanged."""

import json

from proxy_jax.core import io_utils
from proxy_jax.run import records

ROW = {
  "epoch": 1,
  "train_loss": 2.0,
  "train_accuracy": 0.3,
  "val_loss": 2.5,
  "val_accuracy": 0.25,
  "val_top5": 0.6,
  "learning_rate": 1e-3,
  "epoch_seconds": 4.0,
  "images_per_second": 300.0,
}
STEP = {"index": 0, "epoch": 1, "wrong": 40, "chosen": 20, "bank_size": 20, "seconds": 0.5}


def test_summary_round_trips_and_keeps_unknown_fields(tmp_path):
  raw = {
    "config": {"seed": 0},
    "final": ROW,
    "best": {"val_accuracy": 0.25, "epoch": 1},
    "test": {"loss": 2.4, "accuracy": 0.3, "top5": 0.7},
    "num_epochs": 1,
    "wall_time_s": 9.5,
    "proxy_steps": [STEP],
    "bank_size": 20,
    "skipped_files": [{"path": "a.jpg", "reason": "truncated"}],
    "num_examples": {"train": 100, "val": 20, "test": 20},
    "history": [ROW],
    "init_checksum": "0123456789abcdef",
    "dtype": "float32",
  }  # A field this version does not know.
  (tmp_path / "summary.json").write_text(json.dumps(raw))
  summary = records.read_summary(str(tmp_path))
  assert summary.final.val_accuracy == 0.25 and summary.proxy_steps[0].chosen == 20
  assert summary.extra == {"dtype": "float32"}
  assert summary.to_json() == raw
  records.write_summary(str(tmp_path / "copy"), summary)
  assert io_utils.read_json(str(tmp_path / "copy" / "summary.json")) == raw


def test_older_and_partial_files_read_with_defaults(tmp_path):
  partial = {
    "final": {"epoch": 2, "val_accuracy": 0.5},
    "history": [{"epoch": 2}],
    "proxy_steps": [{"epoch": 1, "wrong": 3, "chosen": 2}],
  }
  summary = records.Summary.from_json(partial)
  assert summary.final.train_loss is None and summary.best.epoch == -1
  assert summary.proxy_steps[0].bank_size == 0 and summary.test is None
  assert records.read_summary(str(tmp_path)) is None  # No summary.json: no summary.


def test_checkpoint_progress_round_trips_and_tracks_best():
  meta = {
    "epoch": 1,
    "proxy_steps_done": 1,
    "history": [ROW],
    "proxy_steps": [STEP],
    "best": {"val_accuracy": 0.25, "epoch": 1},
    "bank_size": 20,
    "elapsed_s": 12.0,
  }
  progress = records.RunProgress.from_json(meta)
  assert progress.to_json() == meta
  progress.add_epoch(records.EpochRecord.from_json({**ROW, "epoch": 2, "val_accuracy": 0.2}))
  assert progress.epoch == 2 and progress.best == records.Best(0.25, 1)
  progress.add_epoch(records.EpochRecord.from_json({**ROW, "epoch": 3, "val_accuracy": 0.4}))
  assert progress.best == records.Best(0.4, 3)
  progress.add_proxy_step(
    records.ProxyStepRecord(index=1, epoch=3, wrong=5, chosen=3, bank_size=23, seconds=0.1)
  )
  assert progress.proxy_steps_done == 2 and progress.bank_size == 23


def test_train_split_round_trips_and_is_omitted_when_absent(tmp_path):
  """An optional field newer than most files: written when present, never written as null."""
  raw = {
    "config": {},
    "final": ROW,
    "best": {"val_accuracy": 0.25, "epoch": 1},
    "test": None,
    "num_epochs": 1,
    "wall_time_s": 1.0,
    "history": [ROW],
    "proxy_steps": [],
    "bank_size": 0,
    "skipped_files": [],
    "num_examples": {},
    "init_checksum": None,
  }
  assert "train_split" not in records.Summary.from_json(raw).to_json()
  scored = {**raw, "train_split": {"loss": 0.1, "accuracy": 0.97, "top5": 1.0}}
  records.write_summary(str(tmp_path), records.Summary.from_json(scored))
  summary = records.read_summary(str(tmp_path))
  assert summary.train_split["accuracy"] == 0.97 and summary.extra == {}
  assert io_utils.read_json(str(tmp_path / "summary.json")) == scored


CPU_2 = {"platform": "cpu", "device_kind": "cpu", "devices": 1, "processes": 1, "cpu_threads": 2}
CPU_1 = {**CPU_2, "cpu_threads": 1}


def test_compute_slice_round_trips_and_older_files_lack_it(tmp_path):
  """summary.json's `compute`: written when known, absent (not null) in older files, which still
  read back unchanged; the label names every field, or every session's slice of a mix."""
  raw = {
    "config": {},
    "final": ROW,
    "best": {"val_accuracy": 0.25, "epoch": 1},
    "test": None,
    "num_epochs": 1,
    "wall_time_s": 1.0,
    "history": [ROW],
    "proxy_steps": [],
    "bank_size": 0,
    "skipped_files": [],
    "num_examples": {},
    "init_checksum": None,
  }
  older = records.Summary.from_json(raw)
  assert older.compute is None and older.to_json() == raw
  assert records.compute_label(older.compute) == "unrecorded"
  for compute in (CPU_2, {"sessions": [CPU_2, CPU_1]}):
    recorded = {**raw, "compute": compute}
    records.write_summary(str(tmp_path), records.Summary.from_json(recorded))
    summary = records.read_summary(str(tmp_path))
    assert summary.compute == compute and summary.extra == {}
    assert io_utils.read_json(str(tmp_path / "summary.json")) == recorded
  assert records.compute_label(CPU_2) == "cpu (cpu) x1, 1 process(es), 2 CPU thread(s)"
  assert (
    records.compute_label(
      {**CPU_2, "platform": "gpu", "device_kind": "NVIDIA H100", "cpu_threads": None}
    )
    == "gpu (NVIDIA H100) x1, 1 process(es)"
  )
  assert records.compute_label({"sessions": [CPU_2, CPU_1]}) == (
    "resumed on another slice: cpu (cpu) x1, 1 process(es), 2 CPU thread(s) then "
    "cpu (cpu) x1, 1 process(es), 1 CPU thread(s)"
  )


def test_checkpoint_progress_collects_the_slices_of_its_sessions():
  """A run resumed on the same slice records one; on another, all (the summary says so)."""
  meta = {
    "epoch": 1,
    "proxy_steps_done": 0,
    "history": [ROW],
    "proxy_steps": [],
    "best": {"val_accuracy": 0.25, "epoch": 1},
    "bank_size": 0,
    "elapsed_s": 1.0,
  }
  older = records.RunProgress.from_json(meta)  # A checkpoint of an earlier version.
  assert older.to_json() == meta and older.summary_compute() is None
  older.add_compute_slice(dict(CPU_2))
  resumed = records.RunProgress.from_json(older.to_json())
  assert resumed.compute_slices == [CPU_2]
  resumed.add_compute_slice(dict(CPU_2))
  assert resumed.summary_compute() == CPU_2
  resumed.add_compute_slice(dict(CPU_1))
  assert resumed.summary_compute() == {"sessions": [CPU_2, CPU_1]}


def test_proxy_step_change_figures_round_trip_and_are_omitted_when_unmeasured():
  """Records of runs from before the manipulation check read back unchanged (no nulls)."""
  measured = {
    **STEP,
    "changed_pixel_share": 0.25,
    "changed_mean_abs": 40.0,
    "mean_abs_change": 10.0,
  }
  assert records.ProxyStepRecord.from_json(measured).to_json() == measured
  older = records.ProxyStepRecord.from_json(STEP)
  assert older.changed_pixel_share is None and older.to_json() == STEP
