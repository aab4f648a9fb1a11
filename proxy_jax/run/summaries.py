"""TensorBoard event files written without TensorFlow: a run's scalars, images and hparams.

clu's `SummaryWriter` (and TensorBoard's own `EventFileWriter`, through `tensorboard.compat`)
import TensorFlow, which costs seconds of every trial's start-up and prints its C++ start-up
notices. The event file format is small: TFRecord framing (tensorboard's `RecordWriter`) around
`Event` protos whose summaries TensorBoard's plugins define (`scalar_pb`, `hparams_pb`, the image
plugin's metadata). The values are written as `tf.summary` writes them (tensor summaries), so
TensorBoard and `aggregate.read_scalars` read them as they read clu's.

`EventWriter` has the methods of clu's `MetricWriter` that the project uses.
"""

import io
import itertools
import os
import socket
import time
from typing import Mapping

import numpy as np
from PIL import Image
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.plugins.image import metadata as image_metadata
from tensorboard.plugins.scalar import summary_v2 as scalar_summary
from tensorboard.summary.writer.record_writer import RecordWriter
from tensorboard.util import tensor_util

_FILE_VERSION = "brain.Event:2"
# Two writers opened by one process within a second (a run resumed in the same process) still
# get two files.
_file_numbers = itertools.count()


def _png(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8).squeeze()).save(buffer, format="PNG")
  return buffer.getvalue()


def image_summary(tag: str, images: np.ndarray) -> summary_pb2.Summary:
  """(N, H, W, C) uint8 images as `tf.summary.image` stores them: [width, height, png...]."""
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[None]
  height, width = images.shape[1:3]
  tensor = tensor_util.make_tensor_proto(
    np.array([str(width).encode(), str(height).encode()] + [_png(i) for i in images], dtype=object)
  )
  summary = summary_pb2.Summary()
  summary.value.add(
    tag=tag, tensor=tensor, metadata=image_metadata.create_summary_metadata(None, None)
  )
  return summary


class EventWriter:
  """One event file in `logdir`; events are written as they come (a run writes few)."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(
      logdir,
      f"events.out.tfevents.{int(time.time()):010d}."
      f"{socket.gethostname()}.{os.getpid()}.{next(_file_numbers)}.v2",
    )
    self._records = RecordWriter(open(self.path, "wb"))  # pylint: disable=consider-using-with
    self._write(event_pb2.Event(wall_time=time.time(), file_version=_FILE_VERSION))

  def _write(self, event: event_pb2.Event) -> None:
    self._records.write(event.SerializeToString())

  def _write_summary(self, step: int, summary: summary_pb2.Summary) -> None:
    self._write(event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for tag, value in scalars.items():
      self._write_summary(step, scalar_summary.scalar_pb(tag, np.asarray(value, np.float32)))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    for tag, value in images.items():
      self._write_summary(step, image_summary(tag, value))

  def write_hparams(self, hparams: Mapping[str, object]) -> None:
    self._write_summary(0, hparams_summary.hparams_pb(dict(hparams)))

  def flush(self) -> None:
    if not self._records.closed:
      self._records.flush()

  def close(self) -> None:
    if not self._records.closed:
      self._records.close()


class NullWriter:
  """The writer of the processes that write no summaries (all but process 0)."""

  def write_scalars(self, step, scalars) -> None:
    pass

  def write_images(self, step, images) -> None:
    pass

  def write_hparams(self, hparams) -> None:
    pass

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass
