"""Atomic file writes: a kill at any moment leaves the old file or the new one, never half."""

import json
import os
import tempfile

import numpy as np


def atomic_write(path: str, write, mode: str):
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-" + os.path.basename(path))
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write_json(path: str, obj) -> None:
  atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True, default=_jsonable), "w")


def atomic_write_text(path: str, text: str) -> None:
  atomic_write(path, lambda f: f.write(text), "w")


def atomic_save_npy(path: str, array) -> None:
  atomic_write(path, lambda f: np.save(f, np.asarray(array)), "wb")


def _jsonable(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")
