"""The stream pipeline: image folders packed into ArrayRecord shards, decoded per batch by grain.

It must be the cache by another road: the same stored pixels, splits, skipped files and batches
(crops are in-jit for both), for any number of grain workers, and a run that streams trains
exactly as one that caches.
"""

import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest

from proxy_jax import data
from proxy_jax.config import checks, recorded
from proxy_jax.core.errors import ConfigError
from proxy_jax.data import decode, packed
from proxy_jax.run import dispatch, proxy_bank, train
from tests.conftest import ROOT, make_tiny_config, settings_of
from tests.test_data import _folder_config, _make_folder, _photo


def _photos(tmp_path, per_class: int = 8):
  root = tmp_path / "photos"
  bad = _make_folder(str(root))
  for name in ("cat", "dog"):
    for i in range(per_class):
      _photo(os.path.join(root, name, f"extra{i}.jpg"), size=(40 + 3 * i, 30 + 2 * i))
  return root, bad


def _dataset(tmp_path, root, pipeline, **overrides):
  config = _folder_config(
    root, **{"data.pipeline": pipeline, "data.cache_dir": str(tmp_path / pipeline), **overrides}
  )
  return data.load_dataset(settings_of(config), str(tmp_path / f"run_{pipeline}"))


def _assert_same_split(a: data.Split, b: data.Split):
  np.testing.assert_array_equal(np.asarray(a.images), np.asarray(b.images))
  np.testing.assert_array_equal(a.labels, b.labels)
  np.testing.assert_array_equal(a.source_indices, b.source_indices)


def test_the_stream_equals_the_cache_with_crops_off(tmp_path):
  root, _ = _photos(tmp_path)
  cached = _dataset(tmp_path, root, "cache")
  streamed = _dataset(tmp_path, root, "stream")
  assert isinstance(streamed.train.images, packed.PackedImages)
  assert streamed.train.images.shape == cached.train.images.shape == (14, 18, 18, 3)
  for name in ("train", "val", "test"):
    _assert_same_split(getattr(cached, name), getattr(streamed, name))
  _assert_same_split(data.eval_view(cached.train, 16), data.eval_view(streamed.train, 16))
  assert streamed.class_names == cached.class_names
  assert streamed.skipped_files == cached.skipped_files  # Same files, same reasons.
  order = data.epoch_order(len(cached.train), 3, 1)
  for a, b in zip(
    data.batches(cached.train, 4, order, start=1), data.batches(streamed.train, 4, order, start=1)
  ):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def test_zero_and_two_workers_give_the_same_batches(tmp_path):
  root, _ = _photos(tmp_path)
  train_split = _dataset(tmp_path, root, "stream").train
  order = data.epoch_order(len(train_split), 0, 0)
  alone = list(data.batches(train_split, 4, order, workers=0))
  pooled = list(data.batches(train_split, 4, order, workers=2))
  assert len(alone) == len(pooled) == 4
  for a, b in zip(alone, pooled):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  # The proxy bank (on disk) swaps its proxies in within the workers, as in this process.
  bank = proxy_bank.ProxyBank(str(tmp_path / "bank"))
  ids = np.array([1, 4, 6])
  bank.store(ids, np.zeros((3, *train_split.images.shape[1:]), np.uint8), label="step-0000")
  here = list(data.batches(train_split, 4, order, swap=bank.swap, is_proxy=bank.holds))
  there = list(data.batches(train_split, 4, order, swap=bank.swap, is_proxy=bank.holds, workers=2))
  for a, b in zip(here, there, strict=True):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["is_proxy"], b["is_proxy"])
    assert not a["image"][a["is_proxy"]].any() and a["image"][~a["is_proxy"]].any()
  assert sum(int((b["is_proxy"] & (b["mask"] > 0)).sum()) for b in there) == 3


class _RecordingImages:
  """A split's images that remember which rows were read."""

  def __init__(self, images):
    self.images, self.read = images, []

  def __getitem__(self, rows):
    self.read.extend(np.atleast_1d(rows).tolist())
    return self.images[rows]


@pytest.mark.parametrize("count", [1, 2, 4])
def test_each_simulated_process_reads_only_its_rows_and_together_they_make_the_batch(
  tmp_path, count
):
  root, _ = _photos(tmp_path)
  for pipeline in ("cache", "stream"):
    split = _dataset(tmp_path, root, pipeline).train
    order = data.epoch_order(len(split), 5, 2)
    whole = list(data.batches(split, 8, order))
    shares, reads = [], []
    for index in range(count):
      recording = _RecordingImages(split.images)
      local = data.Split(recording, split.labels, split.source_indices)
      shares.append(list(data.batches(local, 8, order, process=(index, count))))
      reads.append(recording.read)
    for position, batch in enumerate(whole):
      for key in batch:  # The processes' rows, in process order, are the one batch's rows.
        joined = np.concatenate([share[position][key] for share in shares])
        np.testing.assert_array_equal(joined, batch[key])
    for index in range(count):  # Each read the rows it passes on, and nothing else.
      passed = np.concatenate([b["id"] for b in shares[index]]).tolist()
      assert reads[index] == passed
      assert len(passed) == len(whole) * 8 // count


def test_the_stream_checks_class_folders_as_the_cache_does(tmp_path):
  root, _ = _photos(tmp_path, per_class=1)
  os.makedirs(root / "bird")
  with open(root / "bird" / "broken.jpg", "wb") as f:
    f.write(b"\xff\xd8 nope")
  for pipeline in ("cache", "stream"):
    with pytest.raises(ValueError, match="no readable image: bird"):
      _dataset(tmp_path, root, pipeline)


def test_a_pack_cut_off_before_its_index_is_packed_again(tmp_path):
  root, _ = _photos(tmp_path, per_class=1)
  first = _dataset(tmp_path, root, "stream")
  (pack_dir,) = [p for p in (tmp_path / "stream").iterdir() if "-pool-pack-" in p.name]
  os.remove(pack_dir / packed.INDEX_FILE)
  again = _dataset(tmp_path, root, "stream")
  _assert_same_split(first.train, again.train)
  assert (pack_dir / packed.INDEX_FILE).exists()


def test_auto_streams_a_folder_whose_cache_would_exceed_max_cache_gb(tmp_path):
  root, _ = _photos(tmp_path, per_class=1)
  big = settings_of(_folder_config(root, **{"data.max_cache_gb": 32.0}))
  small = settings_of(_folder_config(root, **{"data.max_cache_gb": 1e-6}))
  assert data.auto_pipeline(big) == "cache" and data.auto_pipeline(small) == "stream"
  assert data.auto_pipeline(settings_of(make_tiny_config())) == "cache"  # The digits.
  workdir = tmp_path / "run"
  resolved = recorded.resolve_auto_fields(small, str(workdir))
  assert resolved.data.pipeline == "stream"
  os.makedirs(workdir)
  recorded.write_or_check_resolved(resolved, str(workdir))
  # Resumed with more room for a cache, the run keeps the pipeline it recorded.
  assert recorded.resolve_auto_fields(big, str(workdir)).data.pipeline == "stream"
  with open(workdir / "config.json") as f:
    assert json.load(f)["data"]["pipeline"] == "stream"


def test_stream_is_refused_for_the_digits_and_accepted_for_folders_and_tfds():
  with pytest.raises(ConfigError, match="config.data.pipeline='stream' is invalid: the stream"):
    checks.validate(make_tiny_config(**{"data.pipeline": "stream"}))
  tfds_stream = {"data.source": "tfds", "data.name": "mnist", "data.pipeline": "stream"}
  checks.validate(make_tiny_config(**tfds_stream))
  with pytest.raises(ConfigError, match="config.data.stream_workers=-1 is invalid"):
    checks.validate(make_tiny_config(**{"data.stream_workers": -1}))


def test_a_folder_packed_ahead_is_read_where_it_is(tmp_path):
  root, bad = _photos(tmp_path, per_class=1)
  pack = tmp_path / "pack"
  result = subprocess.run(
    [sys.executable, "-m", "proxy_jax.pack", f"--images={root}", f"--out={pack}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  assert f"skipped {bad['empty']}: zero bytes" in result.stdout
  assert result.stdout.splitlines()[-1].startswith("packed 14 images of 2 classes into 1 shard")
  from_pack = data.load_dataset(
    settings_of(_folder_config(pack, **{"data.pipeline": "stream"})), str(tmp_path / "run")
  )
  _assert_same_split(from_pack.train, _dataset(tmp_path, root, "cache").train)
  assert data.auto_pipeline(settings_of(_folder_config(pack))) == "stream"
  with pytest.raises(ConfigError, match="is a pack: read it with data.pipeline=stream"):
    checks.validate(_folder_config(pack, **{"data.pipeline": "cache"}))
  missing = subprocess.run(
    [sys.executable, "-m", "proxy_jax.pack", "--images=/nonexistent", f"--out={pack}"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert missing.returncode == 2
  assert (
    missing.stderr.strip().splitlines()[-1] == "error: --images: '/nonexistent' is not a directory"
  )


@pytest.mark.slow
def test_a_streamed_run_trains_exactly_as_a_cached_one(tmp_path):
  """Train with proxy steps and a random resized crop in the step: the histories, banks and test
  metrics of the two pipelines are equal."""
  root, _ = _photos(tmp_path)
  summaries = {}
  for pipeline in ("cache", "stream"):
    config = _folder_config(
      root,
      **{
        "data.pipeline": pipeline,
        "data.cache_dir": str(tmp_path / pipeline),
        "augment.crop": "random_resized",
        "data.stream_crop": "step",
        "proxy.enabled": True,
        "proxy.schedule": "1,p,1",
        "batch_size": 4,
        "eval_batch_size": 4,
      },
    )
    summaries[pipeline] = train.train_and_evaluate(config, str(tmp_path / f"run_{pipeline}"))
  cached, streamed = summaries["cache"], summaries["stream"]
  strip = lambda h: [
    {k: v for k, v in r.items() if "second" not in k and "per_s" not in k} for r in h
  ]  # noqa: E731
  assert strip(streamed["history"]) == strip(cached["history"])
  assert streamed["test"] == cached["test"] and streamed["bank_size"] == cached["bank_size"]
  assert streamed["config"]["data"]["pipeline"] == "stream"


def test_a_start_within_the_epoch_equals_grains_own_restored_iterator(tmp_path):
  """The loop resumes an epoch at (seed, epoch, step); grain's iterator checkpoint agrees."""
  import grain  # pylint: disable=g-import-not-at-top

  root, _ = _photos(tmp_path)
  split = _dataset(tmp_path, root, "stream").train
  order = data.epoch_order(len(split), 4, 1)
  chosen = [order[rows] for rows, _ in dispatch.padded_chunks(len(order), 4)]
  dataset = grain.MapDataset.source(chosen).map(lambda rows: split.images[rows])
  running = iter(dataset.to_iter_dataset())
  next(running), next(running)
  restored = iter(dataset.to_iter_dataset())
  restored.set_state(running.get_state())
  ours = list(data.batches(split, 4, order, start=2))
  assert len(ours) == len(chosen) - 2
  for theirs, batch in zip(restored, ours, strict=True):
    np.testing.assert_array_equal(theirs, batch["image"])


def test_packing_a_folder_logs_its_progress(tmp_path, monkeypatch, caplog):
  root, _ = _photos(tmp_path)
  monkeypatch.setattr(decode, "PROGRESS_SECONDS", 0.0)
  with caplog.at_level(logging.INFO, logger="absl"):
    packed.pack_folder(str(root), str(tmp_path / "pack"))
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("packing")]
  assert lines and all("files/s" in line and "left" in line for line in lines)
  index = packed.read_index(str(tmp_path / "pack"))
  total = len(index["paths"]) + len(index["unreadable_names"])  # Every labelled file.
  assert f"of {total} files" in lines[-1] and f"{total} of {total}" not in lines[-1]
