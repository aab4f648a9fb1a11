"""Which process holds which of a proxy step's results, and how it reads its chosen examples.

A proxy step's passes split every chunk over the processes (`dispatch`): the process whose
share of a chunk holds a row owns that row's proxy and map. Each process reads from its own
devices the rows it owns, reads from the dataset only those examples (and, for a pass over the
chosen examples, only its share of each chunk), and keeps them; the lists of who owns what
follow from the chunking alone, so every process knows every list (the bank indexes every
process's file with them) without anything the size of an image crossing between processes.
"""

import dataclasses

import jax
import numpy as np

from proxy_jax.images import preprocess


@dataclasses.dataclass(frozen=True)
class Rows:
  """Results of some chosen examples computed by one pass: `ids` (global), `owner` (the process
  that computed each), and this process's rows (`mine`) of stored images, proxies and maps."""

  ids: np.ndarray
  owner: np.ndarray
  mine: np.ndarray
  stored: np.ndarray
  proxies: np.ndarray  # Centre crops, uint8.
  maps: np.ndarray  # uint8.


@dataclasses.dataclass(frozen=True)
class Local:
  """This process's rows of a step's chosen examples, in id order, and who owns which ids."""

  owned: tuple  # Per process, the ids it holds (sorted): this process's are the rows below.
  originals: np.ndarray
  proxies: np.ndarray
  maps: np.ndarray


def merged(parts: list, split, side: int) -> Local:
  """The passes' rows as one `Local`, this process's rows in id order."""

  def held_by(process: int) -> np.ndarray:
    ids = [p.ids[p.owner == process] for p in parts]
    return np.sort(np.concatenate(ids)).astype(np.int32) if ids else np.zeros(0, np.int32)

  owned = tuple(held_by(n) for n in range(jax.process_count()))
  stored_side = split.images.shape[1]
  mine = np.concatenate([p.mine for p in parts] or [np.zeros(0, np.int64)])
  order = np.argsort(mine, kind="stable")

  def joined(name, shape):
    arrays = [getattr(p, name) for p in parts]
    return np.concatenate(arrays)[order] if arrays else np.zeros((0, *shape), np.uint8)

  stored = joined("stored", (stored_side, stored_side, 3))
  proxies = joined("proxies", (side, side, 3))
  maps = joined("maps", (side, side))
  return Local(
    owned,
    np.ascontiguousarray(preprocess.center_crop(stored, side)),
    preprocess.paste_center(stored, proxies),
    maps.astype(np.float32) / 255.0,
  )


def stored_images(split, bank, ids) -> np.ndarray:
  """The stored images of `ids` (a copy), banked ones replaced by their proxies if `bank`."""
  stored = np.array(split.images[ids])
  return bank.swap(ids, stored) if bank is not None else stored


class ChosenCrops:
  """The centre crops of `ids` that their CAMs are taken on, read only when a pass asks for
  rows, so each process reads only its share of each chunk; the stored images it read are
  kept for pasting the proxies back."""

  def __init__(self, split, bank, ids, side: int):
    self.split, self.bank, self.ids, self.side = split, bank, ids, side
    self.shape, self.dtype = (len(ids), side, side, 3), np.dtype(np.uint8)
    self.kept: dict[int, np.ndarray] = {}

  def __len__(self):
    return len(self.ids)

  def __getitem__(self, rows) -> np.ndarray:
    single = np.ndim(rows) == 0
    rows = np.atleast_1d(np.asarray(rows))
    stored = stored_images(self.split, self.bank, self.ids[rows])
    self.kept.update(zip(rows.tolist(), stored))
    crops = np.ascontiguousarray(preprocess.center_crop(stored, self.side))
    return crops[0] if single else crops

  def stored(self, rows) -> np.ndarray:
    """The stored images read for `rows` (positions in `ids`)."""
    shape = (0, *self.split.images.shape[1:])
    return np.stack([self.kept[int(r)] for r in rows]) if len(rows) else np.zeros(shape, np.uint8)
