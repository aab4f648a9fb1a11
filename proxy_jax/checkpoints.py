"""Orbax checkpoints of the whole run: train state, proxy bank and loop bookkeeping.

One checkpoint per completed epoch boundary (its step number is the count of completed epochs):
`state` (params, optimizer state, batch stats, step), `meta` (JSON: epoch, proxy steps done,
history) and, when non-empty, `bank` (proxy ids and uint8 images). Orbax writes into a temporary
directory and renames it when complete, so a kill mid-save leaves the previous checkpoint. A
write that fails (disk full, lost mount) raises `CheckpointWriteError` naming the directory, the
cause and the last complete checkpoint, which is left intact.

A checkpoint that cannot be restored (a missing or truncated file, unreadable metadata, arrays
of another shape or dtype than the run's) raises `DamagedCheckpointError` naming it, the kind of
damage and the cause. `restore_newest` then falls back to the newest one that restores: each
damaged newer one is logged in one line and moved aside to `checkpoints/damaged-<epoch>-<kind>`
(never deleted; Orbax ignores the name), so the run continues from the older one, and, resuming
being deterministic, ends exactly as an uninterrupted run. If none restores it raises
`CheckpointRestoreError` and leaves every checkpoint where it is.
"""

import contextlib
import dataclasses
import gc
import os
import re
import sys
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from proxy_jax import errors

DAMAGED_PREFIX = "damaged-"
MAX_CAUSE_CHARS = 300


class CheckpointWriteError(errors.UserError, RuntimeError):
  """A checkpoint could not be written; the previous complete one is intact."""


class DamagedCheckpointError(errors.UserError, ValueError):
  """One checkpoint cannot be restored; `kind` is missing, truncated, shape, dtype, metadata,
  inconsistent or unreadable."""

  def __init__(self, directory: str, epoch: int, kind: str, cause: str):
    super().__init__(f"checkpoint {epoch} in {directory} cannot be restored ({cause})")
    self.epoch, self.kind, self.cause = epoch, kind, cause


class CheckpointRestoreError(errors.UserError, RuntimeError):
  """No checkpoint of the run restores; all of them are left as they are."""


@dataclasses.dataclass
class Restored:
  epoch: int
  state: Any
  meta: dict
  bank: dict | None


class Mismatch(ValueError):
  """A checkpoint that reads but does not fit the run; `kind` as in DamagedCheckpointError."""

  def __init__(self, kind: str, message: str):
    super().__init__(message)
    self.kind = kind


def _damage_kind(error: BaseException, cause: str) -> str:
  """A one-word label of a restore failure, for the name of the folder it is moved to."""
  if isinstance(error, Mismatch):
    return error.kind
  text = cause.lower()
  for kind, markers in (
      ("missing", ("not_found", "no such file", "does not exist")),
      ("truncated", ("out_of_range", "truncated", "data_loss", "byte range", "encoded length",
                     "unexpected end", "eof")),
      ("shape", ("shape",)), ("dtype", ("dtype",)),
      ("metadata", ("json", "metadata", "expecting", "codec", "decode"))):
    if any(marker in text for marker in markers):
      return kind
  return "unreadable"


def _cause(error: BaseException) -> str:
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
  return text if type(root) in (Exception, ValueError, Mismatch) else (
      f"{type(root).__name__}: {text}")


@contextlib.contextmanager
def _quiet_async_leftovers():
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


def _check_arrays(what: str, stored, template) -> None:
  """Mismatch naming the first array whose stored shape or dtype is not the template's."""
  stored = ocp.tree.to_flat_dict(getattr(stored, "tree", stored))
  wanted = {k: v for k, v in ocp.tree.to_flat_dict(template).items() if hasattr(v, "shape")}
  missing = sorted(set(wanted) - set(stored))
  if missing:
    raise Mismatch("metadata", f"{what} has no array {'.'.join(map(str, missing[0]))}")
  for key, want in wanted.items():
    have, name = stored[key], ".".join(map(str, key))
    if tuple(have.shape) != tuple(want.shape):
      raise Mismatch("shape", f"{what} array {name} has shape {tuple(have.shape)}, the run "
                     f"needs {tuple(want.shape)}")
    if hasattr(want, "dtype") and np.dtype(have.dtype) != np.dtype(want.dtype):
      raise Mismatch("dtype", f"{what} array {name} has dtype {np.dtype(have.dtype)}, the run "
                     f"needs {np.dtype(want.dtype)}")


def _check_meta(meta, epoch: int) -> None:
  if not isinstance(meta, dict) or meta.get("epoch") != epoch:
    raise Mismatch("metadata", f"its meta item is not the bookkeeping of epoch {epoch}")


def _check_bank(bank: dict, meta: dict) -> None:
  ids, images = bank.get("ids"), bank.get("images")
  if (ids is None or images is None or images.dtype != np.uint8 or images.ndim != 4
      or not np.issubdtype(ids.dtype, np.integer) or ids.shape != (len(images),)
      or len(ids) != meta.get("bank_size")):
    raise Mismatch("metadata", f"its proxy bank does not hold the {meta.get('bank_size')} "
                   "uint8 images its meta item counts")


def _unused(path: str) -> str:
  """`path`, else `path-2`, `path-3`, ...: the first that does not exist (nothing is replaced)."""
  candidate, number = path, 1
  while os.path.exists(candidate):
    number += 1
    candidate = f"{path}-{number}"
  return candidate


class RunCheckpoints:
  """Thin wrapper over `ocp.CheckpointManager` for the three items of a run."""

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    # Handlers named up front so that an item's metadata can be read before restoring it.
    handlers = {"state": ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
                "bank": ocp.StandardCheckpointHandler()}
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_handlers=handlers)

  def latest_epoch(self) -> int | None:
    return self.manager.latest_step()

  def complete_epochs(self) -> list[int]:
    """Epochs whose checkpoint is complete on disk (Orbax renames a finished save to its step)."""
    if not os.path.isdir(self.directory):
      return []
    return sorted(int(name) for name in os.listdir(self.directory) if name.isdigit())

  @contextlib.contextmanager
  def _write_errors(self, what: str):
    try:
      yield
    except OSError as error:
      try:  # An earlier save may still be finishing in the background.
        self.manager.wait_until_finished()
      except Exception:  # pylint: disable=broad-except
        pass  # It failed too: it is simply not complete.
      complete = self.complete_epochs()
      last = (f"epoch {complete[-1]} ({os.path.join(self.directory, str(complete[-1]))})"
              if complete else "none (no epoch was saved yet)")
      cause = error.strerror or str(error)
      raise CheckpointWriteError(
          f"could not write {what} to {self.directory}: {cause}. The last complete checkpoint "
          f"is {last}; free space and run the same command to resume from it") from error

  def save(self, epoch: int, state, meta: dict, bank_arrays: dict | None) -> None:
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    # Orbax cannot store zero-size arrays, so an empty bank is simply absent.
    if bank_arrays is not None and len(bank_arrays["ids"]):
      items["bank"] = ocp.args.StandardSave(bank_arrays)
    with self._write_errors(f"the checkpoint of epoch {epoch}"):
      self.manager.save(epoch, args=ocp.args.Composite(**items))

  def wait(self) -> None:
    """Blocks until pending saves are on disk (a failed background write raises here)."""
    with self._write_errors("a checkpoint"):
      self.manager.wait_until_finished()

  def restore(self, epoch: int, state_template, steps_per_epoch: int | None = None):
    """(state, meta, bank_arrays or None); the state keeps the template's shardings.

    Raises DamagedCheckpointError if the checkpoint cannot be read, its arrays do not match the
    template's shapes and dtypes, or (given `steps_per_epoch`) its state's step is not the
    epoch's last.
    """
    try:
      with _quiet_async_leftovers():
        return self._restore(epoch, state_template, steps_per_epoch)
    except Exception as error:  # pylint: disable=broad-except
      # Orbax and TensorStore raise bare Exceptions, ValueErrors, JSON and OS errors alike.
      cause = _cause(error)
      raise DamagedCheckpointError(self.directory, epoch, _damage_kind(error, cause),
                                   cause) from error

  def _restore(self, epoch: int, state_template, steps_per_epoch: int | None):
    meta = self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = meta["meta"]
    _check_meta(meta, epoch)
    stored = self.manager.item_metadata(epoch)
    _check_arrays("its state", stored["state"], state_template)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if meta.get("bank_size", 0):
      items["bank"] = ocp.args.StandardRestore()
    restored = self.manager.restore(epoch, args=ocp.args.Composite(**items))
    bank = None
    if "bank" in items:
      bank = {k: np.asarray(v) for k, v in restored["bank"].items()}
      _check_bank(bank, meta)
    # The loop counts steps on the host from the epoch; a mismatch would shift every key.
    step = int(restored["state"].step)
    if steps_per_epoch is not None and step != epoch * steps_per_epoch:
      raise Mismatch("inconsistent", f"its state is at step {step}, not {epoch} x "
                     f"{steps_per_epoch}")
    return restored["state"], meta, bank

  def restore_newest(self, state_template, steps_per_epoch: int | None = None
                     ) -> Restored | None:
    """The newest checkpoint that restores (see the module docstring); None if there is none."""
    damaged = []
    for epoch in sorted(self.manager.all_steps(), reverse=True):
      try:
        state, meta, bank = self.restore(epoch, state_template, steps_per_epoch)
      except DamagedCheckpointError as error:
        damaged.append(error)
        continue
      self._set_aside(damaged, epoch)
      return Restored(epoch, state, meta, bank)
    if damaged:
      causes = "; ".join(f"{e.epoch}: {e.cause}" for e in damaged)
      raise CheckpointRestoreError(
          f"no checkpoint in {self.directory} can be restored ({causes}). Nothing was moved or "
          "deleted; train again in a new --workdir (or restore the checkpoints from a backup)")
    return None

  def _set_aside(self, damaged: list[DamagedCheckpointError], restored: int) -> None:
    """Moves the damaged checkpoints newer than `restored` out of Orbax's sight (process 0 moves
    them, the others wait), so that the run saves those epochs again."""
    if not damaged:
      return
    if jax.process_index() == 0:
      for error in damaged:
        target = _unused(os.path.join(self.directory,
                                      f"{DAMAGED_PREFIX}{error.epoch}-{error.kind}"))
        os.rename(os.path.join(self.directory, str(error.epoch)), target)
        logging.warning("%s; kept aside as %s; resuming from checkpoint %d.", error, target,
                        restored)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes("proxy_jax_damaged_checkpoints_set_aside")
    self.manager.reload()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()
