"""Image folders packed into ArrayRecord shards and read lazily: the stream pipeline's source.

`pack_folder` lists and labels a folder exactly as the folder loader does, checks that each file
decodes (the same skip reasons; the class checks come when a run reads the pack, with the folder
loader's `decode.class_labels`), and writes each readable file's bytes, unchanged, as one record
of an ArrayRecord shard, with `index.json` (labels, class names, paths, skipped files). Packing
keeps the files' own encoding, so a pack serves any stored side and any training size.

`PackedImages` stands where the cache's uint8 array stands (`Split.images`): indexing it with a
row, a slice or an index array decodes just those records (of a pack, read by grain's
`ArrayRecordDataSource`, or of a TFDS split prepared as ArrayRecord, read by `tfds.data_source`;
the same `decode.fit_image` as the cache, so its pixels equal the cache's bit for bit), `take`
narrows it to a split's rows and `center` gives the evaluation view, all without decoding
anything. `batch_arrays` decodes the batches of an epoch through grain, in `workers` processes
(`mp_prefetch`) or in this one: the same arrays either way, since decoding draws nothing (a
training crop done there, `WorkerCrops`, gets its boxes from the run).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os

from absl import flags
import numpy as np
from PIL import Image, ImageOps

from proxy_jax.core import io_utils
from proxy_jax.data import crops, decode

INDEX_FILE = "index.json"
SHARD_RECORDS = 1024  # Records per shard: small shards keep a damaged one cheap to rebuild.
# The side a file is decoded at when packing only checks that it decodes (any side would do).
_CHECK_SIDE = 8


def pack_folder(root: str, out_dir: str, label_regex: str = "", workers: int = 8) -> dict:
  """Packs `root` into `out_dir` (shards + index.json, written last); returns the index."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  paths, names, unlabelled, class_names = decode.label_files(root, label_regex)
  _, kept, reasons = decode.decode_all(paths, _CHECK_SIDE, workers, f"packing {root}")
  os.makedirs(out_dir, exist_ok=True)
  chosen = [i for i, k in enumerate(kept) if k]
  shards = []
  for start in range(0, len(chosen), SHARD_RECORDS):
    name = f"shard-{len(shards):05d}.array_record"
    writer = array_record_module.ArrayRecordWriter(os.path.join(out_dir, name), "group_size:1")
    for i in chosen[start : start + SHARD_RECORDS]:
      with open(paths[i], "rb") as f:
        writer.write(f.read())
    writer.close()
    shards.append(name)
  index = {
    "class_names": class_names,
    "names": [names[i] for i in chosen],
    # Labels of the files that do not decode: the folder loader's class checks count them.
    "unreadable_names": [n for n, k in zip(names, kept) if not k],
    "paths": [paths[i] for i in chosen],
    "shards": shards,
    "skipped": [{"path": p, "reason": r} for p, k, r in zip(paths, kept, reasons) if not k]
    + unlabelled,
  }
  io_utils.atomic_write_json(os.path.join(out_dir, INDEX_FILE), index)
  return index


def is_pack(path: str) -> bool:
  """Whether `path` is a finished pack (its index is written last)."""
  return bool(path) and os.path.isfile(os.path.join(path, INDEX_FILE))


def read_index(pack_dir: str) -> dict | None:
  """The pack's index, or None when the pack is absent or was cut off before its index."""
  path = os.path.join(pack_dir, INDEX_FILE)
  return io_utils.read_json(path, dict) if os.path.exists(path) else None


def decode_record(data: bytes, side: int, crop: int | None = None) -> np.ndarray:
  """One packed file as the cache stores it: upright, RGB, shorter side `side`, centre square;
  then its centre `crop` square (the evaluation view), if given."""
  with Image.open(io.BytesIO(data)) as image:
    image.load()
    array = decode.fit_image(ImageOps.exif_transpose(image), side)
  if crop is not None and crop != side:
    top = (side - crop) // 2
    array = array[top : top + crop, top : top + crop]
  return array


@dataclasses.dataclass(frozen=True)
class PackFiles:
  """The records of a pack: each image file's bytes, in its ArrayRecord shards."""

  shard_paths: tuple[str, ...]

  def open(self):
    import grain  # pylint: disable=g-import-not-at-top

    source = grain.sources.ArrayRecordDataSource(list(self.shard_paths))
    return source.__getitem__


@dataclasses.dataclass(frozen=True)
class TfdsSplit:
  """The records of a TFDS split prepared as ArrayRecord: each example's encoded image bytes,
  read by `tfds.data_source` without TensorFlow (TFDS's own decoding skipped)."""

  directory: str  # The prepared dataset's folder (name/version), found without a registry.
  split: str

  def open(self):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

    builder = tfds.builder_from_directory(self.directory)
    source = builder.as_data_source(
      split=self.split, decoders={"image": tfds.decode.SkipDecoding()}
    )
    return lambda index: source[index]["image"]


@dataclasses.dataclass(frozen=True)
class PackedImages:
  """A lazy uint8 (N, S, S, 3) array over image records (a pack, or a TFDS split): rows
  decode when they are indexed."""

  records: PackFiles | TfdsSplit
  side: int
  rows: np.ndarray  # Record index of each row.
  crop: int | None = None

  @functools.cached_property
  def _read(self):
    return self.records.open()

  def __getstate__(self):  # The reader reopens in each worker process.
    return {k: v for k, v in self.__dict__.items() if k != "_read"}

  def __setstate__(self, state):
    self.__dict__.update(state)

  @property
  def shape(self) -> tuple[int, int, int, int]:
    side = self.crop or self.side
    return (len(self.rows), side, side, 3)

  dtype = np.dtype(np.uint8)
  ndim = 4

  def __len__(self) -> int:
    return len(self.rows)

  def __getitem__(self, key) -> np.ndarray:
    if isinstance(key, (int, np.integer)):
      return decode_record(self._read(int(self.rows[key])), self.side, self.crop)
    records = self.rows[key]
    out = np.empty((len(records), *self.shape[1:]), np.uint8)
    for i, record in enumerate(records):
      out[i] = decode_record(self._read(int(record)), self.side, self.crop)
    return out

  def __array__(self, dtype=None, copy=None):
    return np.asarray(self[np.arange(len(self))], dtype)

  def cropped(self, positions: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    """uint8 (len(positions), size, size, 3): each row's stored-square box (top, left, h, w)
    cut from its file's own pixels (`crops.decode_crop`)."""
    out = np.empty((len(positions), size, size, 3), np.uint8)
    for i, (position, box) in enumerate(zip(positions, boxes)):
      out[i] = crops.decode_crop(self._read(int(self.rows[position])), self.side, box, size)
    return out

  def take(self, indices: np.ndarray) -> PackedImages:
    return dataclasses.replace(self, rows=self.rows[np.asarray(indices)])

  def center(self, image_size: int) -> PackedImages:
    return dataclasses.replace(self, crop=image_size)


@dataclasses.dataclass(frozen=True)
class WorkerCrops:
  """The training crop done in the workers: each batch's boxes (B_local, 4), to side `size`."""

  boxes: list[np.ndarray]
  size: int


def _decode_rows(images: PackedImages, swap, chosen: np.ndarray) -> np.ndarray:
  decoded = images[chosen]
  return decoded if swap is None else swap(chosen, decoded)


def _decode_cropped_rows(images: PackedImages, swap, is_proxy, size: int, item) -> np.ndarray:
  """A batch cropped to `size`: banked rows from their proxy (`swap` fills stored squares),
  the rest from their files; no file is read for a banked row."""
  chosen, boxes = item
  banked = is_proxy(chosen) if is_proxy is not None else np.zeros(len(chosen), bool)
  out = np.empty((len(chosen), size, size, 3), np.uint8)
  if banked.any():
    squares = swap(chosen[banked], np.empty((int(banked.sum()), *images.shape[1:]), np.uint8))
    for row, square, box in zip(np.flatnonzero(banked), squares, boxes[banked]):
      out[row] = crops.crop_square(square, box, size)
  own = np.flatnonzero(~banked)
  out[own] = images.cropped(chosen[own], boxes[own], size)
  return out


def batch_arrays(
  images: PackedImages,
  chosen_per_batch: list[np.ndarray],
  workers: int,
  swap=None,
  is_proxy=None,
  worker_crops: WorkerCrops | None = None,
):
  """Yields `images[chosen]` for each batch, decoded in `workers` grain processes (0: here),
  with `swap(ids, images)` (the proxy bank's) applied there too; with `worker_crops`, each row
  cut to its box instead (`is_proxy(ids)` says which rows come from the bank)."""
  import grain  # pylint: disable=g-import-not-at-top

  if not flags.FLAGS.is_parsed():  # grain reads its absl flags; a library caller has none.
    flags.FLAGS.mark_as_parsed()
  if worker_crops is None:
    dataset = grain.MapDataset.source(chosen_per_batch).map(
      functools.partial(_decode_rows, images, swap)
    )
  else:
    items = list(zip(chosen_per_batch, worker_crops.boxes, strict=True))
    dataset = grain.MapDataset.source(items).map(
      functools.partial(_decode_cropped_rows, images, swap, is_proxy, worker_crops.size)
    )
  iterator = dataset.to_iter_dataset()
  if workers > 0:
    iterator = iterator.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  for images in iterator:
    # Arrays from worker processes are views of shared memory, released when the view is
    # dropped: copy into a plain array and drop the view here, not at interpreter exit (when
    # the release fails and the memory leaks).
    batch = np.array(images)
    del images
    yield batch


def open_pack(pack_dir: str, index: dict, side: int) -> PackedImages:
  shards = tuple(os.path.join(pack_dir, s) for s in index["shards"])
  return PackedImages(PackFiles(shards), side, np.arange(len(index["names"]), dtype=np.int64))
