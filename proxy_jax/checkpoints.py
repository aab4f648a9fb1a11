"""Orbax checkpoints of the whole run: train state, proxy bank and loop bookkeeping.

One checkpoint per completed epoch boundary (its step number is the count of completed epochs):
`state` (params, optimizer state, batch stats, step), `meta` (JSON: epoch, proxy steps done,
history) and, when non-empty, `bank` (proxy ids and uint8 images). Orbax writes into a temporary
directory and renames it when complete, so a kill mid-save leaves the previous checkpoint. A
write that fails (disk full, lost mount) raises `CheckpointWriteError` naming the directory, the
cause and the last complete checkpoint, which is left intact.
"""

import contextlib
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from proxy_jax import errors


class CheckpointWriteError(errors.UserError, RuntimeError):
  """A checkpoint could not be written; the previous complete one is intact."""


class RunCheckpoints:
  """Thin wrapper over `ocp.CheckpointManager` for the three items of a run."""

  def __init__(self, workdir: str, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_epoch(self) -> int | None:
    return self.manager.latest_step()

  def complete_epochs(self) -> list[int]:
    """Epochs whose checkpoint is complete on disk: Orbax's listing of finalized checkpoints
    (a save in flight or one that failed is still a temporary directory, not listed)."""
    return sorted(ocp.utils.checkpoint_steps(self.directory))

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

  def restore(self, epoch: int, state_template):
    """Returns (state, meta, bank_arrays or None); the state keeps the template's shardings."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_template)
    meta = self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    meta = meta["meta"]
    items = {"state": ocp.args.StandardRestore(abstract)}
    if meta.get("bank_size", 0):
      items["bank"] = ocp.args.StandardRestore()
    restored = self.manager.restore(epoch, args=ocp.args.Composite(**items))
    bank = None
    if "bank" in items:
      bank = {k: np.asarray(v) for k, v in restored["bank"].items()}
    return restored["state"], meta, bank

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()
