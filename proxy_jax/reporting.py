"""What a training run shows: one console line per epoch and per proxy step, TensorBoard scalars
and images, and the proxy-step example grids saved under `<workdir>/proxy_steps/`.

The TensorBoard writer has no logging backend (clu's default writer would print every scalar a
second time next to the epoch line); only process 0 writes summaries. Progress within an epoch
comes from clu's `ReportProgress` (steps/s, percentage and ETA, every `log_every_steps`).

clu's writers import TensorFlow, so they are imported when a run starts, not with this module:
the pure steps in `train.py` then import (and benchmark) on machines without TensorFlow, such
as accelerator images that ship JAX alone.
"""

import logging as std_logging
import os
import time

from absl import logging
import jax
import numpy as np

from proxy_jax import augment, cams, config_lib, data, images_grid, preprocess, restore


def quiet_orbax():
  """Orbax logs every save step at INFO through absl; keep its warnings, drop the chatter."""
  logging.get_absl_logger().addFilter(lambda record: record.levelno >= std_logging.WARNING
                                      or "orbax" not in record.pathname)


def create_writer(workdir: str):
  """TensorBoard summaries in `workdir` from process 0; a writer that drops everything elsewhere."""
  from clu import metric_writers  # pylint: disable=g-import-not-at-top
  if jax.process_index() > 0:
    return metric_writers.MultiWriter([])
  return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(workdir)])


def progress_action(config, total_steps: int, writer):
  """clu's `ReportProgress` (steps/s and ETA to the log, steps/s to TensorBoard)."""
  from clu import periodic_actions  # pylint: disable=g-import-not-at-top
  return periodic_actions.ReportProgress(num_train_steps=total_steps, writer=writer,
                                         every_steps=config.log_every_steps, every_secs=None)


def write_run_header(writer, config, dataset, state, workdir) -> None:
  """The hyperparameters and a grid of augmented training inputs, once per run.

  The grid shows what the train step feeds the model (policy, erasing, mixing included), with
  each tile's label weights under it ("3:0.62 7:0.38"); also written to
  <workdir>/augmented_examples.png.
  """
  hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
             for k, v in config_lib.flatten(config).items()}
  writer.write_hparams(hparams)
  count = min(config.batch_size, config.num_logged_images)
  if count <= 0:
    return
  order = data.epoch_order(len(dataset.train), config.seed, 0)
  batch = next(data.batches(dataset.train, count, order))
  num_classes = len(dataset.class_names)
  inputs, targets = augment.preview(state, batch, config, num_classes,
                                    *restore.load_frozen(config, num_classes))
  pictures = np.clip(np.asarray(preprocess.denormalize(inputs)), 0, 1)
  captions = [images_grid.label_weights_caption(t) for t in np.asarray(targets)]
  captions *= len(pictures) // len(captions)  # AugMix JSD: the clean batch, then two views.
  picture = images_grid.captioned_grid(pictures, captions)
  writer.write_images(0, {"train/examples": picture[None]})
  if jax.process_index() == 0:
    images_grid.save_png(os.path.join(workdir, "augmented_examples.png"), picture)


def _clock(seconds: float) -> str:
  return time.strftime("%H:%M:%S", time.gmtime(max(0.0, seconds)))


class Eta:
  """Time left from this session's measured speed: (work left) x (seconds per unit done)."""

  def __init__(self, total: int, done: int):
    self.total, self.start_done, self.started = total, done, time.time()

  def seconds_left(self, done: int) -> float:
    rate = (done - self.start_done) / max(time.time() - self.started, 1e-9)
    return (self.total - done) / max(rate, 1e-9)


def log_epoch(writer, step: int, row, num_epochs: int, eta_seconds: float) -> None:
  """One console line and the epoch's scalars (`row` is a records.EpochRecord)."""
  writer.write_scalars(step, {
      "train/loss": row.train_loss, "train/accuracy": row.train_accuracy,
      "val/loss": row.val_loss, "val/accuracy": row.val_accuracy, "val/top5": row.val_top5,
      "learning_rate": row.learning_rate, "epoch_seconds": row.epoch_seconds,
      "images_per_second": row.images_per_second})
  logging.info("epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f top5 %.4f | "
               "lr %.2e | %.1fs, %.0f img/s | ETA %s", row.epoch, num_epochs, row.train_loss,
               row.train_accuracy, row.val_loss, row.val_accuracy, row.val_top5,
               row.learning_rate, row.epoch_seconds, row.images_per_second,
               _clock(eta_seconds))


def log_proxy_step(writer, workdir: str, step: int, record, result, count: int,
                   eta_seconds: float) -> None:
  """One console line, the step's scalars and its example grid (records.ProxyStepRecord and
  proxy.ProxyStepResult)."""
  writer.write_scalars(step, {"proxy/wrong": record.wrong, "proxy/chosen": record.chosen,
                              "proxy/bank_size": record.bank_size,
                              "proxy/seconds": record.seconds})
  logging.info("proxy step %d after epoch %d: %d wrong, %d chosen, bank %d | %.1fs | ETA %s",
               record.index, record.epoch, record.wrong, record.chosen, record.bank_size,
               record.seconds, _clock(eta_seconds))
  # The bank's proxies are at the stored side; their centre crops are what the CAMs changed.
  crops = preprocess.center_crop(result.proxies, result.originals.shape[1])
  picture = proxy_examples_grid(result.originals, result.maps, crops, count)
  if picture is None:
    return
  writer.write_images(step, {"proxy/examples": picture[None]})
  if jax.process_index() == 0:
    images_grid.save_png(os.path.join(workdir, "proxy_steps", f"step_{record.index:03d}.png"),
                         picture)


def proxy_examples_grid(originals, maps, proxies, count: int):
  """Rows of (original | CAM overlay | proxy) for the first `count` examples; None if none."""
  count = min(count, len(originals))
  if count <= 0:
    return None
  overlays = cams.overlay(originals[:count], maps[:count])
  rows = np.stack([originals[:count], overlays, proxies[:count]], axis=1)
  return images_grid.grid(rows.reshape((-1,) + rows.shape[2:]), columns=3)
