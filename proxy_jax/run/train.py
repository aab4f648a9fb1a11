"""Training and evaluation: the run's setup and the epoch/proxy-step loop (the steps: `steps`).

`train_and_evaluate(config, workdir)` is the only entry point `main.py` calls. It validates the
config before any compute, loads the fixed split, resolves the batch size once (recorded in
config.json), builds a sharded train state, resumes from the latest checkpoint if there is one,
and alternates training epochs with proxy steps as `config.proxy.schedule` says. Steps are
module-level pure functions jitted once with the state donated; data parallelism is a
`jax.sharding.Mesh` over all devices with the batch split on its "data" axis (one device is
just a mesh of one). Within an epoch the host only dispatches: the step number lives on the
host, the step folds it into its key on the device, and metrics (clu.metrics) accumulate on the
device until the epoch ends, when they are fetched once and checked for divergence.
"""

import dataclasses
import functools
import os
import shutil
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp

from proxy_jax.run import batch_finder
from proxy_jax import data, models
from proxy_jax.data import packed
from proxy_jax.config import recorded
from proxy_jax.config import settings as config_settings
from proxy_jax.core import console, errors
from proxy_jax.run import checkpoints, dispatch, host
from proxy_jax.run import proxy_bank, proxy_rounds, proxy_step, records
from proxy_jax.run.model_state import create_model, create_train_state, learning_rate_schedule
from proxy_jax.run import reporting, restore, resume, steps, workdir_lock
from proxy_jax.run.step_metrics import NO_STEP, host_values, merge_metrics
from proxy_jax.core.io_utils import atomic_write_json
from proxy_jax.core.parallel import compute_slice, make_mesh, prefetch, shardings, to_global


class DivergenceError(errors.UserError, RuntimeError):
  """Training produced a non-finite loss or parameter; nothing of that epoch was saved."""


# ---------------------------------------------------------------- the batch-size finder's probe


def finder_step_factory(
  settings, num_classes: int, frozen=(None, None)
) -> batch_finder.StepFactory:
  """What the batch-size finder probes: this trainer's step and a host copy of a fresh state
  (`frozen`: the frozen saliency model, loaded by the caller)."""
  model = create_model(settings, num_classes)
  state = create_train_state(settings, model, jax.random.key(0), steps_per_epoch=1)
  return batch_finder.StepFactory(
    steps.make_train_step(settings, frozen=frozen, cropped=data.crops_in_workers(settings)),
    jax.device_get(state),
  )


def crops_for_workers(settings, step_key, first_step: int, count: int):
  """The crops of `count` steps from global step `first_step` for the stream's workers to cut
  (the boxes those train steps would draw: `steps.worker_crop_boxes`); None when the crop stays
  in the step."""
  if not data.crops_in_workers(settings):
    return None
  boxes = steps.worker_crop_boxes(
    step_key,
    jnp.arange(first_step, first_step + count),
    settings.batch_size,
    data.stored_size(settings),
    tuple(settings.augment.crop_scale),
    tuple(settings.augment.crop_ratio),
  )
  return packed.WorkerCrops(list(jax.device_get(boxes)), settings.image_size)


def evaluate(state, split: data.Split, batch_size: int, eval_fn, batch_sharding) -> dict:
  """{"loss", "accuracy", "top5"} over `split`: metrics merged on the device, fetched once."""
  per_chunk = dispatch.map_chunks(
    lambda chunk: eval_fn(state, chunk.inputs),
    {"image": split.images, "label": split.labels},
    batch_size,
    sharding=batch_sharding,
    mask=True,
    collect=dispatch.keep_on_device,
  )
  return host_values(functools.reduce(merge_metrics, per_chunk))


# ---------------------------------------------------------------- setup


def _finished_summary(settings, workdir: str) -> records.Summary | None:
  """The summary of a workdir that already trained this config to the end (read only); None
  for a damaged one, which the run rebuilds by resuming from its last checkpoint."""
  try:
    summary = records.read_summary(workdir)
  except errors.DamagedFileError as error:
    logging.warning(
      "%s is damaged (%s): rebuilding it from the last checkpoint.", error.path, error.cause
    )
    return None
  if summary is not None and summary.num_epochs == settings.num_epochs and summary.history:
    return summary
  return None


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything the loop reads and nothing it changes, built once before the first epoch."""

  settings: config_settings.Settings
  workdir: str
  dataset: data.Dataset
  steps_per_epoch: int
  lr_fn: Callable
  batch_sharding: Any
  train_fn: Callable
  eval_fn: Callable
  predict_fn: Callable
  step_key: jax.Array
  proxy_key: jax.Array
  schedule: proxy_step.Schedule
  writer: Any
  ckpt: checkpoints.RunCheckpoints
  within_ckpt: checkpoints.RunCheckpoints | None  # Checkpoints within epochs, if any are saved.
  init_checksum: str  # tree_checksum of the initial variables, for summary.json.
  frozen: tuple = (None, None)  # (apply_fn, variables) of the frozen saliency model, if any.


def _build(settings, workdir: str, dataset: data.Dataset):
  """(Setup, initial train state placed on the mesh)."""
  devices = jax.device_count()
  for field in ("batch_size", "eval_batch_size"):
    if getattr(settings, field) % devices:
      raise errors.ConfigError(
        f"config.{field}={getattr(settings, field)} is not divisible by the {devices} devices"
      )
  replicated, batch_sharding = shardings(make_mesh())
  steps_per_epoch = data.num_batches(len(dataset.train), settings.batch_size)
  lr_fn = learning_rate_schedule(settings, steps_per_epoch)
  root = jax.random.key(settings.seed)
  model = create_model(settings, len(dataset.class_names))
  state = create_train_state(settings, model, jax.random.fold_in(root, 0), steps_per_epoch, lr_fn)
  # The frozen saliency model of the guided augmentations, read from disk once, here.
  frozen = restore.load_frozen(settings, len(dataset.class_names))
  setup = Setup(
    settings=settings,
    workdir=workdir,
    dataset=dataset,
    steps_per_epoch=steps_per_epoch,
    lr_fn=lr_fn,
    batch_sharding=batch_sharding,
    train_fn=steps.make_train_step(settings, replicated, frozen, data.crops_in_workers(settings)),
    frozen=frozen,
    eval_fn=steps.make_eval_step(),
    predict_fn=steps.make_predict_step(),
    step_key=jax.random.fold_in(root, 1),
    proxy_key=jax.random.fold_in(root, 2),
    schedule=proxy_step.parse_schedule(
      settings.proxy.schedule, settings.num_epochs, settings.proxy.enabled
    ),
    writer=reporting.create_writer(workdir),
    ckpt=checkpoints.RunCheckpoints(workdir, settings.keep_checkpoints),
    within_ckpt=resume.within_epoch_checkpoints(workdir)
    if settings.checkpoint_every_steps
    else None,
    init_checksum=records.tree_checksum(models.variables_of(state)),
  )
  return setup, jax.device_put(state, replicated)


def _shut_down(setup: Setup, quiet: bool) -> None:
  """Waits for Orbax and flushes the summaries; `quiet` while another error propagates."""
  try:
    setup.ckpt.close()
    if setup.within_ckpt is not None:
      setup.within_ckpt.close()
  except Exception as error:  # pylint: disable=broad-except
    if not quiet:
      raise
    logging.warning("while stopping: %s", error)
  finally:
    setup.writer.flush()
    setup.writer.close()


# ---------------------------------------------------------------- the loop


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (or resumes) the run of `config` (a ConfigDict) in `workdir`; returns summary.json's
  content. The config is parsed here, once, into settings; nothing below reads it."""
  started = time.time()
  settings = config_settings.parse(config)
  settings = recorded.resolve_auto_fields(settings, workdir)
  host.setup(settings)
  settings = batch_finder.with_recorded_batch_size(settings, workdir)
  if settings.batch_size != -1 and os.path.exists(os.path.join(workdir, "config.json")):
    settings = recorded.write_or_check_resolved(settings, workdir)  # Checks the file.
    finished = _finished_summary(settings, workdir)
    if finished is not None:  # A finished workdir is read, never written.
      logging.info("%s is already complete; nothing to do.", workdir)
      return finished.to_json()
  # One run per workdir; in a multi-process run, process 0 holds the lock for all.
  with (
    workdir_lock.hold(workdir, enabled=jax.process_index() == 0) as fresh,
    console.log_file(workdir, jax.process_index()),
  ):
    console.log_machine(jax.local_devices())
    try:
      setup, state = _prepare(settings, workdir)
    except errors.UserError:
      # Refused before training (e.g. an empty split): leave no config.json behind that would
      # refuse the corrected config in the same workdir.
      if fresh:
        shutil.rmtree(workdir, ignore_errors=True)
      raise
    try:
      summary = _train(setup, state, started)
    except BaseException:
      _shut_down(setup, quiet=True)
      raise
    _shut_down(setup, quiet=False)
  return summary.to_json()


def _prepare(settings, workdir: str):
  """Records the resolved config (the batch size chosen once), loads the data, builds Setup."""
  if settings.batch_size != -1:  # Refuse a changed config before loading any data.
    settings = recorded.write_or_check_resolved(settings, workdir)
  dataset = data.load_dataset(settings, workdir)
  if settings.batch_size == -1:
    num_classes = len(dataset.class_names)
    frozen = restore.load_frozen(settings, num_classes)
    settings = batch_finder.with_found_batch_size(
      settings, num_classes, finder_step_factory(settings, num_classes, frozen)
    )
    settings = recorded.write_or_check_resolved(settings, workdir)
  if jax.process_index() == 0:
    atomic_write_json(os.path.join(workdir, "classes.json"), dataset.class_names)
  return _build(settings, workdir, dataset)


def _train(setup: Setup, state, started: float) -> records.Summary:
  settings, steps_per_epoch = setup.settings, setup.steps_per_epoch
  start = resume.restore_or_start(setup, state)
  state, progress, bank = start.state, start.progress, start.bank
  first_epoch = progress.epoch
  # This session's slice joins those of the sessions before it (a checkpoint of an earlier
  # version knows none: only the slices from here on are recorded).
  progress.add_compute_slice(compute_slice())
  total_steps = settings.num_epochs * steps_per_epoch
  eta = reporting.Eta(total_steps, progress.epoch * steps_per_epoch + start.step_in_epoch)
  report = reporting.EpochProgress(
    eta, steps_per_epoch, settings.batch_size, settings.num_epochs, settings.log_every_seconds
  )
  elapsed_before = progress.elapsed_s
  # Proxy steps due before the first epoch of this session (schedule starting with "p").
  proxy_rounds.run_due(setup, state, bank, progress, eta)
  for epoch in range(progress.epoch, settings.num_epochs):
    epoch_started = time.time()
    resumed = start if epoch == first_epoch and start.step_in_epoch else None
    state, totals = train_epoch(setup, state, bank, epoch, report, progress, resumed)
    train_metrics = jax.device_get(totals)  # The epoch's one wait on the device.
    seconds = time.time() - epoch_started
    _stop_if_diverged(setup, train_metrics, epoch)
    val = evaluate(
      state, setup.dataset.val, settings.eval_batch_size, setup.eval_fn, setup.batch_sharding
    )
    progress.add_epoch(_epoch_record(setup, epoch, train_metrics.compute(), val, seconds))
    step = (epoch + 1) * steps_per_epoch
    reporting.log_epoch(
      setup.writer, step, progress.history[-1], settings.num_epochs, eta.seconds_left(step)
    )
    # The proxy steps at this boundary run before the save, so a checkpoint never sits
    # between an epoch and the proxy step that follows it.
    proxied = proxy_rounds.run_due(setup, state, bank, progress, eta)
    progress.elapsed_s = elapsed_before + time.time() - started
    if (
      (epoch + 1) % settings.checkpoint_every_epochs == 0
      or proxied
      or epoch + 1 == settings.num_epochs
    ):
      resume.save_epoch(setup, state, progress, bank)
  return _finish(setup, state, bank, progress, elapsed_before + time.time() - started)


def train_epoch(
  setup: Setup,
  state,
  bank: proxy_bank.ProxyBank,
  epoch: int,
  report,
  progress: records.RunProgress | None = None,
  resumed: resume.Start | None = None,
):
  """Dispatches the epoch's steps without waiting on any; returns (state, metrics on device).

  `resumed`: the epoch's first steps are done (a checkpoint within it); their metrics join the
  rest. With `progress` and `checkpoint_every_steps` = k, the run is saved every k steps.
  """
  settings, split = setup.settings, setup.dataset.train
  order = data.epoch_order(len(split), settings.seed, epoch)
  swap, is_proxy = (bank.swap, bank.holds) if len(bank) else (None, None)
  done = resumed.step_in_epoch if resumed is not None else 0
  saved_metrics = resumed.metrics if resumed is not None else None
  step, totals, every = epoch * setup.steps_per_epoch + done, None, settings.checkpoint_every_steps
  report.start_epoch()
  worker_crops = crops_for_workers(settings, setup.step_key, step, setup.steps_per_epoch - done)
  batches = data.batches(
    split,
    settings.batch_size,
    order,
    start=done,
    swap=swap,
    is_proxy=is_proxy,
    workers=settings.data.stream_workers,  # Decoding processes, when the split is streamed.
    process=(jax.process_index(), jax.process_count()),
    worker_crops=worker_crops,
  )
  for batch in prefetch(batches):
    batch = to_global(batch, setup.batch_sharding, settings.batch_size)
    state, batch_metrics = setup.train_fn(state, batch, setup.step_key)
    if saved_metrics is not None:  # The metrics of the steps before the checkpoint come first.
      totals, saved_metrics = resume.metrics_of(saved_metrics, jax.device_get(batch_metrics)), None
    totals = batch_metrics if totals is None else merge_metrics(totals, batch_metrics)
    step += 1
    report(step)
    done += 1
    if every and progress is not None and done % every == 0 and done < setup.steps_per_epoch:
      resume.save_within_epoch(setup.within_ckpt, state, progress, bank, done, totals)
  return state, totals


def _stop_if_diverged(setup: Setup, train_metrics, epoch: int) -> None:
  bad_step = int(train_metrics.first_nonfinite_step.step)
  if bad_step == NO_STEP:
    return
  setup.ckpt.wait()
  complete = setup.ckpt.complete_epochs()
  last = (
    f"epoch {complete[-1]} in {setup.ckpt.directory}"
    if complete
    else "none (no epoch finished before it)"
  )
  raise DivergenceError(
    f"training diverged in epoch {epoch + 1} at step {bad_step} (step "
    f"{bad_step - epoch * setup.steps_per_epoch} of {setup.steps_per_epoch} in the epoch): "
    f"the loss or a parameter is not finite. Nothing of this epoch was saved; the last good "
    f"checkpoint is {last}. Lower config.optimizer.learning_rate (now "
    f"{setup.settings.optimizer.learning_rate:g}) and train again in a new --workdir"
  )


def _epoch_record(
  setup: Setup, epoch: int, train: dict, val: dict, seconds: float
) -> records.EpochRecord:
  step = (epoch + 1) * setup.steps_per_epoch
  return records.EpochRecord(
    epoch=epoch + 1,
    train_loss=train["loss"],
    train_accuracy=train["accuracy"],
    val_loss=val["loss"],
    val_accuracy=val["accuracy"],
    val_top5=val["top5"],
    learning_rate=float(setup.lr_fn(step - 1)),
    epoch_seconds=seconds,
    images_per_second=len(setup.dataset.train) / seconds,
  )


def _finish(
  setup: Setup, state, bank, progress: records.RunProgress, wall_time_s: float
) -> records.Summary:
  setup.ckpt.wait()
  dataset, settings = setup.dataset, setup.settings
  # The training split in eval mode (no augmentation, no proxies) measures how far the model
  # fits its training data, which a study's gate asks of its baseline.
  # Training images are stored larger: evaluation takes their centre crops (a view).
  final = {
    "test": dataset.test,
    "train_split": data.eval_view(dataset.train, settings.image_size)
    if settings.evaluate_train_split
    else None,
  }
  for name, split in final.items():
    if split is not None:
      final[name] = evaluate(
        state, split, settings.eval_batch_size, setup.eval_fn, setup.batch_sharding
      )
      setup.writer.write_scalars(
        settings.num_epochs * setup.steps_per_epoch,
        {f"{name}/{k}": v for k, v in final[name].items()},
      )
  test = final["test"]
  summary = records.Summary(
    config=config_settings.to_dict(settings),
    final=progress.history[-1],
    best=progress.best,
    test=test,
    num_epochs=settings.num_epochs,
    wall_time_s=wall_time_s,
    history=progress.history,
    proxy_steps=progress.proxy_steps,
    bank_size=len(bank),
    skipped_files=dataset.skipped_files,
    num_examples={
      "train": len(dataset.train),
      "val": len(dataset.val),
      "test": len(dataset.test) if dataset.test else 0,
    },
    init_checksum=setup.init_checksum,
    train_split=final["train_split"],
    compute=progress.summary_compute(),
  )
  if jax.process_index() == 0:
    records.write_summary(setup.workdir, summary)
  logging.info(
    "done: val accuracy %.1f%% (best %.1f%% at epoch %d)%s",
    100 * summary.final.val_accuracy,
    100 * summary.best.val_accuracy,
    summary.best.epoch,
    ""
    if not test
    else f" | test accuracy {100 * test['accuracy']:.1f}%, loss {test['loss']:.3f}, top5 "
    f"{100 * test['top5']:.1f}%",
  )
  return summary
