"""The proxy bank: proxy images (uint8, at the stored side) by training-example id.

A run's bank lives on disk, in `WORKDIR/bank/`, and only grows: each proxy step appends one file
per process, `step-0003-process-1-of-2.npy`, holding the proxies that process computed (the ids
its devices owned in the step's passes, `proxy_rows`; every process knows every list), written
atomically, so no process needs another's proxies in RAM. A file is
rewritten only when the same step runs again after an interruption, and then with the same
bytes. The bank's index maps each id to (file, row); a checkpoint holds that index and each
referenced file's checksum, not the images, so a proxy is written once however many checkpoints
keep it, and a checkpoint costs a few bytes per proxy. The files are read as memory maps: the bank
costs host RAM only for the pages a batch touches.

Since a step's files are complete before the checkpoint that references them is begun, a kill
between the two loses nothing: the resumed run restores the previous checkpoint, runs the step
again and writes the same files. A referenced file that is missing or whose bytes changed is
an error naming it.

Without a folder the bank keeps its files in RAM (tools and tests; with several processes each
gathers every share); checkpoints written before
the bank moved to disk held the images themselves, and restore into the bank here.
"""

import os

import jax
from jax.experimental import multihost_utils
import numpy as np

from proxy_jax.core import digests, io_utils, parallel
from proxy_jax.core.errors import DamagedFileError

FOLDER = "bank"
# The meta item's list of the files a checkpoint's bank index refers to, by position.
FILES_KEY = "bank_files"
_FIX = "restore an earlier copy of the workdir's bank folder, or train again in a new --workdir"


def _gather_shares(owned, images) -> np.ndarray:
  """Every process's images (each its `owned` list's), concatenated in process order."""
  longest = max(len(ids) for ids in owned)
  padded = np.zeros((longest, *images.shape[1:]), np.uint8)
  padded[: len(images)] = images
  gathered = multihost_utils.process_allgather(padded)
  return np.concatenate([gathered[p][: len(ids)] for p, ids in enumerate(owned)])


class ProxyBank:
  """Proxies by id: on disk under `folder` (a run's bank), or in RAM when `folder` is None."""

  def __init__(self, folder: str | None = None, process: tuple[int, int] | None = None):
    self.folder = folder
    self._process = process or (jax.process_index(), jax.process_count())
    self._files: dict[str, np.ndarray] = {}  # name -> uint8 (rows, L, L, 3), memmap on disk
    self._sums: dict[str, str] = {}  # name -> checksum of the file, on disk
    self._where: dict[int, tuple[str, int]] = {}  # id -> (file name, row)

  def __len__(self):
    return len(self._where)

  def __contains__(self, example_id):
    return int(example_id) in self._where

  def ids(self) -> np.ndarray:
    return np.array(sorted(self._where), np.int32)

  def get(self, example_id) -> np.ndarray:
    name, row = self._where[int(example_id)]
    return self._files[name][row]

  def store(self, ids, images, replace_all: bool = False, label: str = "memory") -> None:
    """Adds (or overwrites) proxies by id, every process passing all of them; on disk each
    process writes its `parallel.process_share` (`store_shares`). `replace_all` first drops
    every other proxy from the index."""
    ids, images = np.asarray(ids), np.asarray(images, np.uint8)
    index, count = self._process
    shares = [parallel.process_share(np.arange(len(ids)), (p, count)) for p in range(count)]
    self.store_shares([ids[share] for share in shares], images[shares[index]], replace_all, label)

  def store_shares(self, owned, images, replace_all: bool = False, label: str = "memory") -> None:
    """Adds (or overwrites) proxies by id when each process holds only its own: `owned[p]` are
    the ids process p holds (every process knows every list), `images` this process's, in its
    list's order. On disk each process writes its own file, named by `label`; in RAM every
    process gathers every share. `replace_all` first drops every other proxy from the index."""
    owned, images = [np.asarray(ids) for ids in owned], np.asarray(images, np.uint8)
    index, count = self._process
    if len(owned) != count or len(images) != len(owned[index]):
      raise ValueError(
        f"{len(owned)} id lists for {count} processes, or {len(images)} images for the "
        f"{len(owned[index]) if index < len(owned) else '?'} ids of process {index}"
      )
    if replace_all:
      self._where.clear()
    if self.folder is None:
      name = f"{label}-{len(self._files)}"
      self._files[name] = _gather_shares(owned, images) if count > 1 else images.copy()
      self._where.update((int(i), (name, row)) for row, i in enumerate(np.concatenate(owned)))
      return
    names = [f"{label}-process-{p}-of-{count}.npy" for p in range(count)]
    os.makedirs(self.folder, exist_ok=True)
    io_utils.atomic_save_npy(os.path.join(self.folder, names[index]), images)
    if count > 1:  # Every process's share is on disk before any process reads one.
      multihost_utils.sync_global_devices(f"proxy bank {label}")
    for name, ids in zip(names, owned):
      self._open(name)
      self._where.update((int(i), (name, row)) for row, i in enumerate(ids))

  def __getstate__(self):  # A stream's worker processes map the files again themselves.
    if self.folder is None:
      return self.__dict__
    return {k: v for k, v in self.__dict__.items() if k != "_files"}

  def __setstate__(self, state):
    self.__dict__.update(state)
    if "_files" not in state:
      self._files = {
        name: np.load(os.path.join(self.folder, name), mmap_mode="r") for name in self._sums
      }

  def _open(self, name: str, checksum: str | None = None) -> None:
    path = os.path.join(self.folder, name)
    if not os.path.exists(path):
      raise DamagedFileError(path, "a proxy bank file the checkpoint refers to is missing", _FIX)
    found = digests.checksum_of_file(path)
    if checksum is not None and found != checksum:
      raise DamagedFileError(path, "its bytes do not match the checkpoint's checksum", _FIX)
    self._sums[name] = found
    self._files[name] = np.load(path, mmap_mode="r")

  def swap(self, ids, images) -> np.ndarray:
    """Returns `images` with every banked id replaced by its proxy (modifies in place)."""
    for row, example_id in enumerate(np.asarray(ids)):
      where = self._where.get(int(example_id))
      if where is not None:
        images[row] = self._files[where[0]][where[1]]
    return images

  def holds(self, ids) -> np.ndarray:
    """Bool per id: whether the bank has a proxy for it (what `swap` replaces)."""
    return np.array([int(i) in self._where for i in np.asarray(ids)], bool)

  def to_arrays(self) -> dict:
    """{"ids", "images"}: every proxy, read into RAM, in id order."""
    ids = self.ids()
    if not len(ids):
      return {"ids": ids, "images": np.zeros((0,), np.uint8)}
    return {"ids": ids, "images": np.stack([self.get(i) for i in ids])}

  # ---------------------------------------------------------------- checkpoints

  def checkpoint_item(self) -> tuple[dict, list[dict]]:
    """(arrays for the checkpoint, the meta item's file list). On disk: the index (ids, file,
    row) and the checksum of each file it refers to; in RAM: the images themselves."""
    if self.folder is None:
      return self.to_arrays(), []
    ids = self.ids()
    names = sorted({self._where[int(i)][0] for i in ids})
    number = {name: n for n, name in enumerate(names)}
    file = np.array([number[self._where[int(i)][0]] for i in ids], np.int32)
    row = np.array([self._where[int(i)][1] for i in ids], np.int32)
    files = [{"name": name, "checksum": self._sums[name]} for name in names]
    return {"ids": ids, "file": file, "row": row}, files

  @classmethod
  def from_checkpoint(cls, item: dict | None, files: list[dict], folder: str) -> "ProxyBank":
    """The bank a checkpoint recorded, its files checked against their checksums. An item of
    images (a checkpoint from before the bank was on disk) is written to the folder once."""
    bank = cls(folder)
    if item is None:
      return bank
    if "images" in item:
      bank.store(item["ids"], item["images"], label="from-checkpoint")
      return bank
    for entry in files:
      bank._open(entry["name"], entry["checksum"])
    names = [entry["name"] for entry in files]
    bank._where = {
      int(i): (names[int(f)], int(r)) for i, f, r in zip(item["ids"], item["file"], item["row"])
    }
    return bank
