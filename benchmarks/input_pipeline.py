"""Does the input side keep up? Loader images/s next to train-step images/s, one run.

  python benchmarks/input_pipeline.py                       # digits, tiny CNN, 32 px
  python benchmarks/input_pipeline.py --config=configs/folder.py \
      --config.data.path=../shared/data/imagenette-mini/train --config.image_size=64

The loader figure covers what happens per batch on the host (gather from the cached uint8
array, proxy-bank swap for a 20% bank, transfer to the device); the train-step figure is the
jitted step alone on device-resident batches. A ratio above 1 means the loader is faster than
training and the background prefetch thread hides it. Medians over --repeats passes.
"""

import os
import statistics
import sys
import tempfile
import time

from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from proxy_jax import cli, data  # pylint: disable=g-import-not-at-top,wrong-import-position
from proxy_jax.core import parallel
from proxy_jax.run import proxy_step, steps, train
from proxy_jax.config import settings as config_settings  # noqa: E402

DEFAULT_CONFIG = "configs/default.py"
cli.define_config_flag(DEFAULT_CONFIG, "Config to benchmark.")
flags.DEFINE_integer("batches", 20, "Batches per timed pass.")
flags.DEFINE_integer("repeats", 5, "Timed passes (median reported).")
FLAGS = flags.FLAGS


def time_loader(split, batch_size, bank, batch_sharding, count):
  order = data.epoch_order(len(split), 0, 0)
  started, images = time.perf_counter(), 0
  for index, batch in enumerate(data.batches(split, batch_size, order, swap=bank.swap)):
    if index == count:
      break
    jax.block_until_ready(parallel.to_global(batch, batch_sharding))
    images += batch_size
  return images / (time.perf_counter() - started)


def time_train_steps(state, step_fn, device_batches):
  started = time.perf_counter()
  for index, batch in enumerate(device_batches):
    state, metrics = step_fn(state, batch, jax.random.key(index))
  jax.block_until_ready(metrics)
  images = sum(len(b["label"]) for b in device_batches)
  return state, images / (time.perf_counter() - started)


def main(_):
  config = config_settings.parse(FLAGS.config)
  with tempfile.TemporaryDirectory() as workdir:
    if not config.data.cache_dir:
      config = config_settings.with_fields(
        config, {"data.cache_dir": os.path.join(workdir, "cache")}
      )
    dataset = data.load_dataset(config, workdir)
  split = dataset.train
  bank = proxy_step.ProxyBank()
  chosen = np.arange(0, len(split), 5)
  bank.update(chosen, split.images[chosen])
  replicated, batch_sharding = parallel.shardings(parallel.make_mesh())
  model = train.create_model(config, len(dataset.class_names))
  steps_per_epoch = data.num_batches(len(split), config.batch_size)
  state = jax.device_put(
    train.create_train_state(config, model, jax.random.key(0), steps_per_epoch), replicated
  )
  step_fn = steps.make_train_step(config, replicated)
  count = min(FLAGS.batches, steps_per_epoch)
  device_batches = [
    parallel.to_global(b, batch_sharding)
    for _, b in zip(range(count), data.batches(split, config.batch_size))
  ]
  state, _ = time_train_steps(state, step_fn, device_batches[:1])  # compile
  loader, step_rates = [], []
  for _ in range(FLAGS.repeats):
    loader.append(time_loader(split, config.batch_size, bank, batch_sharding, count))
    state, rate = time_train_steps(state, step_fn, device_batches)
    step_rates.append(rate)
  loader_rate, step_rate = statistics.median(loader), statistics.median(step_rates)
  print(
    f"dataset {config.data.name}, model {config.model.name}, {config.image_size}px, "
    f"batch {config.batch_size}, {jax.device_count()} {jax.devices()[0].platform} device(s)"
  )
  print(
    f"loader (gather + bank swap + transfer): {loader_rate:10.0f} images/s (median of "
    f"{FLAGS.repeats})"
  )
  print(f"train step:                             {step_rate:10.0f} images/s")
  print(f"loader / train-step ratio:              {loader_rate / step_rate:10.1f}x")


if __name__ == "__main__":
  cli.run_main(main, config_default=DEFAULT_CONFIG)
