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
"""

import collections
import dataclasses
from typing import Any, Callable, Iterator, Mapping

import jax
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


def _empty_result(fn, arrays, mask: bool):
  specs = {name: jax.ShapeDtypeStruct((1, *array.shape[1:]), array.dtype)
           for name, array in arrays.items()}
  if mask:
    specs["mask"] = jax.ShapeDtypeStruct((1,), np.float32)
  probe = Chunk(0, np.zeros(1, np.int64), 0, {}, False)
  shapes = jax.eval_shape(lambda inputs: fn(dataclasses.replace(probe, inputs=inputs)), specs)
  return jax.tree.map(lambda s: np.zeros((0, *s.shape[1:]), s.dtype), shapes)
