"""Datasets: TFDS by name, image folders, and scikit-learn's bundled digits.

Every source is decoded once into uint8 arrays at the stored side `stored_size(config)`
(`data.load_size`: shorter side resized, centre square), cached under the cache dir keyed by
that side, and split into train/val(/test) by a seeded, label-stratified draw (`splits.py`) that
is written to `<workdir>/split.json` and never redrawn. The training split keeps the stored
images, which the train step crops to `config.image_size` (`augment.crop`); validation and test
hold their centre crops (`eval_view`), the only view evaluation uses. Training examples carry a
stable id, their position in that fixed training split, so a proxy image can stand in for its
original by id. Augmentation and normalisation live in `preprocess.py` and `augment/`.
"""

import dataclasses
import hashlib
import os
from typing import Callable, Iterator

from absl import logging
import jax
import numpy as np

from proxy_jax.core import digests, io_utils, parallel
from proxy_jax.data import packed, splits, tfds_records

# The package's decoding API (decode.py): what readers of a dataset's files call.
from proxy_jax.data.decode import (
  Pool,
  class_labels,
  decode_image_file,
  fit_image,
  list_files,  # noqa: F401
  load_digits_pool,
  load_folder_pool,
  load_image_file,
  load_image_files,
  load_tfds_pool,
)
from proxy_jax.images import preprocess
from proxy_jax.run import dispatch
from proxy_jax.core.errors import DamagedFileError
from proxy_jax.core.io_utils import atomic_write_json, atomic_save_npy

normalize = preprocess.normalize
denormalize = preprocess.denormalize
MAX_REPORTED_FILES = 20
# `config.data.source` values `load_dataset` reads.
SOURCES = ("digits", "tfds", "folder")

# Part of the cache key: bump it when decoding changes, so no stale pixels are reused.
DECODER_VERSION = 2
# data.load_size = AUTO_LOAD_SIZE stores folder and TFDS images at image_size / CROP_FRACTION
# (torchvision's ImageNet evaluation: Resize(256) then CenterCrop(224)).
AUTO_LOAD_SIZE = -1
CROP_FRACTION = 0.875


# `data.pipeline` values; "auto" is resolved once per run (`auto_pipeline`) and recorded.
AUTO_PIPELINE = "auto"
PIPELINES = (AUTO_PIPELINE, "cache", "stream")


def auto_pipeline(settings) -> str:
  """ "stream" for an image folder, or a TFDS dataset prepared as ArrayRecord, whose decoded
  cache would exceed `data.max_cache_gb`, else "cache" (the digits are always cached)."""
  data = settings.data
  if data.source == "folder":
    if packed.is_pack(data.path):
      return "stream"
    count = sum(len(list_files(p)) for p in (data.path, data.test_path) if p)
  elif data.source == "tfds":
    count = tfds_records.prepared_count(
      data.name, data.tfds_data_dir, [data.train_split, data.test_split]
    )
  else:
    return "cache"
  side = stored_size(settings)
  return "stream" if count * side * side * 3 > data.max_cache_gb * 1e9 else "cache"


# `data.stream_crop` values: where a streamed split's random resized crop runs.
STREAM_CROPS = ("workers", "step")


def crops_in_workers(settings) -> bool:
  """Whether training batches arrive already cropped to image_size (`data/crops.py`): a
  streamed split (the resolved pipeline), `data.stream_crop = "workers"` and a random resized
  crop. The pad and centre crops, and every cached split's crop, stay in the train step."""
  return (
    settings.data.pipeline == "stream"
    and settings.data.stream_crop == "workers"
    and settings.augment.crop == "random_resized"
  )


def train_batch_side(settings) -> int:
  """The side of the images the train step gets: image_size when the workers crop, else the
  stored side."""
  return int(settings.image_size) if crops_in_workers(settings) else stored_size(settings)


def stored_size(settings) -> int:
  """The side images are stored at: `config.data.load_size` resolved.

  AUTO_LOAD_SIZE: round(image_size / 0.875) for folders and TFDS, image_size for the digits
  (8 x 8 originals: there is nothing to crop).
  """
  value = settings.data.load_size
  if value == AUTO_LOAD_SIZE:
    if settings.data.source == "digits":
      return int(settings.image_size)
    return int(round(settings.image_size / CROP_FRACTION))
  return int(value)


@dataclasses.dataclass
class Split:
  """One split's examples, addressed two ways.

  By position, 0..N-1 in this split: the proxy bank keys a training example by its position in
  the fixed training split (`batches` yields it as "id"). By `source_indices`: each example's
  index in the data it was drawn from, the pool (the indices split.json records) for train,
  validation and a carved test split, the test set itself for a separate test folder or TFDS
  test split; the same source index is the same example in every workdir of the same data.
  """

  images: np.ndarray  # uint8 (N, L, L, 3) stored (train) or (N, S, S, 3) centre crops
  # (val, test); may be a read-only memmap.
  labels: np.ndarray  # int32 (N,)
  source_indices: np.ndarray  # int32 (N,)

  def __len__(self):
    return len(self.labels)


@dataclasses.dataclass
class Dataset:
  train: Split
  val: Split
  test: Split | None
  class_names: list[str]
  skipped_files: list[dict]  # {"path": ..., "reason": ...} per file that was not used.


# ---------------------------------------------------------------- caching


def _cache_key(settings, which: str, side: bool = True) -> str:
  """The key of a decoded cache entry; `side=False` for a pack (it holds the files' bytes)."""
  data = settings.data
  absolute = lambda path: os.path.abspath(path) if path else ""
  parts = [
    data.source,
    data.name,
    absolute(data.path),
    data.label_regex,
    absolute(data.tfds_data_dir),
    which,
    str(stored_size(settings)) if side else "packed",
    f"decoder {DECODER_VERSION}",
  ]
  if data.source == "folder":
    root = absolute(data.path if which == "pool" else data.test_path)
    # File names, sizes and mtimes: a changed folder is decoded again.
    for path in list_files(root):
      # A broken link has no target to stat; it is keyed (and later skipped) as itself.
      stat = os.stat(path) if os.path.exists(path) else os.lstat(path)
      parts.append(f"{path}:{stat.st_size}:{stat.st_mtime_ns}")
  if data.source == "tfds":  # Another split of the same dataset is other images.
    parts.append(data.train_split if which == "pool" else data.test_split)
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


_CACHE_FIX = "the decoded image cache is decoded again"


def _read_cached_pool(base: str, side: int) -> Pool:
  """The pool a cache entry holds; DamagedFileError naming the file that is not intact."""
  meta_path = base + ".json"
  meta = io_utils.read_json(meta_path, dict, _CACHE_FIX)
  if not (
    isinstance(meta.get("class_names"), list) and isinstance(meta.get("skipped_files"), list)
  ):
    raise DamagedFileError(meta_path, "no class_names or skipped_files list", _CACHE_FIX)
  arrays = {}
  for name in ("images", "labels"):
    path = f"{base}.{name}.npy"
    written = (meta.get("sha256") or {}).get(name)  # Entries from before digests have none.
    if written is not None and os.path.exists(path) and digests.of_file(path) != written:
      raise DamagedFileError(path, "its bytes do not match the digest written with it", _CACHE_FIX)
    try:  # The images stay on disk (a memmap); a short file fails here, not mid-training.
      arrays[name] = np.load(path, mmap_mode="r" if name == "images" else None)
    except (OSError, ValueError, EOFError) as error:
      raise DamagedFileError(path, f"not a readable .npy file: {error}", _CACHE_FIX) from error
  images, labels = arrays["images"], arrays["labels"]
  if images.dtype != np.uint8 or images.shape[1:] != (side, side, 3):
    raise DamagedFileError(
      f"{base}.images.npy",
      f"{images.dtype} {images.shape}, not uint8 (N, {side}, {side}, 3)",
      _CACHE_FIX,
    )
  if (
    labels.shape != (len(images),)
    or not np.issubdtype(labels.dtype, np.integer)
    or (len(labels) and not 0 <= labels.min() <= labels.max() < len(meta["class_names"]))
  ):
    raise DamagedFileError(
      f"{base}.labels.npy",
      f"{labels.dtype} {labels.shape} does not label the {len(images)} images",
      _CACHE_FIX,
    )
  return Pool(images, labels, meta["class_names"], meta["skipped_files"])


def cached_pool(settings, cache_dir: str, which: str, build: Callable[[], Pool]) -> Pool:
  """Loads a decoded pool from the cache, or builds it and writes it atomically.

  A damaged cache entry is a cache miss: it is decoded again, and the log says so.
  """
  base = os.path.join(cache_dir, f"{settings.data.name}-{which}-{_cache_key(settings, which)}")
  meta_path = base + ".json"
  side = stored_size(settings)
  if os.path.exists(meta_path):
    try:  # The key holds the side: a file of another side was not written by this code.
      return _read_cached_pool(base, side)
    except DamagedFileError as error:
      logging.warning("%s is damaged (%s): decoding the images again.", error.path, error.cause)
  pool = build()
  os.makedirs(cache_dir, exist_ok=True)
  atomic_save_npy(base + ".images.npy", pool.images)
  atomic_save_npy(base + ".labels.npy", pool.labels)
  # The JSON goes last: its presence means the arrays are complete.
  atomic_write_json(
    meta_path,
    {
      "class_names": pool.class_names,
      "skipped_files": pool.skipped_files,
      "sha256": {name: digests.of_file(f"{base}.{name}.npy") for name in ("images", "labels")},
    },
  )
  return pool


def packed_pool(
  settings, cache_dir: str, which: str, root: str, class_names: list[str] | None = None
) -> Pool:
  """The stream pipeline's pool of an image folder: its pack (written on first use, keyed as
  the decoded cache is), its images decoded only when indexed."""
  data = settings.data
  if packed.is_pack(root):  # Packed ahead (python -m proxy_jax.pack): read where it is.
    pack_dir = root
  else:
    key = _cache_key(settings, which, side=False)
    pack_dir = os.path.join(cache_dir, f"{data.name}-{which}-pack-{key}")
  index = packed.read_index(pack_dir)
  if index is None:
    logging.info("Packing %s into %s (once: later runs read the pack).", root, pack_dir)
    index = packed.pack_folder(root, pack_dir, data.label_regex, data.decode_workers)
  names = index["names"] + index["unreadable_names"]
  kept = np.arange(len(names)) < len(index["names"])
  class_names, labels = class_labels(root, names, kept, index["class_names"], class_names)
  images = packed.open_pack(pack_dir, index, stored_size(settings))
  return Pool(images, labels[kept], class_names, index["skipped"])


def tfds_stream_pool(settings, cache_dir: str, which: str, split: str) -> Pool:
  """The stream pipeline's pool of a TFDS split prepared as ArrayRecord (`tfds_records`); its
  labels cached as the decoded cache is keyed, its images decoded only when indexed."""
  data = settings.data
  key = _cache_key(settings, which, side=False)
  labels_path = os.path.join(cache_dir, f"{data.name}-{which}-labels-{key}.json")
  os.makedirs(cache_dir, exist_ok=True)
  records, labels, class_names = tfds_records.split_records(
    data.name, split, data.tfds_data_dir, labels_path, data.decode_workers
  )
  images = tfds_records.images_of(records, len(labels), stored_size(settings))
  return Pool(images, labels, class_names, [])


def _tfds_pool(data, split: str, size: int) -> Pool:
  """The cache's pool of a TFDS split: read by TensorFlow, or by `tfds.data_source` when the
  dataset is prepared as ArrayRecord (which TensorFlow's reader cannot read)."""
  prepared = tfds_records.builder(data.name, data.tfds_data_dir, array_record=False)
  if tfds_records.is_array_record(prepared):
    return tfds_records.decoded_pool(split, prepared, size, data.decode_workers)
  return load_tfds_pool(data.name, split, size, data.tfds_data_dir, data.decode_workers)


def _take(pool: Pool, indices: np.ndarray) -> Split:
  if isinstance(pool.images, packed.PackedImages):  # Streamed: rows are decoded when read.
    return Split(pool.images.take(indices), pool.labels[indices], indices.astype(np.int32))
  # Fancy indexing copies: the splits live in RAM, not in the memmap.
  return Split(np.asarray(pool.images[indices]), pool.labels[indices], indices.astype(np.int32))


def eval_view(split: Split, image_size: int) -> Split:
  """`split` as evaluation sees it: the centre image_size crop of every stored image.

  A view, not a copy (`batches` copies only the rows it takes); the split itself when its
  images already have that side (validation and test always do).
  """
  if split.images.shape[1] == image_size:
    return split
  if isinstance(split.images, packed.PackedImages):
    return Split(split.images.center(image_size), split.labels, split.source_indices)
  return Split(preprocess.center_crop(split.images, image_size), split.labels, split.source_indices)


def _pools(settings, cache_dir: str) -> tuple[Pool, Pool | None]:
  """The source's pool and its separate test pool (None: the test split is carved)."""
  data = settings.data
  size, workers = stored_size(settings), data.decode_workers
  test_pool = None
  if data.source == "digits":  # Cached too: each trial would import scikit-learn and resize.
    pool = cached_pool(settings, cache_dir, "pool", lambda: load_digits_pool(size))
  elif data.source == "folder" and data.pipeline == "stream":
    pool = packed_pool(settings, cache_dir, "pool", data.path)
    if data.test_path:
      test_pool = packed_pool(settings, cache_dir, "test", data.test_path, pool.class_names)
  elif data.source == "folder":
    pool = cached_pool(
      settings,
      cache_dir,
      "pool",
      lambda: load_folder_pool(data.path, size, data.label_regex, workers),
    )
    if data.test_path:
      test_pool = cached_pool(
        settings,
        cache_dir,
        "test",
        lambda: load_folder_pool(
          data.test_path, size, data.label_regex, workers, class_names=pool.class_names
        ),
      )
  elif data.pipeline == "stream":
    pool = tfds_stream_pool(settings, cache_dir, "pool", data.train_split)
    if data.test_split:
      test_pool = tfds_stream_pool(settings, cache_dir, "test", data.test_split)
  else:
    pool = cached_pool(
      settings, cache_dir, "pool", lambda: _tfds_pool(data, data.train_split, size)
    )
    if data.test_split:
      test_pool = cached_pool(
        settings, cache_dir, "test", lambda: _tfds_pool(data, data.test_split, size)
      )
  return pool, test_pool


def load_dataset(settings, workdir: str) -> Dataset:
  cache_dir = os.path.expanduser(settings.data.cache_dir) or os.path.join(workdir, "cache")
  pool, test_pool = _pools(settings, cache_dir)
  skipped = pool.skipped_files + (test_pool.skipped_files if test_pool else [])
  if skipped:
    shown = "\n  ".join(f"{s['path']}: {s['reason']}" for s in skipped[:MAX_REPORTED_FILES])
    logging.warning(
      "Skipped %d unreadable or unlabelled file(s) (all in summary.json); first %d:\n  %s",
      len(skipped),
      min(len(skipped), MAX_REPORTED_FILES),
      shown,
    )
  indices = splits.fixed_split(pool, settings, workdir, carve_test=test_pool is None)
  train = _take(pool, indices["train"])
  val = eval_view(_take(pool, indices["val"]), settings.image_size)
  if test_pool is not None:
    streamed = isinstance(test_pool.images, packed.PackedImages)
    test = Split(
      test_pool.images if streamed else np.asarray(test_pool.images),
      test_pool.labels,
      np.arange(len(test_pool.labels), dtype=np.int32),
    )
  else:
    test = _take(pool, indices["test"]) if len(indices["test"]) else None
  test = eval_view(test, settings.image_size) if test is not None else None
  return Dataset(train, val, test, pool.class_names, skipped)


# ---------------------------------------------------------------- batches


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 0xDA7A), epoch)
  return np.asarray(jax.random.permutation(key, num_examples))


def num_batches(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)


def batches(
  split: Split,
  batch_size: int,
  order: np.ndarray | None = None,
  start: int = 0,
  swap: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
  is_proxy: Callable[[np.ndarray], np.ndarray] | None = None,
  workers: int = 0,
  process: tuple[int, int] = (0, 1),
  worker_crops: packed.WorkerCrops | None = None,
) -> Iterator[dict]:
  """Yields host batches {image uint8, label, id, mask, is_proxy}; "id" is the example's
  position in `split` (the proxy bank's key for training examples).

  Every example appears exactly once in batches of exactly `batch_size` rows; the last batch is
  padded by repeating its own examples (`dispatch.padded_chunks`) with mask 0, so shapes never
  change and padded rows count for nothing. `process` = (index, count): yield only that
  process's share of each batch's rows (`parallel.process_share`), the only rows it reads; the
  default is the whole batch.
  `swap(ids, images)` replaces images by id (the proxy bank) before augmentation, and
  `is_proxy(ids)` says which were replaced (bool per row; all False without it). `start` skips
  batches (resume). A streamed split's images are decoded, and swapped, by grain in `workers`
  processes (0: in this one), the same arrays either way; `worker_crops` (a streamed split
  only) crops them there too, its boxes one (batch_size, 4) array per yielded batch.
  """
  order = np.arange(len(split)) if order is None else order
  chunks = list(dispatch.padded_chunks(len(order), batch_size))[start:]
  share = parallel.process_share(np.arange(batch_size), process)
  chosen_rows = [order[rows][share] for rows, _ in chunks]
  if worker_crops is not None:
    if not isinstance(split.images, packed.PackedImages):
      raise ValueError("the workers crop only a streamed split (data.pipeline=stream)")
    shares = [boxes[share] for boxes in worker_crops.boxes]
    worker_crops = dataclasses.replace(worker_crops, boxes=shares)
  if isinstance(split.images, packed.PackedImages):  # Decoded and swapped in the workers.
    decoded = packed.batch_arrays(split.images, chosen_rows, workers, swap, is_proxy, worker_crops)
  else:
    decoded = (split.images[chosen] for chosen in chosen_rows)
    if swap is not None:
      decoded = (swap(chosen, images) for chosen, images in zip(chosen_rows, decoded))
  # The decoded batches first: zip runs them to their end, which releases their workers.
  for images, (_, valid), chosen in zip(decoded, chunks, chosen_rows):
    mask = (np.arange(batch_size) < valid).astype(np.float32)[share]
    proxied = (
      np.asarray(is_proxy(chosen), bool) if is_proxy is not None else np.zeros(len(chosen), bool)
    )
    yield {
      "image": images,
      "label": split.labels[chosen],
      "id": chosen.astype(np.int32),
      "mask": mask,
      "is_proxy": proxied,
    }
