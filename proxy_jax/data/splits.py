"""The fixed, seeded train/val(/test) split, drawn once per workdir and never redrawn.

The draw depends only on `data.split_seed`, so every training seed and every arm of a study
sees the same split (the thesis code redrew an unseeded split every schedule round, leaking
validation images into training). Each class is apportioned in proportion to its size.
"""

import hashlib
import os

from absl import logging
import jax
import numpy as np

from proxy_jax.core import errors, io_utils
from proxy_jax.core.errors import DataError, WorkdirError
from proxy_jax.core.io_utils import atomic_write_json

MAX_REPORTED_CLASSES = 20


def class_quotas(counts: np.ndarray, fraction: float, available: np.ndarray, key) -> np.ndarray:
  """Per-class sample counts adding up to round(fraction * total), as proportional as possible.

  Largest-remainder apportionment: each class gets floor(fraction * n_c), and the examples
  still owed go to the classes with the largest remainders (seeded ties). Per-class rounding
  alone would give an empty validation set for datasets with many small classes.
  """
  exact = fraction * counts
  quotas = np.minimum(np.floor(exact).astype(np.int64), available)
  owed = int(round(fraction * counts.sum())) - int(quotas.sum())
  tie_break = np.asarray(jax.random.uniform(key, (len(counts),)))
  for cls in np.lexsort((tie_break, -(exact - quotas))):
    if owed <= 0:
      break
    if quotas[cls] < available[cls]:
      quotas[cls] += 1
      owed -= 1
  return quotas


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], key) -> list[np.ndarray]:
  """Per class, a seeded permutation cut by `fractions`; returns [rest, part_0, part_1, ...].

  Each part holds round(fraction * N) examples apportioned over the classes in proportion to
  their size (`class_quotas`); every returned index array is sorted.
  """
  classes, counts = np.unique(labels, return_counts=True)
  available = counts.copy()
  quotas = []
  for i, fraction in enumerate(fractions):
    quota_key = jax.random.fold_in(jax.random.fold_in(key, 0), i)
    quotas.append(class_quotas(counts, fraction, available, quota_key))
    available = available - quotas[-1]
  parts = [[] for _ in range(len(fractions) + 1)]
  for c, cls in enumerate(classes):
    members = np.flatnonzero(labels == cls)
    class_key = jax.random.fold_in(jax.random.fold_in(key, 1), int(cls))
    members, start = members[np.asarray(jax.random.permutation(class_key, len(members)))], 0
    for i in range(len(fractions)):
      parts[i + 1].append(members[start : start + quotas[i][c]])
      start += quotas[i][c]
    parts[0].append(members[start:])
  return [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]


def _pool_fingerprint(pool) -> str:
  return hashlib.sha256(np.ascontiguousarray(pool.labels).tobytes()).hexdigest()[:16]


def _split_parameters(settings, carve_test: bool) -> dict:
  return {
    "split_seed": settings.data.split_seed,
    "val_fraction": settings.data.val_fraction,
    "test_fraction": settings.data.test_fraction if carve_test else 0.0,
    "max_examples": settings.data.max_examples,
  }


SPLIT_FIX = (
  "it records the run's train/val/test split: restore it from a backup of the "
  "workdir, or delete it to draw the split again (the draw depends only on "
  "data.split_seed and the data, so unchanged data gives the same split)"
)


def read_split(path: str) -> tuple[dict, dict]:
  """(split.json's content, {split name: int64 indices}); DamagedFileError if it is damaged."""
  split = io_utils.read_json(path, dict, SPLIT_FIX)
  if "pool_fingerprint" not in split or not isinstance(split.get("parameters", {}), dict):
    raise errors.DamagedFileError(path, "no pool_fingerprint or parameters entry", SPLIT_FIX)
  if not (isinstance(split.get("indices"), dict) and {"train", "val"} <= set(split["indices"])):
    raise errors.DamagedFileError(path, "no train/val indices", SPLIT_FIX)
  try:
    indices = {k: np.asarray(v, np.int64) for k, v in split["indices"].items()}
  except (TypeError, ValueError, OverflowError) as error:
    raise errors.DamagedFileError(
      path, f"indices that are not integers ({error})", SPLIT_FIX
    ) from error
  if any(v.ndim != 1 for v in indices.values()):
    raise errors.DamagedFileError(path, "indices that are not lists of integers", SPLIT_FIX)
  return split, indices


def fixed_split(pool, settings, workdir: str, carve_test: bool) -> dict:
  """The train/val(/test) pool indices: read from workdir/split.json, else drawn and written.

  The draw depends only on `data.split_seed` (not the training seed), so every seed and every
  arm of an experiment sees the same split; a recorded split is never redrawn.
  """
  path = os.path.join(workdir, "split.json")
  fingerprint = _pool_fingerprint(pool)
  parameters = _split_parameters(settings, carve_test)
  if os.path.exists(path):
    split, indices = read_split(path)
    if "parameters" not in split:
      raise errors.DamagedFileError(path, "no parameters entry", SPLIT_FIX)
    if split["pool_fingerprint"] != fingerprint:
      raise WorkdirError(
        f"{path} was drawn for different data (fingerprint "
        f"{split['pool_fingerprint']} vs {fingerprint}); use a new workdir"
      )
    for name, value in parameters.items():
      if split["parameters"].get(name) != value:
        raise WorkdirError(
          f"{path} was drawn with data.{name}="
          f"{split['parameters'].get(name)!r}, not {value!r}; use a new workdir"
        )
    for name, ids in indices.items():
      if len(ids) and (ids.min() < 0 or ids.max() >= len(pool.labels)):
        raise errors.DamagedFileError(
          path, f"its {name} indices point outside the {len(pool.labels)} examples", SPLIT_FIX
        )
    return indices
  key = jax.random.fold_in(jax.random.key(settings.data.split_seed), 0x5EED)
  candidates = np.arange(len(pool.labels))
  if settings.data.max_examples:
    order = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), len(candidates)))
    candidates = np.sort(order[: settings.data.max_examples])
  fractions = (settings.data.val_fraction,) + ((settings.data.test_fraction,) if carve_test else ())
  parts = stratified_split(pool.labels[candidates], fractions, jax.random.fold_in(key, 2))
  indices = {"train": candidates[parts[0]], "val": candidates[parts[1]]}
  if carve_test:
    indices["test"] = candidates[parts[2]]
  check_split_sizes(indices, pool, settings)
  atomic_write_json(
    path,
    {
      "pool_fingerprint": fingerprint,
      "parameters": parameters,
      "indices": {k: v.tolist() for k, v in indices.items()},
    },
  )
  return indices


_SPLIT_FIELDS = {
  "train": "lower data.val_fraction / data.test_fraction or raise data.max_examples (0 = all)",
  "val": "raise data.val_fraction or data.max_examples (0 = all)",
  "test": "raise data.test_fraction or data.max_examples (0 = all), or set data.test_fraction=0 "
  "for no test split",
}


def check_split_sizes(indices: dict, pool, settings) -> None:
  """Refuses a split that is used but empty, before any training; warns about missing classes.

  Train and validation are always used; a carved test split is used when test_fraction > 0.
  """
  total = len(indices["train"]) + len(indices["val"]) + len(indices.get("test", ()))
  used = ["train", "val"] + (
    ["test"] if settings.data.test_fraction > 0 and "test" in indices else []
  )
  for name in used:
    if not len(indices[name]):
      raise DataError(
        f"the {name} split is empty ({total} examples with data.max_examples="
        f"{settings.data.max_examples}, data.val_fraction={settings.data.val_fraction}, "
        f"data.test_fraction={settings.data.test_fraction}): {_SPLIT_FIELDS[name]}"
      )
  missing = sorted(set(range(len(pool.class_names))) - set(pool.labels[indices["val"]].tolist()))
  if missing:
    names = ", ".join(pool.class_names[c] for c in missing[:MAX_REPORTED_CLASSES])
    logging.warning(
      "%d of %d classes have no validation example (%s%s); raise "
      "data.val_fraction for a per-class validation accuracy.",
      len(missing),
      len(pool.class_names),
      names,
      ", ..." if len(missing) > MAX_REPORTED_CLASSES else "",
    )
