"""Does the input side keep up? Three measurements, chosen with --part.

  python benchmarks/input_pipeline.py --part=loader [--config=...]
  python benchmarks/input_pipeline.py --part=decode --images=../shared/data/imagenette-mini/train
  python benchmarks/input_pipeline.py --part=checkpoints

loader: the loader's images/s (read the batch, swap a 20% proxy bank in, transfer) next to the
  jitted train step's on device-resident batches, for the --config's data and
  `data.pipeline`; a ratio above 1 means the background prefetch thread hides the loader.
decode: images/s per core on a folder of JPEGs, alternating the variants in every round:
  the stream's decode to the stored side (256) in this process and through grain with 1 and 2
  workers (per core = total / workers), the cache's memmapped gather, the swap of banked proxies
  from the disk bank, the stream's decode + RandomResizedCrop to 224 and 128 (the workers' crop,
  `data.stream_crop=workers`) with and without PIL's JPEG `draft`, in this process and through
  grain with 1 and 2 workers, and the crop of a banked proxy.
checkpoints: the bytes a proxy run's checkpoints write, bank on disk against the bank inside
  every checkpoint, by real saves, for the bank growth of a recorded run (--summary) stored at
  --side pixels.
Medians over --repeats rounds; run it on an idle machine.
"""

import json
import os
import statistics
import sys
import tempfile
import time

from absl import flags
import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from proxy_jax import cli, data  # noqa: E402
from proxy_jax.config import recorded, settings as config_settings  # noqa: E402
from proxy_jax.core import parallel  # noqa: E402
from proxy_jax.augment import crop  # noqa: E402
from proxy_jax.data import crops, packed  # noqa: E402
from proxy_jax.run import checkpoints, proxy_bank, steps, train  # noqa: E402

DEFAULT_CONFIG = "configs/default.py"
DEFAULT_SUMMARY = "experiments/results/imagenette_mini_control/trials/proxy_seed0/summary.json"
cli.define_config_flag(DEFAULT_CONFIG, "Config of the loader part.")
flags.DEFINE_enum("part", "loader", ["loader", "decode", "checkpoints"], "What to measure.")
flags.DEFINE_integer("batches", 20, "Batches per timed pass (loader).")
flags.DEFINE_integer("repeats", 5, "Timed rounds (median reported).")
flags.DEFINE_string("images", "../shared/data/imagenette-mini/train", "JPEG folder (decode).")
flags.DEFINE_integer("count", 256, "Images per timed pass (decode).")
flags.DEFINE_integer("passes", 4, "Passes over them per grain measurement (decode).")
flags.DEFINE_string("summary", DEFAULT_SUMMARY, "summary.json of a proxy run (checkpoints).")
flags.DEFINE_integer("side", 256, "Stored side of the bank's images (checkpoints).")
FLAGS = flags.FLAGS
STORED, BATCH = 256, 64


# ---------------------------------------------------------------- loader


def time_loader(split, batch_size, bank, batch_sharding, count, workers):
  order = data.epoch_order(len(split), 0, 0)
  started, images = time.perf_counter(), 0
  batches = data.batches(split, batch_size, order, swap=bank.swap, workers=workers)
  for index, batch in enumerate(batches):
    if index == count:
      break
    jax.block_until_ready(parallel.to_global(batch, batch_sharding, batch_size))
    images += batch_size
  return images / (time.perf_counter() - started)


def time_train_steps(state, step_fn, device_batches):
  started = time.perf_counter()
  for index, batch in enumerate(device_batches):
    state, metrics = step_fn(state, batch, jax.random.key(index))
  jax.block_until_ready(metrics)
  images = sum(len(b["label"]) for b in device_batches)
  return state, images / (time.perf_counter() - started)


def loader_part():
  settings = config_settings.parse(FLAGS.config)
  with tempfile.TemporaryDirectory() as workdir:
    if not settings.data.cache_dir:
      cache = os.path.join(workdir, "cache")
      settings = config_settings.with_fields(settings, {"data.cache_dir": cache})
    settings = recorded.resolve_auto_fields(settings, workdir)  # The stored side, the pipeline.
    dataset = data.load_dataset(settings, workdir)
    split = dataset.train
    bank = proxy_bank.ProxyBank(os.path.join(workdir, "bank"))
    chosen = np.arange(0, len(split), 5)
    bank.store(chosen, split.images[chosen], label="step-0000")
    replicated, batch_sharding = parallel.shardings(parallel.make_mesh())
    model = train.create_model(settings, len(dataset.class_names))
    steps_per_epoch = data.num_batches(len(split), settings.batch_size)
    state = jax.device_put(
      train.create_train_state(settings, model, jax.random.key(0), steps_per_epoch), replicated
    )
    step_fn = steps.make_train_step(settings, replicated)
    count = min(FLAGS.batches, steps_per_epoch)
    device_batches = [
      parallel.to_global(b, batch_sharding, settings.batch_size)
      for _, b in zip(range(count), data.batches(split, settings.batch_size))
    ]
    state, _ = time_train_steps(state, step_fn, device_batches[:1])  # compile
    workers = settings.data.stream_workers
    loader, step_rates = [], []
    for _ in range(FLAGS.repeats):
      loader.append(time_loader(split, settings.batch_size, bank, batch_sharding, count, workers))
      state, rate = time_train_steps(state, step_fn, device_batches)
      step_rates.append(rate)
  loader_rate, step_rate = statistics.median(loader), statistics.median(step_rates)
  print(
    f"dataset {settings.data.name} ({settings.data.pipeline} pipeline), model "
    f"{settings.model.name}, {settings.image_size}px, batch {settings.batch_size}, "
    f"{jax.device_count()} {jax.devices()[0].platform} device(s)"
  )
  print(f"loader (read + bank swap + transfer): {loader_rate:8.0f} images/s")
  print(f"train step:                           {step_rate:8.0f} images/s")
  print(f"loader / train-step ratio:            {loader_rate / step_rate:8.1f}x")


# ---------------------------------------------------------------- decode


def _boxes(count: int, seed: int) -> np.ndarray:
  """RandomResizedCrop boxes on the stored square, drawn as the train step draws them."""
  return np.asarray(crop.random_boxes(jax.random.key(seed), count, STORED, STORED))


def _rate(fn, count: int) -> float:
  started = time.perf_counter()
  fn()
  return count / (time.perf_counter() - started)


def decode_part():
  root = os.path.expanduser(FLAGS.images)
  with tempfile.TemporaryDirectory() as scratch:
    pack_dir = os.path.join(scratch, "pack")
    index = packed.pack_folder(root, pack_dir)
    count = min(FLAGS.count, len(index["names"]))
    images = packed.open_pack(pack_dir, index, STORED)
    blobs = [images._read(i) for i in range(count)]  # pylint: disable=protected-access
    cached = np.lib.format.open_memmap(
      os.path.join(scratch, "cache.npy"), "w+", np.uint8, (count, STORED, STORED, 3)
    )
    cached[:] = images[np.arange(count)]
    bank = proxy_bank.ProxyBank(os.path.join(scratch, "bank"))
    banked = np.arange(0, count, 5)
    bank.store(banked, cached[banked], label="step-0000")
    chunks = [np.arange(i, min(i + BATCH, count)) for i in range(0, count, BATCH)]
    variants = {
      "stream decode to 256, this process": (lambda: images[np.arange(count)], 1),
      "cache gather (memmap)": (lambda: [np.asarray(cached[c]) for c in chunks], 1),
      "bank swap (20% banked)": (lambda: [bank.swap(c, np.asarray(cached[c])) for c in chunks], 1),
    }
    for size in (224, 128):
      boxes = _boxes(count, size)
      for use_draft in (True, False):
        name = f"stream decode + crop to {size}{'' if use_draft else ', no draft'}, here"
        variants[name] = (
          lambda s=size, b=boxes, d=use_draft: [
            crops.decode_crop(blob, STORED, box, s, d) for blob, box in zip(blobs, b)
          ],
          1,
        )
    variants["banked proxy crop to 224"] = (
      lambda b=_boxes(count, 224): [crops.crop_square(cached[i], b[i], 224) for i in range(count)],
      1,
    )
    rates = {name: [] for name in variants}
    boxes = _boxes(count, 224)
    crop_224 = packed.WorkerCrops([boxes[c] for c in chunks] * FLAGS.passes, 224)
    pooled = {(kind, n): [] for kind in ("decode to 256", "decode + crop to 224") for n in (1, 2)}
    starts = {key: [] for key in pooled}
    for name, (fn, _) in variants.items():  # Warm-up: the page cache.
      fn()
    for _ in range(FLAGS.repeats):
      for name, (fn, _) in variants.items():
        rates[name].append(_rate(fn, count))
      for kind, number in pooled:
        worker_crops = crop_224 if "crop" in kind else None
        start, rate = _grain_rate(images, chunks * FLAGS.passes, number, worker_crops)
        starts[kind, number].append(start)
        pooled[kind, number].append(rate)
  print(f"{count} JPEGs of {root}, medians of {FLAGS.repeats} alternating rounds")
  for name, (_, cores) in variants.items():
    total = statistics.median(rates[name])
    print(f"  {name:45s} {total:8.0f} images/s  {total / cores:8.0f} per core")
  for (kind, number), measured in pooled.items():
    total = statistics.median(measured)
    name = f"stream {kind}, {number} grain worker{'s' * (number > 1)}"
    print(
      f"  {name:45s} {total:8.0f} images/s  {total / number:8.0f} per core"
      f"  (first batch after {statistics.median(starts[kind, number]):.1f} s)"
    )


def _grain_rate(images, chunks, workers: int, worker_crops=None) -> tuple[float, float]:
  """(seconds to the first batch, images/s after it) of the stream's worker decode."""
  started = time.perf_counter()
  iterator = packed.batch_arrays(images, chunks, workers, worker_crops=worker_crops)
  next(iterator)
  first = time.perf_counter()
  count = sum(len(batch) for batch in iterator)
  return first - started, count / (time.perf_counter() - first)


# ---------------------------------------------------------------- checkpoints


def _bytes_under(path: str) -> int:
  return sum(
    os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names
  )


def _bank_growth(summary: dict):
  """(epochs, checkpoint epochs, {epoch: chosen count}) of a recorded proxy run."""
  config = summary["config"]
  epochs, every = int(config["num_epochs"]), int(config.get("checkpoint_every_epochs", 1))
  steps_at = {int(s["epoch"]): int(s["chosen"]) for s in summary["proxy_steps"]}
  saved = [e for e in range(1, epochs + 1) if e % every == 0 or e in steps_at or e == epochs]
  return saved, steps_at


def checkpoints_part():
  with open(FLAGS.summary) as f:
    summary = json.load(f)
  saved, steps_at = _bank_growth(summary)
  train_size = int(summary["num_examples"]["train"])
  side, rng = FLAGS.side, np.random.default_rng(0)
  state = {"params": np.zeros(1000, np.float32)}  # The state is the same for both: tiny.
  written = {}
  for on_disk in (False, True):
    with tempfile.TemporaryDirectory() as workdir:
      bank = proxy_bank.ProxyBank(os.path.join(workdir, "bank") if on_disk else None)
      ckpt, total = checkpoints.RunCheckpoints(workdir, 3), 0
      for epoch in saved:
        if epoch in steps_at:
          ids = np.sort(rng.choice(train_size, steps_at[epoch], replace=False))
          proxies = rng.integers(0, 256, (len(ids), side, side, 3), np.uint8)
          bank.store(ids, proxies, label=f"step-{epoch:04d}")
        item, files = bank.checkpoint_item()
        ckpt.save(epoch, state, {"epoch": epoch, "bank_size": len(bank), "bank_files": files}, item)
        total += _bytes_under(os.path.join(ckpt.directory, str(epoch)))
      ckpt.close()
      bank_files = _bytes_under(os.path.join(workdir, "bank"))
      kept = _bytes_under(ckpt.directory) + bank_files
      written[on_disk] = (total + bank_files, kept)
  print(
    f"bank growth of {FLAGS.summary} ({len(saved)} checkpoints, proxy steps after epochs "
    f"{sorted(steps_at)}), stored at {side}px, 3 checkpoints kept"
  )
  for on_disk, label in ((False, "bank in every checkpoint"), (True, "bank on disk")):
    total, kept = written[on_disk]
    print(f"  {label:26s} written {total / 1e6:10.1f} MB   kept {kept / 1e6:10.1f} MB")
  print(f"  ratio written: {written[False][0] / written[True][0]:.1f}x")


def main(_):
  {"loader": loader_part, "decode": decode_part, "checkpoints": checkpoints_part}[FLAGS.part]()


if __name__ == "__main__":
  cli.run_main(main, config_default=DEFAULT_CONFIG)
