"""Data parallelism with `jax.sharding`: one mesh axis over all devices, batches split on it.

The same code runs on one device (a mesh of one) and on several hosts, where every process
knows the whole batch's rows (the data order is a function of the seed) but reads and passes
only its own share of them.
"""

import os
import queue
import threading

import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np


def make_mesh() -> Mesh:
  return Mesh(np.array(jax.devices()), ("data",))


def compute_slice() -> dict:
  """The compute this process's run uses, as summary.json records it: the backend, the first
  device's kind, the global device and process counts, and on CPU the cores it may run on.

  XLA:CPU splits reductions by its thread pool, which it sizes from the affinity mask (a sweep's
  --parallel pins each trial to its share), so the same run on 1 or 2 cores differs in the last
  bits, and training amplifies that; on GPUs the device kind and count matter likewise.
  """
  backend = jax.default_backend()
  threads = None
  if backend == "cpu":
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  return {
    "platform": backend,
    "device_kind": jax.devices()[0].device_kind,
    "devices": jax.device_count(),
    "processes": jax.process_count(),
    "cpu_threads": threads,
  }


def shardings(mesh: Mesh):
  return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))


def process_share(rows: np.ndarray, process: tuple[int, int] | None = None) -> np.ndarray:
  """This process's contiguous share of a global batch's rows, in process order: the rows it
  reads, and what `to_global` expects it to pass. `process` = (index, count), default JAX's."""
  index, count = process if process is not None else (jax.process_index(), jax.process_count())
  return np.array_split(rows, count)[index] if count > 1 else rows


def to_global(local_batch: dict, batch_sharding, global_rows: int) -> dict:
  """Each process's rows of a batch (`process_share`) -> global arrays of `global_rows` rows
  split over the mesh's data axis. No process needs (or reads) another's rows."""

  def put(array):
    shape = (global_rows, *np.shape(array)[1:])
    return jax.make_array_from_process_local_data(batch_sharding, array, shape)

  return {k: put(v) for k, v in local_batch.items()}


def to_host(tree):
  """Global arrays -> numpy arrays of their full value, on every process.

  With several processes a batch-sharded array is not fully addressable (`np.asarray` fails):
  its shards are gathered from all processes. A collective: every process must call it, in
  the same order, with the same shapes.
  """
  if jax.process_count() == 1:
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


def sum_over_processes(counts: np.ndarray) -> np.ndarray:
  """Each process's integer counts, summed over all processes (a collective, like `to_host`)."""
  counts = np.asarray(counts, np.int64)
  if jax.process_count() == 1:
    return counts
  # As bytes: without jax_enable_x64 the gather would narrow int64 to int32 (and overflow).
  gathered = np.asarray(multihost_utils.process_allgather(counts.view(np.uint8)), np.uint8)
  return gathered.view(np.int64).reshape(-1, *counts.shape).sum(axis=0)


def prefetch(iterator, size: int = 2):
  """Runs a host iterator in a background thread, `size` items ahead of the consumer."""
  items, done = queue.Queue(maxsize=size), object()

  def produce():
    try:
      for item in iterator:
        items.put(item)
      items.put(done)
    except BaseException as error:  # pylint: disable=broad-except
      items.put(error)

  threading.Thread(target=produce, daemon=True).start()
  while (item := items.get()) is not done:
    if isinstance(item, BaseException):
      raise item
    yield item
