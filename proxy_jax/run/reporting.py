"""What a training run shows: one console line per epoch and per proxy step, TensorBoard scalars
and images, and the proxy-step example grids saved under `<workdir>/proxy_steps/`.

Summaries go to TensorBoard event files (`summaries.EventWriter`, no TensorFlow), written by
process 0 only. An epoch that lasts longer than `log_every_seconds` also gets a progress line every that many seconds within it
(`EpochProgress`: images/s, the epoch's time left and the run's ETA).

The writer needs the tensorboard package, so it is imported when a run starts, not with this
module: the run's modules (the pure steps in `steps.py`, the loop in `train.py`) then import
(and benchmark) on machines with JAX alone.
"""

import os
import time
from typing import Callable

from absl import logging
import jax
import numpy as np

from proxy_jax import augment, cams, data
from proxy_jax.augment import crop
from proxy_jax.data import packed
from proxy_jax.config import checks as config_lib
from proxy_jax.config import settings as config_settings
from proxy_jax.images import images_grid, preprocess
from proxy_jax.run import records


def create_writer(workdir: str):
  """TensorBoard summaries in `workdir` from process 0; a writer that drops everything elsewhere."""
  from proxy_jax.run import summaries  # pylint: disable=g-import-not-at-top

  if jax.process_index() > 0:
    return summaries.NullWriter()
  return summaries.EventWriter(workdir)


def write_run_header(writer, settings, dataset, state, workdir, frozen=(None, None)) -> None:
  """The hyperparameters and a grid of augmented training inputs, once per run.

  The grid shows what the train step feeds the model (policy, erasing, mixing included), with
  each tile's label weights under it ("3:0.62 7:0.38"); also written to
  <workdir>/augmented_examples.png.
  """
  hparams = {
    k: (v if isinstance(v, (int, float, str, bool)) else str(v))
    for k, v in config_lib.flatten(config_settings.to_dict(settings)).items()
  }
  writer.write_hparams(hparams)
  count = min(settings.batch_size, settings.num_logged_images)
  if count <= 0:
    return
  order = data.epoch_order(len(dataset.train), settings.seed, 0)[:count]  # The first batch.
  cropped = data.crops_in_workers(settings)
  worker_crops = None
  if cropped:  # The workers cut the boxes the preview's fixed key draws.
    side, aug = data.stored_size(settings), settings.augment
    key = augment.crop_key(jax.random.key(0))
    boxes = crop.random_boxes(key, count, side, side, aug.crop_scale, aug.crop_ratio)
    worker_crops = packed.WorkerCrops([np.asarray(boxes)], settings.image_size)
  batch = next(data.batches(dataset.train, count, order, worker_crops=worker_crops))
  num_classes = len(dataset.class_names)
  inputs, targets = augment.preview(state, batch, settings, num_classes, *frozen, cropped=cropped)
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

  def __init__(self, total: int, done: int, clock: Callable[[], float] = time.monotonic):
    self.total, self.start_done, self.clock = total, done, clock
    self.started = clock()

  def seconds_left(self, done: int) -> float:
    rate = (done - self.start_done) / max(self.clock() - self.started, 1e-9)
    return (self.total - done) / max(rate, 1e-9)


class EpochProgress:
  """A console line every `every_seconds` within an epoch: a short epoch prints none.

  Called once per dispatched step with the run's step number; the host never waits on the
  device for it, so images/s is the dispatch rate, which the device bounds after the first
  few steps (the dispatch queue is short).
  """

  def __init__(
    self,
    eta: Eta,
    steps_per_epoch: int,
    batch_size: int,
    num_epochs: int,
    every_seconds: float,
    clock: Callable[[], float] = time.monotonic,
  ):
    self.eta, self.steps_per_epoch, self.batch_size = eta, steps_per_epoch, batch_size
    self.num_epochs, self.every_seconds, self.clock = num_epochs, every_seconds, clock
    self.epoch_started = self.last_line = clock()

  def start_epoch(self) -> None:
    self.epoch_started = self.last_line = self.clock()

  def __call__(self, step: int) -> str | None:
    """Logs and returns the progress line when one is due after `step`, else None."""
    now = self.clock()
    if now - self.last_line < self.every_seconds:
      return None
    self.last_line = now
    epoch, done = divmod(step - 1, self.steps_per_epoch)
    done += 1
    seconds = max(now - self.epoch_started, 1e-9)
    line = (
      f"epoch {epoch + 1}/{self.num_epochs} step {done}/{self.steps_per_epoch}: "
      f"{done * self.batch_size / seconds:.0f} img/s | epoch ends in "
      f"{_clock((self.steps_per_epoch - done) * seconds / done)} | "
      f"ETA {_clock(self.eta.seconds_left(step))}"
    )
    logging.info("%s", line)
    return line


def log_epoch(writer, step: int, row, num_epochs: int, eta_seconds: float) -> None:
  """One console line and the epoch's scalars (`row` is a records.EpochRecord)."""
  writer.write_scalars(
    step,
    {
      "train/loss": row.train_loss,
      "train/accuracy": row.train_accuracy,
      "val/loss": row.val_loss,
      "val/accuracy": row.val_accuracy,
      "val/top5": row.val_top5,
      "learning_rate": row.learning_rate,
      "epoch_seconds": row.epoch_seconds,
      "images_per_second": row.images_per_second,
    },
  )
  logging.info(
    "epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f top5 %.4f | "
    "lr %.2e | %.1fs, %.0f img/s | ETA %s",
    row.epoch,
    num_epochs,
    row.train_loss,
    row.train_accuracy,
    row.val_loss,
    row.val_accuracy,
    row.val_top5,
    row.learning_rate,
    row.epoch_seconds,
    row.images_per_second,
    _clock(eta_seconds),
  )


def log_proxy_step(
  writer,
  workdir: str,
  step: int,
  record,
  result,
  count: int,
  eta_seconds: float,
  captions=None,
  cam_method: str = "CAM",
) -> None:
  """One console line, the step's scalars and its example grid (records.ProxyStepRecord and
  proxy.ProxyStepResult); `captions` name each chosen image (its label)."""
  scalars = {
    "proxy/wrong": record.wrong,
    "proxy/chosen": record.chosen,
    "proxy/bank_size": record.bank_size,
    "proxy/seconds": record.seconds,
  }
  scalars.update(
    {
      f"proxy/{field}": getattr(record, field)
      for field in records.CHANGE_FIELDS
      if getattr(record, field) is not None
    }
  )
  writer.write_scalars(step, scalars)
  changed = (
    ""
    if record.changed_pixel_share is None
    else f", {100 * record.changed_pixel_share:.1f}% of their pixels changed by "
    f"{record.changed_mean_abs or 0.0:.1f} levels"
  )
  logging.info(
    "proxy step %d after epoch %d: %d wrong, %d chosen%s, bank %d | %.1fs | ETA %s",
    record.index,
    record.epoch,
    record.wrong,
    record.chosen,
    changed,
    record.bank_size,
    record.seconds,
    _clock(eta_seconds),
  )
  # The bank's proxies are at the stored side; their centre crops are what the CAMs changed.
  crops = preprocess.center_crop(result.proxies, result.originals.shape[1])
  picture = proxy_examples_grid(result.originals, result.maps, crops, count, captions, cam_method)
  if picture is None:
    return
  writer.write_images(step, {"proxy/examples": picture[None]})
  if jax.process_index() == 0:
    images_grid.save_png(
      os.path.join(workdir, "proxy_steps", f"step_{record.index:03d}.png"), picture
    )


def proxy_examples_grid(
  originals, maps, proxies, count: int, captions=None, cam_method: str = "CAM"
):
  """Rows of (original | CAM overlay | proxy) for the first `count` examples, with column titles
  and each row's caption (its label); None if none."""
  count = min(count, len(originals))
  if count <= 0:
    return None
  overlays = cams.overlay(originals[:count], maps[:count])
  rows = np.stack([originals[:count], overlays, proxies[:count]], axis=1)
  captions = list(captions or [])[:count] + [""] * max(0, count - len(captions or []))
  return images_grid.titled_rows(rows, ("original", f"{cam_method} map", "proxy"), captions)
