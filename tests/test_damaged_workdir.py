"""A damaged workdir: every file the project reads back, damaged in turn (truncated, zero bytes,
random bytes, the wrong JSON type), gives one clear line naming it and what to do, or is rebuilt
exactly; a damaged newest checkpoint is set aside and the run resumes from the newest intact one
to the same result as an uninterrupted run; none intact is one error that moves nothing."""

import glob
import json
import logging
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from proxy_jax import aggregate, data, sweep
from proxy_jax.core import digests, errors
from proxy_jax.run import checkpoints, records, restore, train
from proxy_jax.study import runs as study_runs
from proxy_jax.study import spec as study_spec
from tests.conftest import ROOT, make_tiny_config

OVERRIDES = {"num_epochs": 3, "proxy.enabled": True, "proxy.schedule": "1,p,2"}
TIMINGS = ("epoch_seconds", "images_per_second", "seconds")


def _comparable(summary: dict) -> dict:
  strip = lambda row: {k: v for k, v in row.items() if k not in TIMINGS}
  return {
    "history": [strip(r) for r in summary["history"]],
    "test": summary["test"],
    "best": summary["best"],
    "proxy_steps": [strip(s) for s in summary["proxy_steps"]],
    "bank_size": summary["bank_size"],
  }


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """(workdir, summary) of an uninterrupted 3-epoch run with a proxy step (a bank) after epoch 1;
  tests damage copies of it."""
  workdir = str(tmp_path_factory.mktemp("damage") / "run")
  summary = train.train_and_evaluate(make_tiny_config(**OVERRIDES), workdir)
  return workdir, summary


def _copy(finished, tmp_path, without=()) -> str:
  workdir = str(tmp_path / "copy")
  shutil.copytree(finished[0], workdir)
  for name in without:
    os.remove(os.path.join(workdir, name))
  return workdir


def _snapshot(workdir: str) -> dict:
  """{relative path: bytes} of every file: 'nothing lost' is an equal snapshot."""
  files = {}
  for path in glob.glob(os.path.join(workdir, "**"), recursive=True):
    if os.path.isfile(path) and os.path.basename(path) != ".run.lock":
      with open(path, "rb") as f:
        files[os.path.relpath(path, workdir)] = f.read()
  return files


# ---------------------------------------------------------------- ways to damage a file


def _truncated(path):
  os.truncate(path, os.path.getsize(path) // 2)


def _zero_bytes(path):
  os.truncate(path, 0)


def _random_bytes(path):
  with open(path, "wb") as f:
    f.write(np.random.default_rng(0).bytes(64))


def _wrong_json_type(path):
  with open(path) as f:
    value = json.load(f)
  with open(path, "w") as f:
    f.write('{"not": "a list"}' if isinstance(value, list) else "[1, 2, 3]")


def _bytes_changed_in_place(path):
  """A bad sector: bytes in the middle changed, the size and the format intact (a JSON file
  still parses: one digit of it changes)."""
  with open(path, "rb") as f:
    raw = bytearray(f.read())
  digits = [i for i, b in enumerate(raw) if chr(b).isdigit()]
  if path.endswith((".json", ".jsonl")) and digits:
    at = digits[len(digits) // 2]
    raw[at] = ord("7") if raw[at] != ord("7") else ord("3")
  else:
    at = len(raw) * 3 // 4
    raw[at] ^= 0xFF
  with open(path, "wb") as f:
    f.write(bytes(raw))


DAMAGES = {
  "truncated": _truncated,
  "zero bytes": _zero_bytes,
  "random bytes": _random_bytes,
  "wrong JSON type": _wrong_json_type,
  "bytes changed in place": _bytes_changed_in_place,
}


def _assert_names(error: Exception, path: str) -> None:
  """One line naming the damaged file and what to do (the CLIs print it as `error: ...`)."""
  message = str(error)
  assert isinstance(error, errors.UserError), repr(error)
  assert "\n" not in message and path in message and "damaged" in message, message
  assert any(word in message for word in ("restore", "delete", "run ", "rerun")), message


# ---------------------------------------------------------------- files of a run


def _train_again(workdir):
  return train.train_and_evaluate(make_tiny_config(**OVERRIDES), workdir)


def _study_summary(workdir):
  return study_runs._read_summary(workdir)  # pylint: disable=protected-access


# (damaged file, the path the message names, files removed first so that the reader reaches
# the damaged one, reader)
RUN_FILES = {
  "config.json (training)": ("config.json", "config.json", (), _train_again),
  "config.json (infer)": ("config.json", "config.json", (), restore.restore_for_inference),
  "split.json": ("split.json", "split.json", ("summary.json",), _train_again),
  "classes.json": ("classes.json", "classes.json", (), restore.restore_for_inference),
  "summary.json (aggregate)": ("summary.json", "summary.json", (), aggregate.load_results),
  "summary.json (study)": ("summary.json", "summary.json", (), _study_summary),
  "final checkpoint (infer)": (
    "checkpoints/3/meta/metadata",
    "checkpoints/3",
    (),
    restore.restore_for_inference,
  ),
}


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("reader", RUN_FILES)
def test_a_damaged_run_file_is_one_line_naming_it_and_nothing_is_lost(
  finished, tmp_path, reader, damage
):
  name, named, removed, read = RUN_FILES[reader]
  if damage == "bytes changed in place" and name == "classes.json":
    pytest.skip("a JSON list carries no digest (only JSON objects do)")
  workdir = _copy(finished, tmp_path, without=removed)
  DAMAGES[damage](os.path.join(workdir, name))
  before = _snapshot(workdir)
  with pytest.raises((errors.UserError, study_spec.StudyError)) as caught:
    read(workdir)
  _assert_names(caught.value, os.path.join(workdir, named))
  assert _snapshot(workdir) == before


@pytest.mark.slow
def test_a_damaged_summary_is_rebuilt_from_the_last_checkpoint(finished, tmp_path, caplog):
  workdir = _copy(finished, tmp_path)
  _truncated(os.path.join(workdir, "summary.json"))
  with caplog.at_level(logging.WARNING):
    rebuilt = _train_again(workdir)
  assert _comparable(rebuilt) == _comparable(finished[1])
  assert _comparable(records.read_summary(workdir).to_json()) == _comparable(finished[1])
  assert any(
    "summary.json is damaged" in r.getMessage() and "rebuilding" in r.getMessage()
    for r in caplog.records
  )


# ---------------------------------------------------------------- the decoded image cache


@pytest.mark.parametrize(
  "part,damage",
  [
    (part, damage)
    for part in (".json", ".images.npy", ".labels.npy")
    for damage in DAMAGES
    if part == ".json" or damage != "wrong JSON type"
  ],
)
def test_a_damaged_decode_cache_is_decoded_again(tmp_path, caplog, part, damage):
  config = make_tiny_config()
  rng = np.random.default_rng(1)
  pool = data.Pool(
    rng.integers(0, 256, (6, 16, 16, 3), dtype=np.uint8),
    np.array([0, 1, 0, 1, 1, 0], np.int32),
    ["a", "b"],
  )
  builds = []

  def build():
    builds.append(1)
    return pool

  data.cached_pool(config, str(tmp_path), "pool", build)
  (path,) = glob.glob(str(tmp_path / f"*{part}"))
  DAMAGES[damage](path)
  with caplog.at_level(logging.WARNING):
    again = data.cached_pool(config, str(tmp_path), "pool", build)
  assert len(builds) == 2  # Decoded again...
  np.testing.assert_array_equal(again.images, pool.images)
  assert any(
    path in r.getMessage() and "decoding the images again" in r.getMessage() for r in caplog.records
  )
  cached = data.cached_pool(config, str(tmp_path), "pool", build)  # ...and cached again.
  assert len(builds) == 2 and cached.class_names == ["a", "b"]
  np.testing.assert_array_equal(cached.images, pool.images)
  np.testing.assert_array_equal(cached.labels, pool.labels)


# ---------------------------------------------------------------- sweep and study journals


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_journal_is_named_unless_only_its_last_line_is_torn(tmp_path, damage):
  path = str(tmp_path / "journal.jsonl")
  for index, status in enumerate((sweep.STARTED, sweep.FINISHED, sweep.STARTED)):
    sweep.append_record(
      path,
      {
        "trial": f"t{index}",
        "status": status,
        "time": float(index),
        "overrides": {"proxy.threshold": 0.5},
      },
    )
  if damage == "wrong JSON type":  # One record of another JSON type.
    with open(path) as f:
      lines = f.readlines()
    with open(path, "w") as f:
      f.writelines(["[1, 2, 3]\n"] + lines[1:])
  else:
    DAMAGES[damage](path)
  if damage in ("truncated", "zero bytes"):  # What a kill mid-append can leave: the rest reads.
    states = sweep.trial_states(str(tmp_path))
    assert set(states) == ({"t0"} if damage == "truncated" else set())
    return
  with pytest.raises(errors.DamagedFileError) as caught:
    sweep.read_journal(str(tmp_path))
  _assert_names(caught.value, path)
  if damage == "bytes changed in place":  # A digit of the middle line: it still parses.
    assert "line 2: its content does not match the digest" in str(caught.value)
  else:
    assert "line 1" in str(caught.value)


# A stand-in trainer that reads its workdir back as main.py does (the real reader, the real
# one-line error and exit 2), then "trains" by writing a summary.
TRAINER = """
import json, os, sys
sys.path.insert(0, {root!r})
from proxy_jax import cli
from proxy_jax.run import records
workdir = [a for a in sys.argv if a.startswith("--workdir=")][0][len("--workdir="):]

def main():
  if os.path.exists(os.path.join(workdir, "config.json")):
    records.read_recorded_config(workdir)
  with open(os.path.join(workdir, "attempts"), "a") as f:
    f.write("x")
  with open(os.path.join(workdir, "summary.json"), "w") as f:
    json.dump({{"history": []}}, f)

cli.run_plain(main)
"""


@pytest.mark.slow
def test_a_sweep_goes_on_past_a_damaged_trial_and_completes_it_after_the_fix(tmp_path):
  """The study runs its trials through the same runner."""
  program = tmp_path / "trainer.py"
  program.write_text(TRAINER.format(root=ROOT))
  trials = [{"name": name, "overrides": {}} for name in ("a", "b", "c")]
  workdir, config = str(tmp_path / "grid"), os.path.join(ROOT, "configs", "default.py")
  damaged = os.path.join(workdir, "b", "config.json")
  os.makedirs(os.path.dirname(damaged))
  _random_bytes(damaged)
  run = lambda **kw: sweep.run_trials(config, trials, {}, workdir, program=str(program), **kw)
  counts = run()
  assert counts["finished"] == 2 and counts["failed"] == 1
  record = sweep.trial_states(workdir)["b"]
  assert record["status"] == sweep.FAILED
  assert (
    record["reason"].startswith(f"error: {damaged} is damaged (") and "\n" not in (record["reason"])
  )
  os.remove(damaged)  # The fix (here: the trial never ran, so its config can be recorded anew).
  assert run()["failed_skipped"] == 1  # Failed trials wait for --retry-failed...
  counts = run(retry_failed=True)
  assert counts["finished"] == 1 and counts["finished_before"] == 2
  assert sweep.trial_states(workdir)["b"]["status"] == sweep.FINISHED
  # A finished trial whose summary.json was damaged later runs again (main.py rebuilds it).
  _random_bytes(os.path.join(workdir, "a", "summary.json"))
  assert run()["finished"] == 1
  assert [(tmp_path / "grid" / n / "attempts").read_text() for n in "abc"] == ["xx", "x", "x"]
  assert records.read_summary(os.path.join(workdir, "a")) is not None


# ---------------------------------------------------------------- checkpoints


def _template(config=None):
  config = config or make_tiny_config(**OVERRIDES)
  return train.create_train_state(config, train.create_model(config, 10), jax.random.key(0), 1)


def _steps_per_epoch(summary):
  return data.num_batches(summary["num_examples"]["train"], make_tiny_config().batch_size)


def _array_file_truncated(ckpt):
  # The state's: the bank item is a small index now (its images are in WORKDIR/bank).
  _truncated(max(glob.glob(f"{ckpt}/state/ocdbt.process_0/d/*"), key=os.path.getsize))


def _state_manifest_deleted(ckpt):
  os.remove(f"{ckpt}/state/manifest.ocdbt")


def _meta_garbled(ckpt):
  _random_bytes(f"{ckpt}/meta/metadata")


def _meta_of_another_epoch(ckpt):
  with open(f"{ckpt}/meta/metadata", "w") as f:
    json.dump({"epoch": 7}, f)


def _state_of_a_wider_model(ckpt):
  """The state of another architecture (width 16, not 8), as a checkpoint copied by mistake."""
  wider = _template(make_tiny_config(**{**OVERRIDES, "model.width": 16}))
  other = os.path.join(os.path.dirname(os.path.dirname(ckpt)), "other")
  manager = ocp.CheckpointManager(other)
  manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(wider)))
  manager.wait_until_finished()
  manager.close()
  shutil.rmtree(f"{ckpt}/state")
  shutil.copytree(f"{other}/3/state", f"{ckpt}/state")


# damage -> (how, the kind its digests name, the kind a checkpoint without digests gets).
CHECKPOINT_DAMAGES = {
  "array file truncated": (_array_file_truncated, "digest", "truncated"),
  "state manifest deleted": (_state_manifest_deleted, "missing", "missing"),
  "meta garbled": (_meta_garbled, "digest", "metadata"),
  "meta of another epoch": (_meta_of_another_epoch, "digest", "metadata"),
  "state of a wider model": (_state_of_a_wider_model, "missing", "shape"),
}


def _without_digests(workdir: str) -> None:
  """The checkpoints as a version before digests wrote them."""
  directory = os.path.join(workdir, "checkpoints")
  os.remove(os.path.join(directory, digests.SINCE_FILE))
  for manifest in glob.glob(os.path.join(directory, "*", digests.MANIFEST)):
    os.remove(manifest)


@pytest.mark.slow
@pytest.mark.parametrize("digested", [True, False], ids=["digested", "written before digests"])
@pytest.mark.parametrize("damage", CHECKPOINT_DAMAGES)
def test_the_newest_intact_checkpoint_is_restored_and_the_damaged_one_kept_aside(
  finished, tmp_path, caplog, damage, digested
):
  workdir = _copy(finished, tmp_path, without=["summary.json"])
  directory = os.path.join(workdir, "checkpoints")
  damage_fn, digest_kind, legacy_kind = CHECKPOINT_DAMAGES[damage]
  kind = digest_kind if digested else legacy_kind
  if not digested:
    _without_digests(workdir)
  damage_fn(os.path.join(directory, "3"))
  damaged_files = _snapshot(os.path.join(directory, "3"))
  ckpt = checkpoints.RunCheckpoints(workdir, 3)
  with caplog.at_level(logging.WARNING):
    restored = ckpt.restore_newest(_template(), _steps_per_epoch(finished[1]))
  ckpt.close()
  assert restored.epoch == 2 and restored.meta["epoch"] == 2 and len(restored.bank["ids"])
  aside = os.path.join(directory, f"damaged-3-{kind}")
  assert sorted(os.listdir(directory)) == ["1", "2", f"damaged-3-{kind}"] + (
    [digests.SINCE_FILE] if digested else []
  )
  assert _snapshot(aside) == damaged_files  # Kept, byte for byte.
  lines = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
  assert len(lines) == 1 and "checkpoint 3" in lines[0] and aside in lines[0]
  assert "\n" not in lines[0] and "resuming from checkpoint 2" in lines[0]
  assert checkpoints.RunCheckpoints(workdir, 3).latest_epoch() == 2
  unchecked = [r for r in caplog.records if "before checkpoint digests" in r.getMessage()]
  assert len(unchecked) == (0 if digested else 1)  # Said once, not per checkpoint or file.


def _files_of_a_checkpoint():
  """Every file an epoch's checkpoint of the `finished` run holds (the table of the test
  below), computed where the test collects so that each file is a case of its own."""
  items = [
    f"{item}/{name}"
    for item in ("state", "bank")
    for name in (
      "_METADATA",
      "commit_success.txt",
      "manifest.ocdbt",
      "d/*",
      "ocdbt.process_0/manifest.ocdbt",
      "ocdbt.process_0/d/*",
    )
  ]
  return [
    "_CHECKPOINT_METADATA",
    "commit_success.txt",
    "meta/metadata",
    "meta/commit_success.txt",
    "state/_sharding",
    "state/array_metadatas/process_0",
    *items,
    digests.MANIFEST,
  ]


@pytest.mark.slow
def test_the_table_holds_every_file_of_a_checkpoint(finished):
  checkpoint = os.path.join(finished[0], "checkpoints", "3")
  files = {
    os.path.relpath(p, checkpoint)
    for p in glob.glob(f"{checkpoint}/**", recursive=True)
    if os.path.isfile(p)
  }
  covered = {
    os.path.relpath(p, checkpoint)
    for pattern in _files_of_a_checkpoint()
    for p in glob.glob(os.path.join(checkpoint, pattern))
  }
  assert files == covered


def _bytes_flipped_in_the_middle(path: str) -> None:
  """Up to 64 bytes in the middle of the file replaced by others; the size is unchanged."""
  size = os.path.getsize(path)
  count, start = min(64, size), max(0, size // 2 - 32)
  with open(path, "r+b") as f:
    f.seek(start)
    old = f.read(count)
    f.seek(start)
    f.write(bytes(b ^ 0x5A for b in old))


@pytest.mark.slow
@pytest.mark.parametrize("pattern", _files_of_a_checkpoint())
def test_random_bytes_inside_any_checkpoint_file_are_detected(finished, tmp_path, caplog, pattern):
  workdir = _copy(finished, tmp_path, without=["summary.json"])
  directory = os.path.join(workdir, "checkpoints")
  matches = sorted(glob.glob(os.path.join(directory, "3", pattern)), key=os.path.getsize)
  assert matches, f"checkpoint 3 holds no {pattern}"
  path = matches[-1]  # The largest of them: where a bad sector most likely lands.
  size = os.path.getsize(path)
  _bytes_flipped_in_the_middle(path)
  assert os.path.getsize(path) == size
  ckpt = checkpoints.RunCheckpoints(workdir, 3)
  with caplog.at_level(logging.WARNING):
    restored = ckpt.restore_newest(_template(), _steps_per_epoch(finished[1]))
  ckpt.close()
  assert restored.epoch == 2
  (line,) = [r.getMessage() for r in caplog.records if "cannot be restored" in r.getMessage()]
  assert os.path.relpath(path, os.path.join(directory, "3")) in line and "damaged-3-digest" in line


@pytest.mark.slow
@pytest.mark.parametrize("pattern", ["state/ocdbt.process_0/d/*", "bank/ocdbt.process_0/d/*"])
def test_resume_past_flipped_bytes_equals_the_uninterrupted_run(finished, tmp_path, pattern):
  workdir = _copy(finished, tmp_path, without=["summary.json"])
  path = max(glob.glob(os.path.join(workdir, "checkpoints", "3", pattern)), key=os.path.getsize)
  _bytes_flipped_in_the_middle(path)
  assert _comparable(_train_again(workdir)) == _comparable(finished[1])
  assert "damaged-3-digest" in os.listdir(os.path.join(workdir, "checkpoints"))


@pytest.mark.slow
def test_a_checkpoint_cut_off_before_its_manifest_is_not_trusted(finished, tmp_path):
  workdir = _copy(finished, tmp_path, without=["summary.json"])
  os.remove(os.path.join(workdir, "checkpoints", "3", digests.MANIFEST))
  ckpt = checkpoints.RunCheckpoints(workdir, 3)
  restored = ckpt.restore_newest(_template(), _steps_per_epoch(finished[1]))
  ckpt.close()
  assert restored.epoch == 2
  assert "damaged-3-undigested" in os.listdir(os.path.join(workdir, "checkpoints"))


@pytest.mark.slow
def test_no_intact_checkpoint_is_one_error_that_moves_nothing(finished, tmp_path):
  workdir = _copy(finished, tmp_path, without=["summary.json"])
  # A run of another dtype finds only checkpoints it cannot use.
  half = jax.tree.map(
    lambda x: (
      x.astype(jnp.float16) if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) else x
    ),
    _template(),
  )
  before = _snapshot(workdir)
  ckpt = checkpoints.RunCheckpoints(workdir, 3)
  with pytest.raises(checkpoints.CheckpointRestoreError) as caught:
    ckpt.restore_newest(half)
  ckpt.close()
  message = str(caught.value)
  assert "\n" not in message and os.path.join(workdir, "checkpoints") in message
  assert "dtype float32, the run needs float16" in message and "new --workdir" in message
  assert _snapshot(workdir) == before


@pytest.mark.slow
def test_resume_past_a_damaged_checkpoint_equals_the_uninterrupted_run(finished, tmp_path):
  workdir = _copy(finished, tmp_path, without=["summary.json"])
  _state_manifest_deleted(os.path.join(workdir, "checkpoints", "3"))
  resumed = _train_again(workdir)
  assert _comparable(resumed) == _comparable(finished[1])
  # The damaged checkpoint stays aside next to the good one that replaced it.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [
    "1",
    "2",
    "3",
    "damaged-3-missing",
    digests.SINCE_FILE,
  ]


@pytest.mark.slow
def test_main_resumes_past_a_truncated_checkpoint_in_one_line_without_traceback(finished, tmp_path):
  workdir = _copy(finished, tmp_path, without=["summary.json"])
  _array_file_truncated(os.path.join(workdir, "checkpoints", "3"))
  config = tmp_path / "tiny.py"
  config.write_text(
    f"import sys\nsys.path.insert(0, {ROOT!r})\n"
    "from tests.conftest import make_tiny_config\n"
    f"def get_config():\n  return make_tiny_config(**{OVERRIDES!r})\n"
  )
  result = subprocess.run(
    [sys.executable, os.path.join(ROOT, "main.py"), f"--config={config}", f"--workdir={workdir}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  for noise in ("Traceback", "Exception ignored", "Event loop is closed"):
    assert noise not in result.stderr, result.stderr[-3000:]
  lines = [line for line in result.stderr.splitlines() if "cannot be restored" in line]
  assert len(lines) == 1 and "checkpoint 3" in lines[0] and "damaged-3-digest" in lines[0]
  assert _comparable(records.read_summary(workdir).to_json()) == _comparable(finished[1])


@pytest.mark.slow
def test_a_first_checkpoint_cut_off_before_its_manifest_means_a_fresh_start(finished, tmp_path):
  """A kill between Orbax finishing the run's first checkpoint and its manifest: no older one to
  fall back on, so the run starts afresh (and, deterministic, ends as if uninterrupted)."""
  workdir = _copy(finished, tmp_path, without=["summary.json"])
  directory = os.path.join(workdir, "checkpoints")
  for epoch in ("2", "3"):
    shutil.rmtree(os.path.join(directory, epoch))
  os.remove(os.path.join(directory, "1", digests.MANIFEST))
  ckpt = checkpoints.RunCheckpoints(workdir, 3)
  assert ckpt.restore_newest(_template(), _steps_per_epoch(finished[1])) is None
  ckpt.close()
  assert sorted(os.listdir(directory)) == ["damaged-1-undigested", digests.SINCE_FILE]
  assert _comparable(_train_again(workdir)) == _comparable(finished[1])
