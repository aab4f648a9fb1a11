"""Host arrays through a jitted function chunk by chunk: one shape, sharded, gathered, trimmed.

Every pass over a whole split or image set goes through here: evaluation, the proxy step's
predictions, fused scan and CAMs, inference's logits and maps, the faithfulness scores. The
three things such a pass must get right live in one place:

  * padding: every chunk has the same number of rows (`padded_chunks`), so a jitted function
    compiles once; the ragged last chunk repeats its own rows and its padding is dropped
    (or masked, with `mask=True`);
  * sharding: with a `sharding` (the batch sharding of `parallel.shardings`), each chunk is
    rounded up to whole shares per device and split over the mesh (`parallel.to_global`);
  * transfer: results come back to every process (`parallel.to_host` gathers the shards of a
    multi-host array; unsharded results are plain device_gets) and are trimmed of padding.

`apply_chunked` concatenates the per-chunk results; `map_chunks` is the general form (a custom
`collect`, e.g. read back only what is needed, or keep results on the device to reduce them
there). Both dispatch chunk i + 1 before reading chunk i back, so the host prepares the next
chunk while the device computes, with at most `ahead + 1` chunks' results held on the device.
`dispatch` never reads back while it dispatches: every chunk's results stay on the device
(`OnDevice`) until the pass is over and `OnDevice.fetch` reads the rows it is asked for at once.
It trades device memory (the whole pass's results) for a device that never waits on the host.
"""

import collections
import dataclasses
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from proxy_jax import parallel


def padded_chunks(count: int, size: int, power_of_two: bool = False
                  ) -> Iterator[tuple[np.ndarray, int]]:
  """Positions 0..count-1 in chunks of one fixed shape: yields (rows, valid) per chunk.

  `rows` holds `size` positions; a ragged last chunk repeats its own positions, so it is padded
  with real examples (no out-of-range label, no NaN from a blank image) and a jitted function
  sees the shape it already compiled. Only the first `valid` entries are real: callers keep
  `out[:valid]` or mask the rest. `power_of_two` pads the last chunk only to the next power of
  two (at most log2(size) more shapes) when the padding itself would cost too much compute.
  """
  size = max(1, int(size))
  for begin in range(0, count, size):
    valid = min(size, count - begin)
    width = min(size, 1 << (valid - 1).bit_length()) if power_of_two else size
    yield np.resize(np.arange(begin, begin + valid), width), valid


@dataclasses.dataclass(frozen=True)
class Chunk:
  """One chunk of the host arrays, ready for the device."""
  start: int         # Position of the first row (a seed for per-chunk noise keys).
  rows: np.ndarray   # Positions of every row, padding included.
  valid: int         # The first `valid` rows are real.
  inputs: dict       # The arrays at `rows` (global device arrays when sharded), "mask" if asked.
  sharded: bool

  def fetch(self, tree):
    """A result tree of this chunk as numpy arrays on every process, padding dropped."""
    host = parallel.to_host(tree) if self.sharded else jax.device_get(tree)
    return jax.tree.map(lambda x: np.asarray(x)[:self.valid], host)


def _count(arrays: Mapping[str, np.ndarray]) -> int:
  counts = {name: len(array) for name, array in arrays.items()}
  if len(set(counts.values())) != 1:
    raise ValueError(f"chunked arrays need one common length, got {counts}")
  return next(iter(counts.values()))


def chunks(arrays: Mapping[str, np.ndarray], size: int, *, sharding=None,
           power_of_two: bool = False, mask: bool = False) -> Iterator[Chunk]:
  """The chunks of `arrays` (equal-length host arrays by name), `size` rows each.

  `mask` adds inputs["mask"], float32 1 for real rows and 0 for padding (for functions that
  reduce over the chunk). With `sharding` every process passes the same full host arrays and
  contributes its slice of each chunk.
  """
  count = _count(arrays)
  devices = len(sharding.device_set) if sharding is not None else 1
  for rows, valid in padded_chunks(count, size, power_of_two):
    rows = np.resize(rows, -(-len(rows) // devices) * devices)  # Whole shares per device.
    host = {name: array[rows] for name, array in arrays.items()}
    if mask:
      host["mask"] = (np.arange(len(rows)) < valid).astype(np.float32)
    inputs = parallel.to_global(host, sharding) if sharding is not None else host
    yield Chunk(int(rows[0]), rows, valid, inputs, sharding is not None)


def _fetch(chunk: Chunk, outputs):
  return chunk.fetch(outputs)


def keep_on_device(chunk: Chunk, outputs):  # pylint: disable=unused-argument
  """A `collect` that reads nothing back (results to be reduced on the device)."""
  return outputs


def map_chunks(fn: Callable[[Chunk], Any], arrays: Mapping[str, np.ndarray], size: int, *,
               collect: Callable[[Chunk, Any], Any] = _fetch, ahead: int = 1,
               **chunk_options) -> list:
  """[collect(chunk, fn(chunk)) for every chunk]; by default the host results, trimmed.

  Chunk i + `ahead` is dispatched before chunk i is collected. `chunk_options` go to `chunks`.
  """
  pending, results = collections.deque(), []
  for chunk in chunks(arrays, size, **chunk_options):
    pending.append((chunk, fn(chunk)))
    if len(pending) > ahead:
      results.append(collect(*pending.popleft()))
  results.extend(collect(*item) for item in pending)
  return results


def apply_chunked(fn: Callable[[Chunk], Any], arrays: Mapping[str, np.ndarray], size: int,
                  **options):
  """fn's results over all rows of `arrays`, as numpy arrays concatenated in row order.

  `fn(chunk)` returns a tree of arrays with one leading row per input row. With no rows the
  result has fn's trailing shapes and dtypes and zero rows (found by tracing, no compute).
  """
  parts = map_chunks(fn, arrays, size, **options)
  if parts:
    return jax.tree.map(lambda *leaves: np.concatenate(leaves), *parts)
  return _empty_result(fn, arrays, options.get("mask", False))


@dataclasses.dataclass(frozen=True)
class OnDevice:
  """Every chunk's results of a pass (`dispatch`), still on the device, padding rows included."""
  parts: list        # fn's result tree of each chunk (zero-row numpy arrays for no rows).
  rows: np.ndarray   # For each input row, in input order, its row in the concatenated parts.
  sharded: bool

  def select(self, pick: Callable[[Any], Any]) -> "OnDevice":
    """The same pass with each chunk's result tree reduced by `pick`, e.g. to one leaf."""
    return dataclasses.replace(self, parts=[pick(part) for part in self.parts])

  def fetch(self, positions=None):
    """The result rows of input `positions` (all by default) as numpy arrays on every process.

    The rows are gathered on the device first, so only they cross to the host, in one transfer
    (from every process with `parallel.to_host` when sharded). The gather's length is rounded
    up to a power of two: a pass compiles it for a few lengths, whatever the number asked for.
    """
    rows = self.rows if positions is None else self.rows[np.asarray(positions, np.int64)]
    if not len(rows):
      return jax.tree.map(lambda x: np.zeros((0, *x.shape[1:]), x.dtype), self.parts[0])
    taken = _take(self.parts, np.resize(rows, 1 << (len(rows) - 1).bit_length()))
    host = parallel.to_host(taken) if self.sharded else jax.device_get(taken)
    return jax.tree.map(lambda x: np.asarray(x)[:len(rows)], host)


@jax.jit
def _take(parts, index):
  return jax.tree.map(lambda *leaves: jnp.concatenate(leaves)[index], *parts)


def dispatch(fn: Callable[[Chunk], Any], arrays: Mapping[str, np.ndarray], size: int,
             **chunk_options) -> OnDevice:
  """fn(chunk) for every chunk, all results left on the device: a pass that never waits.

  The host only prepares and enqueues chunks (JAX dispatches asynchronously), so the device
  runs the pass back to back. The loop runs under `transfer_guard_device_to_host(
  "disallow_explicit")`, so a read back in it raises on accelerators (not on XLA:CPU, whose
  arrays are host memory the guard does not watch). Memory: the device holds every chunk's
  results until they are fetched, padding included (for uint8 proxies and maps of N images of
  side S, N * S * S * 4 bytes; the fetch's gather may copy them once more), where `map_chunks`
  holds `ahead + 1` chunks'.
  """
  parts, rows, offset = [], [], 0
  with jax.transfer_guard_device_to_host("disallow_explicit"):
    for chunk in chunks(arrays, size, **chunk_options):
      parts.append(fn(chunk))
      rows.append(offset + np.arange(chunk.valid))
      offset += len(chunk.rows)
  if not parts:
    parts = [_empty_result(fn, arrays, chunk_options.get("mask", False))]
  return OnDevice(parts, np.concatenate(rows) if rows else np.zeros(0, np.int64),
                  chunk_options.get("sharding") is not None)


def _empty_result(fn, arrays, mask: bool):
  specs = {name: jax.ShapeDtypeStruct((1, *array.shape[1:]), array.dtype)
           for name, array in arrays.items()}
  if mask:
    specs["mask"] = jax.ShapeDtypeStruct((1,), np.float32)
  probe = Chunk(0, np.zeros(1, np.int64), 0, {}, False)
  shapes = jax.eval_shape(lambda inputs: fn(dataclasses.replace(probe, inputs=inputs)), specs)
  return jax.tree.map(lambda s: np.zeros((0, *s.shape[1:]), s.dtype), shapes)
