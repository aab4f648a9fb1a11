"""TFDS datasets prepared as ArrayRecord, read by `tfds.data_source` (no TensorFlow).

The stream pipeline reads a TFDS split this way: a dataset not prepared yet is prepared as
ArrayRecord, one prepared as TFRecord (which only TensorFlow reads, sequentially) is an error
that says how to prepare it. Labels are read once per split (the images' bytes are read but not
decoded) and cached; images are decoded by `packed.decode_record`, the folder loader's PIL
decoder, so a split read here gives the same pixels to the cache and the stream. The cache
uses this reader too for a dataset prepared as ArrayRecord, which `as_dataset` cannot read.
"""

from concurrent import futures
import os

import numpy as np

from proxy_jax.core import io_utils
from proxy_jax.core.errors import DataError
from proxy_jax.data import packed, tfds_prepare
from proxy_jax.data.decode import Pool

ARRAY_RECORD = "array_record"


def builder(name: str, data_dir: str, array_record: bool):
  """The TFDS builder of `name`, prepared (as ArrayRecord if `array_record` and not prepared)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  found = tfds.builder(name, data_dir=data_dir or None)
  if found.is_prepared():  # In whatever format it was prepared (the caller checks).
    return found
  if array_record:
    found = tfds.builder(name, data_dir=data_dir or None, file_format=ARRAY_RECORD)
  tfds_prepare.prepare_tfds(found)
  return found


def is_array_record(prepared) -> bool:
  return ARRAY_RECORD in {str(getattr(f, "value", f)) for f in _formats(prepared)}


def prepared_count(name: str, data_dir: str, splits: list[str]) -> int:
  """Examples in `splits` of a dataset prepared as ArrayRecord here; 0 for any other (not
  prepared, or prepared as TFRecord: the stream could not read it)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  try:
    found = tfds.builder(name, data_dir=data_dir or None)
  except Exception:  # pylint: disable=broad-except
    return 0  # An unknown name: loading the dataset names the problem.
  if not found.is_prepared() or not is_array_record(found):
    return 0
  return sum(found.info.splits[split].num_examples for split in splits if split)


def _formats(prepared):
  info = prepared.info
  if hasattr(info, "available_file_formats"):
    return info.available_file_formats()
  return {info.file_format}


def split_records(name: str, split: str, data_dir: str, labels_path: str, workers: int):
  """(packed.TfdsSplit, int32 labels, class names) of a TFDS split prepared as ArrayRecord;
  the labels are cached at `labels_path` (JSON) after the first read."""
  prepared = builder(name, data_dir, array_record=True)
  if not is_array_record(prepared):
    raise DataError(
      f"data.pipeline=stream reads TFDS datasets prepared as ArrayRecord, but {name} in "
      f"{prepared.data_dir} is prepared as {prepared.info.file_format}: prepare it again with "
      f"`tfds build {name} --file_format=array_record` (or set config.data.tfds_data_dir to "
      "another folder), or set config.data.pipeline=cache"
    )
  records = packed.TfdsSplit(os.fspath(prepared.data_dir), split)
  class_names = list(prepared.info.features["label"].names)
  labels = _cached_labels(labels_path)
  if labels is None:
    labels = _read_labels(records, workers)
    io_utils.atomic_write_json(labels_path, {"labels": labels.tolist()})
  return records, labels, class_names


def _cached_labels(path: str) -> np.ndarray | None:
  if not os.path.exists(path):
    return None
  stored = io_utils.read_json(path, dict, "its labels are read again from the dataset")
  return np.asarray(stored["labels"], np.int32)


def _read_labels(records: packed.TfdsSplit, workers: int) -> np.ndarray:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  source = tfds.builder_from_directory(records.directory).as_data_source(
    split=records.split, decoders={"image": tfds.decode.SkipDecoding()}
  )
  with futures.ThreadPoolExecutor(max(1, workers)) as pool:
    labels = list(pool.map(lambda i: int(source[i]["label"]), range(len(source))))
  return np.asarray(labels, np.int32)


def images_of(records: packed.TfdsSplit, count: int, side: int) -> packed.PackedImages:
  return packed.PackedImages(records, side, np.arange(count, dtype=np.int64))


def decoded_pool(split: str, prepared, side: int, workers: int) -> Pool:
  """The cache's pool of a split prepared as ArrayRecord: every image decoded at `side`."""
  records = packed.TfdsSplit(os.fspath(prepared.data_dir), split)
  labels = _read_labels(records, workers)
  lazy = images_of(records, len(labels), side)
  rows = np.array_split(np.arange(len(labels)), max(1, workers) * 4)
  with futures.ThreadPoolExecutor(max(1, workers)) as pool:
    parts = list(pool.map(lambda r: lazy[r], [r for r in rows if len(r)]))
  images = np.concatenate(parts) if parts else np.zeros((0, side, side, 3), np.uint8)
  return Pool(images, labels, list(prepared.info.features["label"].names))
