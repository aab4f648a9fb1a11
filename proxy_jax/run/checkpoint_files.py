"""What a checkpoint's files must hold, and how a failure to read them is named.

`checkpoints.RunCheckpoints` restores a checkpoint only after these checks: its arrays have the
run's shapes and dtypes, its bookkeeping is of its epoch, its proxy bank holds what the
bookkeeping counts, and every file matches the manifest written with it (`write_manifest`,
`read_manifest`). A failure becomes one word for the folder a damaged checkpoint is moved to
(`damage_kind`) and one short line for the log (`cause`).
"""

import contextlib
import gc
import os
import re
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from proxy_jax.core import digests, errors, io_utils

MAX_CAUSE_CHARS = 300


class Mismatch(ValueError):
  """A checkpoint that reads but does not fit the run; `kind` as in DamagedCheckpointError."""

  def __init__(self, kind: str, message: str):
    super().__init__(message)
    self.kind = kind


def damage_kind(error: BaseException, cause: str) -> str:
  """A one-word label of a restore failure, for the name of the folder it is moved to."""
  if isinstance(error, Mismatch):
    return error.kind
  text = cause.lower()
  for kind, markers in (
    ("missing", ("not_found", "no such file", "does not exist")),
    (
      "truncated",
      (
        "out_of_range",
        "truncated",
        "data_loss",
        "byte range",
        "encoded length",
        "unexpected end",
        "eof",
      ),
    ),
    ("shape", ("shape",)),
    ("dtype", ("dtype",)),
    ("metadata", ("json", "metadata", "expecting", "codec", "decode")),
  ):
    if any(marker in text for marker in markers):
      return kind
  return "unreadable"


def cause(error: BaseException) -> str:
  """The root cause of an Orbax/TensorStore error as one short line (no specs, no paths of
  source files): the innermost chained exception says what is wrong with which file."""
  root = error
  for _ in range(20):  # Chains are short; the bound only guards against a cycle.
    inner = root.__cause__ or (None if root.__suppress_context__ else root.__context__)
    if inner is None:
      break
    root = inner
  text = (str(root).strip() or type(root).__name__).splitlines()[0]
  text = re.split(r" \[(?:tensorstore_spec|source locations)=", text)[0]
  text = text.split(" See full TensorStore details")[0]
  if len(text) > MAX_CAUSE_CHARS:
    text = text[:MAX_CAUSE_CHARS] + "..."
  # TensorStore's messages start with their status (OUT_OF_RANGE: ...); others get their type.
  return (
    text if type(root) in (Exception, ValueError, Mismatch) else (f"{type(root).__name__}: {text}")
  )


@contextlib.contextmanager
def quiet_async_leftovers():
  """Orbax reads arrays in asyncio tasks: when one fails, the others' coroutines are dropped and
  Python prints each as an "Exception ignored" traceback when it is collected. Collected here,
  within the failed attempt, they are swallowed; the failure itself is reported once."""
  hook = sys.unraisablehook
  sys.unraisablehook = lambda unraisable: None
  try:
    yield
  except Exception:
    gc.collect()
    raise
  finally:
    sys.unraisablehook = hook


def check_arrays(what: str, stored, template) -> None:
  """Mismatch naming the first array whose stored shape or dtype is not the template's."""
  stored = ocp.tree.to_flat_dict(getattr(stored, "tree", stored))
  wanted = {k: v for k, v in ocp.tree.to_flat_dict(template).items() if hasattr(v, "shape")}
  missing = sorted(set(wanted) - set(stored))
  if missing:
    raise Mismatch("metadata", f"{what} has no array {'.'.join(map(str, missing[0]))}")
  for key, want in wanted.items():
    have, name = stored[key], ".".join(map(str, key))
    if tuple(have.shape) != tuple(want.shape):
      raise Mismatch(
        "shape",
        f"{what} array {name} has shape {tuple(have.shape)}, the run needs {tuple(want.shape)}",
      )
    if hasattr(want, "dtype") and np.dtype(have.dtype) != np.dtype(want.dtype):
      raise Mismatch(
        "dtype",
        f"{what} array {name} has dtype {np.dtype(have.dtype)}, the run "
        f"needs {np.dtype(want.dtype)}",
      )


def check_meta(meta, number: int, numbered_by: str = "epoch") -> None:
  """The meta item is the bookkeeping of checkpoint `number` (its `numbered_by` field)."""
  if not isinstance(meta, dict) or meta.get(numbered_by) != number:
    raise Mismatch("metadata", f"its meta item is not the bookkeeping of {numbered_by} {number}")


def check_bank(bank: dict, meta: dict) -> None:
  """The checkpoint's proxy bank item against its meta item: an index of `bank_size` ids into
  the listed bank files (or, from before the bank was on disk, the images themselves)."""
  ids, count = bank.get("ids"), meta.get("bank_size")
  if ids is None or not np.issubdtype(ids.dtype, np.integer) or ids.shape != (count,):
    raise Mismatch("metadata", f"its proxy bank does not hold the {count} ids its meta item counts")
  if "images" in bank:
    images = bank["images"]
    if images.dtype != np.uint8 or images.ndim != 4 or len(images) != count:
      raise Mismatch("metadata", f"its proxy bank does not hold {count} uint8 images")
    return
  files = meta.get("bank_files")
  file, row = bank.get("file"), bank.get("row")
  if (
    not isinstance(files, list)
    or file is None
    or row is None
    or file.shape != ids.shape
    or row.shape != ids.shape
    or (count and not 0 <= file.min() <= file.max() < len(files))
    or (count and row.min() < 0)
  ):
    raise Mismatch("metadata", "its proxy bank index does not refer to the bank files it lists")


def tree_bytes(tree) -> int:
  return sum(int(getattr(x, "nbytes", 0)) for x in jax.tree.leaves(tree))


def write_manifest(directory: str) -> None:
  io_utils.atomic_write_json(
    os.path.join(directory, digests.MANIFEST), {"files": digests.manifest_of(directory)}
  )


def read_manifest(path: str) -> dict:
  """{relative path: sha256} of a manifest; digests.Mismatch if the manifest is damaged."""
  try:
    listed = io_utils.read_json(path, dict)["files"]
    if not isinstance(listed, dict):
      raise TypeError("its files entry is not a JSON object")
  except (errors.DamagedFileError, KeyError, TypeError) as error:
    raise digests.Mismatch(
      path, f"the manifest itself is damaged ({getattr(error, 'cause', error)})"
    ) from error
  return listed
