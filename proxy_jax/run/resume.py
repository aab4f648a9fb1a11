"""Where a run picks up, and what it saves to pick up there.

Epoch checkpoints (`WORKDIR/checkpoints/<epochs done>`) are saved at epoch ends, as
`checkpoint_every_epochs` says and after every proxy step. With `checkpoint_every_steps` = k > 0
the run also saves every k steps within an epoch (`WORKDIR/checkpoints_within_epoch/<global
step>`, the newest kept): the state, the loop's bookkeeping, the bank's index and the epoch's
metrics so far. The data order, augmentation and proxy draws are functions of (seed, epoch,
step), so a run resumed from step s of an epoch feeds the same batches from s on and ends equal
to an uninterrupted one (tested with a SIGKILL mid-epoch). A run resumes from whichever intact
checkpoint is furthest along.
"""

import dataclasses
import os

from absl import logging
from flax import serialization
import jax
import numpy as np

from proxy_jax.run import checkpoints, proxy_bank, records, reporting
from proxy_jax.run.step_metrics import NO_STEP

WITHIN_EPOCH_FOLDER = "checkpoints_within_epoch"
# The meta item of a checkpoint within an epoch: {"step": steps of the epoch done, "metrics":
# the epoch's train metrics so far, as a state dict}.
PARTIAL_KEY = "partial_epoch"
STEP_KEY = "global_step"  # What numbers a checkpoint within an epoch.


@dataclasses.dataclass
class Start:
  """What the loop starts from: a fresh run, an epoch's end, or a step within an epoch."""

  state: object
  progress: records.RunProgress
  bank: proxy_bank.ProxyBank
  step_in_epoch: int = 0  # Steps of epoch `progress.epoch` already trained.
  metrics: dict | None = None  # Their train metrics (a state dict), when step_in_epoch > 0.


def within_epoch_checkpoints(workdir: str) -> checkpoints.RunCheckpoints:
  return checkpoints.RunCheckpoints(
    workdir, keep=1, folder=WITHIN_EPOCH_FOLDER, numbered_by=STEP_KEY
  )


def restore_or_start(setup, state) -> Start:
  """The newest intact checkpoint of the run of `setup` (a `train.Setup`), or a fresh start
  (whose header is logged)."""
  # Damaged newer checkpoints are set aside; `steps_per_epoch` checks the state's step.
  restored = setup.ckpt.restore_newest(state, setup.steps_per_epoch)
  within = _newest_within_epoch(setup, state)
  if within is not None and (restored is None or within.epoch > int(restored.state.step)):
    restored = within
  warning = setup.ckpt.space_warning(
    state, setup.settings.keep_checkpoints, None if restored is None else restored.bank
  )
  if warning:
    logging.warning(warning)
  bank_folder = os.path.join(setup.workdir, proxy_bank.FOLDER)
  if restored is None:
    reporting.write_run_header(
      setup.writer, setup.settings, setup.dataset, state, setup.workdir, setup.frozen
    )
    return Start(state, records.RunProgress(), proxy_bank.ProxyBank(bank_folder))
  meta = dict(restored.meta)
  files = meta.pop(proxy_bank.FILES_KEY, [])
  partial = meta.pop(PARTIAL_KEY, None) or {"step": 0, "metrics": None}
  meta.pop(STEP_KEY, None)
  progress = records.RunProgress.from_json(meta)
  bank = proxy_bank.ProxyBank.from_checkpoint(restored.bank, files, bank_folder)
  within_text = f", step {partial['step']} of epoch {progress.epoch + 1}" if partial["step"] else ""
  logging.info(
    "Resumed from %s at epoch %d%s (%d proxy steps done, bank of %d).",
    os.path.dirname(setup.ckpt.directory) if partial["step"] else setup.ckpt.directory,
    progress.epoch,
    within_text,
    progress.proxy_steps_done,
    len(bank),
  )
  return Start(restored.state, progress, bank, partial["step"], partial["metrics"])


def _newest_within_epoch(setup, state) -> checkpoints.Restored | None:
  """The newest intact checkpoint within an epoch (its `epoch` field is the global step)."""
  if not os.path.isdir(os.path.join(setup.workdir, WITHIN_EPOCH_FOLDER)):
    return None
  ckpt = within_epoch_checkpoints(setup.workdir)
  try:
    restored = ckpt.restore_newest(state)
  finally:
    ckpt.close()
  if restored is not None and int(restored.state.step) != restored.epoch:
    logging.warning(
      "%s: checkpoint %d is not at its step; ignored.", ckpt.directory, restored.epoch
    )
    return None
  return restored


def save_epoch(setup, state, progress: records.RunProgress, bank: proxy_bank.ProxyBank) -> None:
  item, files = bank.checkpoint_item()
  setup.ckpt.save(progress.epoch, state, {**progress.to_json(), proxy_bank.FILES_KEY: files}, item)


def save_within_epoch(
  ckpt: checkpoints.RunCheckpoints,
  state,
  progress: records.RunProgress,
  bank: proxy_bank.ProxyBank,
  step_in_epoch: int,
  totals,
) -> bool:
  """Saves the run at `step_in_epoch` steps into epoch `progress.epoch`, unless its training
  diverged (no non-finite checkpoint is written; the epoch's end reports it); whether it saved."""
  metrics = jax.device_get(totals)
  if int(metrics.first_nonfinite_step.step) != NO_STEP:
    return False
  item, files = bank.checkpoint_item()
  # JSON numbers: float32 and int32 values go through float64 and back exactly.
  values = jax.tree.map(lambda leaf: leaf.item(), serialization.to_state_dict(metrics))
  step = int(jax.device_get(state.step))
  meta = {
    **progress.to_json(),
    proxy_bank.FILES_KEY: files,
    PARTIAL_KEY: {"step": step_in_epoch, "metrics": values},
    STEP_KEY: step,
  }
  ckpt.save(step, state, meta, item)
  return True


def metrics_of(saved: dict, template):
  """The epoch's train metrics so far, in the structure and dtypes of a step's `template`."""
  restored = serialization.from_state_dict(template, saved)
  return jax.tree.map(lambda t, v: np.asarray(v, np.asarray(t).dtype), template, restored)
