"""Decoding images into uint8 arrays at a stored side: files, folders, TFDS datasets, digits.

Every source becomes a `Pool` (uint8 images at side S, int labels, class names, the files that
could not be read and why): RGB, the shorter side resized to S, the centre square, as
torchvision's Resize(S) + CenterCrop(S). `proxy_jax.data` caches pools and splits them.
"""

import dataclasses
import os
import re
import time
from concurrent import futures

from absl import logging

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from proxy_jax.core.errors import DataError, MissingPathError
from proxy_jax.data import tfds_prepare

PROGRESS_SECONDS = 10.0


def as_rgb8(image: Image.Image) -> Image.Image:
  """Any PIL image as 8-bit RGB: greyscale (8 or 16 bit), palette, RGBA (alpha dropped), CMYK."""
  return _to_8_bit(image).convert("RGB")


def _to_8_bit(image: Image.Image) -> Image.Image:
  # 16-bit greyscale PNGs open as "I;16*" or "I" with values 0..65535; convert("L") would clip
  # them at 255 (almost all white), so rescale the full 16-bit range instead.
  if image.mode.startswith("I;16") or image.mode == "I":
    values = np.asarray(image, np.float64)
    return Image.fromarray(
      np.round(np.clip(values, 0, 65535) * (255.0 / 65535.0)).astype(np.uint8), "L"
    )
  return image


def fit_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
  """(new_w, new_h, left, top) of `fit_image`: the image resized to new_w x new_h (shorter side
  `size`), then its size x size square cut at (left, top). `data/crops.py` inverts it."""
  scale = size / min(width, height)
  new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
  return new_w, new_h, (new_w - size) // 2, (new_h - size) // 2


def fit_image(image: Image.Image, size: int) -> np.ndarray:
  """Any PIL image -> uint8 (size, size, 3): RGB, shorter side resized to size, centre crop."""
  image = as_rgb8(image)
  new_w, new_h, left, top = fit_geometry(*image.size, size)
  image = image.resize((new_w, new_h), Image.BILINEAR)
  return np.asarray(image.crop((left, top, left + size, top + size)), np.uint8)


def decode_image_file(path: str, image_size: int) -> tuple[np.ndarray | None, str]:
  """(uint8 (S, S, 3), "") for a readable image, else (None, why it was skipped).

  The camera's EXIF orientation is applied, so phone photos are upright.
  """
  if not os.path.exists(path):
    return None, "broken link" if os.path.islink(path) else "missing"
  try:
    if os.path.getsize(path) == 0:
      return None, "zero bytes"
    with Image.open(path) as image:
      image.load()  # Forces a full decode so truncated files fail here, not mid-epoch.
      return fit_image(ImageOps.exif_transpose(image), image_size), ""
  except UnidentifiedImageError:
    return None, "not an image"
  except Image.DecompressionBombError:
    return None, "too many pixels (PIL decompression-bomb limit)"
  except (OSError, ValueError, SyntaxError) as error:
    if "truncat" in str(error).lower():
      return None, "truncated"
    detail = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    return None, f"unreadable ({detail})"


def load_image_file(path: str, image_size: int) -> np.ndarray | None:
  """Decodes one file to uint8 (S, S, 3); None when it is not a readable image."""
  return decode_image_file(path, image_size)[0]


def decode_all(paths: list[str], image_size: int, workers: int, what: str = "decoding"):
  """Decodes files in parallel; returns (images, kept_mask, skip reason per path). A long run
  logs its progress (`what`: the task's name in those lines)."""
  images = np.zeros((len(paths), image_size, image_size, 3), np.uint8)
  kept = np.zeros(len(paths), bool)
  reasons = [""] * len(paths)
  progress = Progress(what, len(paths))
  with futures.ThreadPoolExecutor(max(1, workers)) as pool:
    decoded = pool.map(lambda p: decode_image_file(p, image_size), paths)
    for index, (image, reason) in enumerate(decoded):
      if image is not None:
        images[index], kept[index] = image, True
      reasons[index] = reason
      progress(index + 1)
  return images, kept, reasons


class Progress:
  """A progress line every PROGRESS_SECONDS of a long task: done/total, rate, time left."""

  def __init__(self, what: str, total: int):
    self.what, self.total = what, total
    self.started = self.last = time.time()

  def __call__(self, done: int) -> None:
    now = time.time()
    if now - self.last < PROGRESS_SECONDS or done == self.total:
      return
    self.last = now
    rate = done / max(now - self.started, 1e-9)
    logging.info(
      "%s: %d of %d files (%.0f%%), %.0f files/s, about %.0f s left",
      self.what,
      done,
      self.total,
      100 * done / self.total,
      rate,
      (self.total - done) / rate,
    )


# ---------------------------------------------------------------- sources


@dataclasses.dataclass
class Pool:
  """All examples of one source split, before the train/val/test carve."""

  images: np.ndarray
  labels: np.ndarray
  class_names: list[str]
  skipped_files: list[dict] = dataclasses.field(default_factory=list)


def load_digits_pool(image_size: int) -> Pool:
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  # 0..16 grey levels -> uint8, then the same fit path as any photo.
  grey = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
  images = np.stack([fit_image(Image.fromarray(g, "L"), image_size) for g in grey])
  return Pool(images, digits.target.astype(np.int32), [str(d) for d in range(10)])


def list_files(root: str) -> list[str]:
  """Every non-hidden file under `root`, recursively, in a stable sorted order."""
  paths = []
  for directory, subdirs, files in os.walk(root):
    subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
    paths += [os.path.join(directory, f) for f in sorted(files) if not f.startswith(".")]
  return paths


def load_image_files(paths: list[str], image_size: int):
  """(uint8 (N, S, S, 3) of the readable files, the paths that decoded, those that did not)."""
  images, kept, skipped = [], [], []
  for path in paths:
    image = load_image_file(path, image_size)
    (skipped if image is None else kept).append(path)
    if image is not None:
      images.append(image)
  empty = np.zeros((0, image_size, image_size, 3), np.uint8)
  return (np.stack(images) if images else empty), kept, skipped


def label_files(root: str, label_regex: str):
  """Returns (paths, label strings, skip entries of unlabelled files, class names found)."""
  if not os.path.isdir(root):
    raise MissingPathError(f"data.path: {root!r} is not a directory")
  paths, names, unlabelled = [], [], []
  if label_regex:
    pattern = re.compile(label_regex)
    for path in list_files(root):
      match = pattern.match(os.path.basename(path))
      if match and match.groups():
        paths.append(path)
        names.append(match.group(1))
      else:
        unlabelled.append({"path": path, "reason": "name does not match data.label_regex"})
    return paths, names, unlabelled, sorted(set(names))
  class_dirs = sorted(
    d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
  )
  if not class_dirs:
    raise DataError(
      f"data.path: {root!r} has no class subfolders (set data.label_regex for a flat folder)"
    )
  for name in class_dirs:
    for path in list_files(os.path.join(root, name)):
      paths.append(path)
      names.append(name)
  unlabelled = [
    {"path": os.path.join(root, f), "reason": "not in a class folder"}
    for f in sorted(os.listdir(root))
    if os.path.isfile(os.path.join(root, f)) and not f.startswith(".")
  ]
  return paths, names, unlabelled, class_dirs


def load_folder_pool(
  root: str, image_size: int, label_regex: str, workers: int, class_names: list[str] | None = None
) -> Pool:
  """Class-per-subfolder (or regex-labelled flat) folder; bad files are skipped and counted."""
  paths, names, unlabelled, found = label_files(root, label_regex)
  images, kept, reasons = decode_all(paths, image_size, workers, f"decoding {root}")
  class_names, labels = class_labels(root, names, kept, found, class_names)
  skipped = [
    {"path": p, "reason": r} for p, k, r in zip(paths, kept, reasons) if not k
  ] + unlabelled
  return Pool(images[kept], labels[kept], class_names, skipped)


def class_labels(root: str, names, kept, found: list[str], class_names: list[str] | None):
  """(class names, int32 label of every file) of a folder whose files are labelled `names` and
  readable where `kept`; `class_names` None: the folder's own (`found`), else the training
  data's. DataError for a class folder with no readable image, a class the training data lacks,
  or no readable image at all."""
  if class_names is None:
    class_names = found
    # A class folder with no file at all counts too: dropping it would silently change
    # the number of classes.
    readable = {n for n, k in zip(names, kept) if k}
    empty = [n for n in found if n not in readable]
    if empty:
      raise DataError(f"{root}: class folder(s) with no readable image: {', '.join(empty)}")
  else:
    unknown = sorted(set(names) - set(class_names))
    if unknown:
      raise DataError(f"{root}: classes not in the training data: {', '.join(unknown)}")
  if not np.any(kept):
    raise DataError(f"{root}: no readable image found")
  index = {name: i for i, name in enumerate(class_names)}
  return class_names, np.array([index[n] for n in names], np.int32)


def load_tfds_pool(name: str, split: str, image_size: int, data_dir: str, workers: int) -> Pool:
  # TensorFlow is imported only here, where TFDS reads a dataset (not on a cache hit): keep it
  # off any accelerator memory.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.config.set_visible_devices([], "GPU")
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  builder = tfds.builder(name, data_dir=data_dir or None)
  tfds_prepare.prepare_tfds(builder)
  label_feature = builder.info.features["label"]
  dataset = builder.as_dataset(split=split, shuffle_files=False, as_supervised=True)
  images, labels = [], []
  with futures.ThreadPoolExecutor(max(1, workers)) as pool:
    pending = []
    for image, label in tfds.as_numpy(dataset):
      pending.append(pool.submit(_fit_array, image, image_size))
      labels.append(int(label))
    images = [p.result() for p in pending]
  return Pool(np.stack(images), np.array(labels, np.int32), list(label_feature.names))


def _fit_array(array: np.ndarray, size: int) -> np.ndarray:
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  return fit_image(Image.fromarray(array), size)
