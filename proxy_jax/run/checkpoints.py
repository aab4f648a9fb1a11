"""Orbax checkpoints of the whole run: train state, proxy bank and loop bookkeeping.

One checkpoint per completed epoch boundary (its step number is the count of completed epochs):
`state` (params, optimizer state, batch stats, step), `meta` (JSON: epoch, proxy steps done,
history) and, when non-empty, `bank` (proxy ids and uint8 images). Orbax writes into a temporary
directory and renames it when complete, so a kill mid-save leaves the previous checkpoint. Saves
are synchronous: a write that fails (disk full, lost mount, any OSError) stops the run at once
with `CheckpointWriteError`, one line naming the device, the path, the checkpoint's size and the
free space and the last complete checkpoint, which is left intact; the partial temporary
directory is removed.

Every checkpoint is checksummed (`proxy_jax.core.digests`): once Orbax has finished it, a manifest of
the SHA-256 of every file in it is written into it, and a restore checks every file against it
before any value is read. A mismatch is damage like a truncated file (below). A checkpoint of an
epoch at or after the run's first digested one (`digests.SINCE_FILE`) without a manifest was cut
off before its manifest was written and is not trusted either; checkpoints written before
digests existed restore unverified (the log says so once).

A checkpoint that cannot be restored (a missing or truncated file, unreadable metadata, arrays
of another shape or dtype than the run's) raises `DamagedCheckpointError` naming it, the kind of
damage and the cause. `restore_newest` then falls back to the newest one that restores: each
damaged newer one is logged in one line and moved aside to `checkpoints/damaged-<epoch>-<kind>`
(never deleted; Orbax ignores the name), so the run continues from the older one, and, resuming
being deterministic, ends exactly as an uninterrupted run. If none restores it raises
`CheckpointRestoreError` and leaves every checkpoint where it is.
"""

import asyncio
import dataclasses
import errno
import gc
import os
import shutil
import threading
from typing import Any

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

from proxy_jax.core import digests, disk, errors, io_utils
from proxy_jax.run import checkpoint_files

DAMAGED_PREFIX = "damaged-"


class CheckpointWriteError(errors.UserError, RuntimeError):
  """A checkpoint could not be written; the previous complete one is intact."""


class DamagedCheckpointError(errors.UserError, ValueError):
  """One checkpoint cannot be restored; `kind` is missing, truncated, shape, dtype, metadata,
  inconsistent, digest (bytes changed since it was written), undigested (cut off before its
  manifest) or unreadable."""

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


def _unused(path: str) -> str:
  """`path`, else `path-2`, `path-3`, ...: the first that does not exist (nothing is replaced)."""
  candidate, number = path, 1
  while os.path.exists(candidate):
    number += 1
    candidate = f"{path}-{number}"
  return candidate


class RunCheckpoints:
  """Thin wrapper over `ocp.CheckpointManager` for the three items of a run."""

  def __init__(
    self, workdir: str, keep: int, folder: str = "checkpoints", numbered_by: str = "epoch"
  ):
    """Checkpoints in WORKDIR/`folder`, numbered by their meta item's `numbered_by` field."""
    self.directory = os.path.join(os.path.abspath(workdir), folder)
    self.numbered_by = numbered_by
    # Synchronous saves: a failed write surfaces in `save`, before the next epoch trains.
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, create=True, enable_async_checkpointing=False
    )
    # Handlers named up front so that an item's metadata can be read before restoring it.
    handlers = {
      "state": ocp.StandardCheckpointHandler(),
      "meta": ocp.JsonCheckpointHandler(),
      "bank": ocp.StandardCheckpointHandler(),
    }
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
    self._told_undigested = False

  def latest_epoch(self) -> int | None:
    return self.manager.latest_step()

  def complete_epochs(self) -> list[int]:
    """Epochs whose checkpoint is complete on disk: Orbax's listing of finalized checkpoints
    (a save in flight or one that failed is still a temporary directory, not listed)."""
    return sorted(ocp.utils.checkpoint_steps(self.directory))

  def _epoch_dir(self, epoch: int) -> str:
    return os.path.join(self.directory, str(epoch))

  def digested_since(self) -> int | None:
    """The first epoch saved with a manifest (None: every checkpoint predates digests). An
    unreadable marker counts as 0: then every checkpoint must have a manifest."""
    path = os.path.join(self.directory, digests.SINCE_FILE)
    if not os.path.exists(path):
      return None
    try:
      return int(io_utils.read_json(path, dict)["epoch"])
    except (errors.DamagedFileError, KeyError, TypeError, ValueError):
      return 0

  def save(self, epoch: int, state, meta: dict, bank_arrays: dict | None) -> None:
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    # Orbax cannot store zero-size arrays, so an empty bank is simply absent.
    if bank_arrays is not None and len(bank_arrays["ids"]):
      items["bank"] = ocp.args.StandardSave(bank_arrays)
    size = checkpoint_files.tree_bytes(state) + checkpoint_files.tree_bytes(bank_arrays or {})
    if os.path.isdir(self.directory) and disk.free_bytes(self.directory) < size:
      # Refused before Orbax writes a byte: nothing to clean up, nothing half-written.
      raise CheckpointWriteError(
        self._write_message(
          epoch, size, OSError(errno.ENOSPC, "No space left on device", self.directory)
        )
      )
    cause = self._save_quietly(epoch, items)
    if cause is not None:
      self._remove_partial(epoch)
      raise CheckpointWriteError(self._write_message(epoch, size, cause))

  def _save_quietly(self, epoch: int, items: dict) -> OSError | None:
    """Saves; returns the OSError of a failed write (any other failure raises). Orbax's writer
    threads report a failed write on stderr, many times over, and their dropped asyncio tasks
    again when collected: all of that goes to the log file; the run reports it once."""
    before = set(threading.enumerate())
    with disk.stderr_to_log():
      try:
        self._save(epoch, items)
        return None
      # A writer's failure may surface as asyncio's CancelledError (a BaseException).
      except (Exception, asyncio.CancelledError) as error:  # pylint: disable=broad-except
        cause = disk.full_disk_error(error)
        if cause is None:
          raise
        cause = OSError(cause.errno, cause.strerror, cause.filename)  # Holds no frames.
      # The original error (its frames hold the writer's tasks) is gone here: let the threads
      # stop and collect their leftovers while their output is still captured.
      for thread in set(threading.enumerate()) - before:
        try:
          thread.join(timeout=60)
        except BaseException:  # pylint: disable=broad-except
          pass  # Orbax's threads re-raise their failure on join: it is the one above.
      gc.collect()
    disk.silence_dropped_writers()  # The run is ending: what is left reports at exit.
    return cause

  def _save(self, epoch: int, items: dict) -> None:
    if jax.process_index() == 0 and self.digested_since() is None:
      os.makedirs(self.directory, exist_ok=True)  # Before the first manifest-bearing save.
      io_utils.atomic_write_json(os.path.join(self.directory, digests.SINCE_FILE), {"epoch": epoch})
    self.manager.save(epoch, args=ocp.args.Composite(**items))
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      checkpoint_files.write_manifest(self._epoch_dir(epoch))
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes(f"proxy_jax_manifest_{epoch}")

  def space_warning(self, state, keep: int, bank_arrays: dict | None) -> str | None:
    """One line when the free space is below what `keep` checkpoints of this size need (the
    proxy bank only grows, so a later checkpoint may need more), else None."""
    size = checkpoint_files.tree_bytes(state) + checkpoint_files.tree_bytes(bank_arrays or {})
    need, free = keep * size, disk.free_bytes(self.directory)
    if free >= need:
      return None
    return (
      f"{disk.mount_point(self.directory)} has {free / 1e6:.1f} MB free, less than the "
      f"{keep} checkpoints this run keeps need (about {size / 1e6:.1f} MB each, "
      f"{need / 1e6:.1f} MB): a save will stop the run when the disk is full"
    )

  def _remove_partial(self, epoch: int) -> None:
    """The failed save's temporary directory (and a finished one without its manifest)."""
    if jax.process_index() != 0 or not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      if name.startswith(f"{epoch}.orbax-checkpoint-tmp"):
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
    if os.path.isdir(self._epoch_dir(epoch)) and not digests.has_manifest(self._epoch_dir(epoch)):
      shutil.rmtree(self._epoch_dir(epoch), ignore_errors=True)
    self.manager.reload()

  def _write_message(self, epoch: int, size: int, error: OSError) -> str:
    complete = [e for e in self.complete_epochs() if e != epoch]
    last = f"epoch {complete[-1]}" if complete else "none (no epoch was saved yet)"
    if error.errno == errno.ENOSPC:
      free = disk.free_bytes(self.directory) / 1e6
      return (
        disk.no_space_message(
          OSError(error.errno, error.strerror, error.filename or self.directory),
          f"checkpoint of epoch {epoch} needs about {size / 1e6:.1f} MB, {free:.1f} MB free",
        )
        + f"; the last intact checkpoint is {last}: free space and run the same command to resume"
      )
    return (
      f"could not write the checkpoint of epoch {epoch} to "
      f"{error.filename or self.directory}: {error.strerror or error}; the last intact "
      f"checkpoint is {last}: fix that and run the same command to resume"
    )

  def wait(self) -> None:
    """Blocks until pending saves are on disk (saves are synchronous: nothing is pending)."""
    self.manager.wait_until_finished()

  def restore(self, epoch: int, state_template, steps_per_epoch: int | None = None):
    """(state, meta, bank_arrays or None); the state keeps the template's shardings.

    Raises DamagedCheckpointError if a file does not match the checkpoint's manifest (or a
    checkpoint that should have one has none), the checkpoint cannot be read, its arrays do not
    match the template's shapes and dtypes, or (given `steps_per_epoch`) its state's step is not
    the epoch's last.
    """
    self._verify(epoch)
    try:
      with checkpoint_files.quiet_async_leftovers():
        return self._restore(epoch, state_template, steps_per_epoch)
    except Exception as error:  # pylint: disable=broad-except
      # Orbax and TensorStore raise bare Exceptions, ValueErrors, JSON and OS errors alike.
      cause = checkpoint_files.cause(error)
      raise DamagedCheckpointError(
        self.directory, epoch, checkpoint_files.damage_kind(error, cause), cause
      ) from error

  def _verify(self, epoch: int) -> None:
    """Every file of the checkpoint against its manifest, before any value is read."""
    directory = self._epoch_dir(epoch)
    if digests.has_manifest(directory):
      try:
        digests.verify_manifest(directory, checkpoint_files.read_manifest)
      except digests.Mismatch as error:
        raise DamagedCheckpointError(
          self.directory, epoch, error.kind, f"{error.path}: {error.cause}"
        ) from error
      return
    since = self.digested_since()
    if since is not None and epoch >= since:
      raise DamagedCheckpointError(
        self.directory,
        epoch,
        "undigested",
        f"it has no {digests.MANIFEST}: its save was "
        "cut off before the manifest was written, so its bytes cannot be checked",
      )
    if not self._told_undigested:
      which = "" if since is None else f" before epoch {since}"
      logging.warning(
        "checkpoints in %s%s were written before checkpoint digests existed: restored "
        "without checking their bytes.",
        self.directory,
        which,
      )
      self._told_undigested = True

  def _restore(self, epoch: int, state_template, steps_per_epoch: int | None):
    meta = self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = meta["meta"]
    checkpoint_files.check_meta(meta, epoch, self.numbered_by)
    stored = self.manager.item_metadata(epoch)
    checkpoint_files.check_arrays("its state", stored["state"], state_template)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if meta.get("bank_size", 0):
      items["bank"] = ocp.args.StandardRestore()
    restored = self.manager.restore(epoch, args=ocp.args.Composite(**items))
    bank = None
    if "bank" in items:
      bank = {k: np.asarray(v) for k, v in restored["bank"].items()}
      checkpoint_files.check_bank(bank, meta)
    # The loop counts steps on the host from the epoch; a mismatch would shift every key.
    step = int(restored["state"].step)
    if steps_per_epoch is not None and step != epoch * steps_per_epoch:
      raise checkpoint_files.Mismatch(
        "inconsistent", f"its state is at step {step}, not {epoch} x {steps_per_epoch}"
      )
    return restored["state"], meta, bank

  def restore_newest(self, state_template, steps_per_epoch: int | None = None) -> Restored | None:
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
    if damaged and all(e.kind == "undigested" for e in damaged):
      # Only checkpoints a kill cut off before their manifest: set aside, and the run starts
      # from scratch, which (deterministic) ends as the uninterrupted run would.
      self._set_aside(damaged, 0)
      return None
    if damaged:
      causes = "; ".join(f"{e.epoch}: {e.cause}" for e in damaged)
      raise CheckpointRestoreError(
        f"no checkpoint in {self.directory} can be restored ({causes}). Nothing was moved or "
        "deleted; train again in a new --workdir (or restore the checkpoints from a backup)"
      )
    return None

  def _set_aside(self, damaged: list[DamagedCheckpointError], restored: int) -> None:
    """Moves the damaged checkpoints newer than `restored` out of Orbax's sight (process 0 moves
    them, the others wait), so that the run saves those epochs again."""
    if not damaged:
      return
    if jax.process_index() == 0:
      for error in damaged:
        target = _unused(
          os.path.join(self.directory, f"{DAMAGED_PREFIX}{error.epoch}-{error.kind}")
        )
        os.rename(os.path.join(self.directory, str(error.epoch)), target)
        logging.warning(
          "%s; kept aside as %s; %s.",
          error,
          target,
          f"resuming from checkpoint {restored}" if restored else "starting afresh",
        )
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes("proxy_jax_damaged_checkpoints_set_aside")
    self.manager.reload()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()
