"""Batch-size finder: the largest training batch whose compiled train step fits the device.

Run layer: `train` calls it for `batch_size=-1`; the command line is `proxy_jax.batch_size`.

Batch sizes are tried in doubling steps from `START` up to a ceiling. For each, the real train step
(model, optimizer, augmentation, donation) is compiled and XLA's memory analysis predicts its
peak; a size predicted above `batch_size_memory_fraction` of the device's `bytes_limit` is
rejected without running. A size that passes is confirmed by running one step; an out-of-memory
error (RESOURCE_EXHAUSTED) counts as "does not fit" and the search backs off to the last size
that ran. Ascending order keeps the device's peak-memory counter meaningful for each size.

Config fields read (with defaults, so configs need not define them):
  batch_size_ceiling (0)            largest size tried; 0 = 4096 where the device reports a memory
                                    limit (GPU/TPU) and 256 where it does not (CPU).
  batch_size_memory_fraction (0.9)  share of the limit the step may use; the rest is headroom for
                                    evaluation, CAM steps and the allocator.
`train.train_and_evaluate` calls `find_batch_size` when `config.batch_size == -1`, handing it a
`StepFactory` (the trainer's step and a fresh state): the finder never imports the trainer.
"""

import dataclasses
import os
import resource
import sys

from absl import logging
import jax
import numpy as np

from proxy_jax import data
from proxy_jax.run import records

START = 8
CEILING_WITH_LIMIT = 4096
CEILING_WITHOUT_LIMIT = 256
OOM_MARKERS = ("RESOURCE_EXHAUSTED", "out of memory", "Out of memory", "OOM")


@dataclasses.dataclass
class Probe:
  batch_size: int
  fits: bool
  predicted_bytes: int | None  # XLA memory analysis of the compiled step.
  measured_bytes: int | None  # Device peak after running it (host peak RSS on CPU).
  measured_source: str = ""
  reason: str = ""


def device_memory_limit(device) -> int | None:
  """The allocator's limit in bytes, or None where the backend reports none (CPU)."""
  try:
    stats = device.memory_stats()
  except (AttributeError, NotImplementedError, RuntimeError):
    return None
  return int(stats["bytes_limit"]) if stats and stats.get("bytes_limit") else None


def peak_memory(device) -> tuple[int | None, str]:
  try:
    stats = device.memory_stats()
  except (AttributeError, NotImplementedError, RuntimeError):
    stats = None
  if stats and "peak_bytes_in_use" in stats:
    return int(stats["peak_bytes_in_use"]), "device peak"
  # Linux reports ru_maxrss in KiB: the whole process, an upper bound for the step.
  kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return (kib * 1024 if sys.platform != "darwin" else kib), "host peak RSS"


def predicted_bytes(memory_analysis) -> int | None:
  """Peak estimate of one compiled call: inputs + outputs (less donated aliases) + scratch."""
  if memory_analysis is None:
    return None
  m = memory_analysis
  return int(
    m.argument_size_in_bytes
    + m.output_size_in_bytes
    - m.alias_size_in_bytes
    + m.temp_size_in_bytes
    + m.generated_code_size_in_bytes
  )


def is_out_of_memory(error: Exception) -> bool:
  return any(marker in str(error) for marker in OOM_MARKERS)


def dummy_batch(settings, batch_size: int, num_classes: int) -> dict:
  """A batch as the train step gets it: stored images (side `data.load_size`), or crops when
  the stream's workers crop (`data.train_batch_side`)."""
  size = data.train_batch_side(settings)
  return {
    "image": np.zeros((batch_size, size, size, 3), np.uint8),
    "label": (np.arange(batch_size) % num_classes).astype(np.int32),
    "id": np.arange(batch_size, dtype=np.int32),
    "mask": np.ones(batch_size, np.float32),
  }


def run_step(compiled, state, batch, key):
  """Runs the step once and waits for it, so an allocation failure surfaces here."""
  new_state, metrics = compiled(state, batch, key)
  jax.block_until_ready((new_state, metrics))
  return new_state


@dataclasses.dataclass
class StepFactory:
  """The train step `step(state, batch, key)` and a host copy of a fresh state, built once by
  the caller (`train.finder_step_factory`) for every probe.

  The state lives on the host between probes (the step donates it, and a device copy would
  count against the memory being measured); a pretrained model is loaded once, not per probe.
  """

  step: object
  host_state: object


def probe(
  factory: StepFactory,
  settings,
  num_classes: int,
  batch_size: int,
  limit: int | None,
  fraction: float,
) -> Probe:
  """Compiles (and, if predicted to fit, runs) one train step at `batch_size`."""
  device = jax.devices()[0]
  predicted = None
  try:
    state = jax.device_put(factory.host_state, device)
    batch = dummy_batch(settings, batch_size, num_classes)
    key = jax.random.key(1)
    if hasattr(factory.step, "lower"):
      compiled = factory.step.lower(state, batch, key).compile()
      predicted = predicted_bytes(compiled.memory_analysis())
    else:
      compiled = factory.step
    if limit is not None and predicted is not None and predicted > fraction * limit:
      return Probe(
        batch_size,
        False,
        predicted,
        None,
        reason=f"predicted above {fraction:.0%} of the {mib(limit)} limit",
      )
    del state  # Only the step's donated copy may hold device memory while it runs.
    run_step(compiled, jax.device_put(factory.host_state, device), batch, key)
  except (jax.errors.JaxRuntimeError, RuntimeError, MemoryError) as error:
    if isinstance(error, MemoryError) or is_out_of_memory(error):
      return Probe(
        batch_size,
        False,
        predicted,
        None,
        reason="out of memory when run: " + str(error).splitlines()[0][:200],
      )
    raise
  measured, source = peak_memory(device)
  return Probe(batch_size, True, predicted, measured, source, "ran")


def candidate_sizes(ceiling: int, start: int = START) -> list[int]:
  """start, 2 start, 4 start, ... up to the ceiling, which is always the last candidate."""
  sizes, size = [], min(start, ceiling)
  while size < ceiling:
    sizes.append(size)
    size *= 2
  return sizes + [ceiling]


def resolve_ceiling(settings, limit: int | None) -> int:
  ceiling = int(settings.batch_size_ceiling or 0)
  if ceiling <= 0:
    ceiling = CEILING_WITH_LIMIT if limit is not None else CEILING_WITHOUT_LIMIT
  return ceiling


def search(settings, num_classes: int, factory: StepFactory) -> tuple[int, list[Probe]]:
  """(chosen batch size, every probe made), smallest first; raises if not even 1 fits."""
  limit = device_memory_limit(jax.devices()[0])
  fraction = float(settings.batch_size_memory_fraction)
  ceiling = resolve_ceiling(settings, limit)
  probes, chosen = [], None
  for size in candidate_sizes(ceiling):
    result = probe(factory, settings, num_classes, size, limit, fraction)
    probes.append(result)
    _log(result)
    if not result.fits:
      break
    chosen = size
  if chosen is None:
    # Even the start size failed: back off below it by halving.
    size = min(START, ceiling) // 2
    while size >= 1 and chosen is None:
      result = probe(factory, settings, num_classes, size, limit, fraction)
      probes.append(result)
      _log(result)
      chosen = size if result.fits else None
      size //= 2
  if chosen is None:
    raise RuntimeError("not even batch size 1 fits the device: " + probes[-1].reason)
  return chosen, probes


def find_batch_size(settings, num_classes: int, factory: StepFactory) -> int:
  """The largest fitting batch size (up to the ceiling); see the module docstring."""
  chosen, _ = search(settings, num_classes, factory)
  logging.info("batch-size finder chose %d", chosen)
  return chosen


def _with_batch_size(settings, value: int):
  return dataclasses.replace(settings, batch_size=value)


def with_recorded_batch_size(settings, workdir: str):
  """batch_size=-1 in a workdir that already chose one: that choice, from its config.json.

  A resumed run must not search again: other hardware or load could pick another size and
  change the steps per epoch and the learning-rate schedule mid-run.
  """
  path = os.path.join(workdir, records.CONFIG_FILE)
  if settings.batch_size != -1 or not os.path.exists(path):
    return settings
  recorded = records.read_recorded_config(workdir).get("batch_size")
  if not isinstance(recorded, int) or recorded <= 0:
    return settings
  logging.info("batch_size=-1: reusing the batch size %d recorded in %s.", recorded, path)
  return _with_batch_size(settings, recorded)


def with_found_batch_size(settings, num_classes: int, factory: StepFactory):
  """`settings` with the finder's batch size, rounded down to a multiple of the devices."""
  found = find_batch_size(settings, num_classes, factory)
  # The finder sizes one device's step; the global batch is split over all of them.
  devices = jax.device_count()
  chosen = max(devices, found // devices * devices)
  logging.info("Batch size finder chose %d (%d device(s)).", chosen, devices)
  return _with_batch_size(settings, chosen)


def mib(value) -> str:
  return "n/a" if value is None else f"{value / 2**20:.1f} MiB"


def _log(result: Probe) -> None:
  logging.info(
    "batch %d: %s; predicted %s, measured %s (%s)",
    result.batch_size,
    "fits" if result.fits else "does not fit (" + result.reason + ")",
    mib(result.predicted_bytes),
    mib(result.measured_bytes),
    result.measured_source or "not run",
  )
