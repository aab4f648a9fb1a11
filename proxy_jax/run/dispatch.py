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
    multi-host array; unsharded results are plain device_gets) and are trimmed of padding;
    or, read with `fetch_local`, only the rows this process's own devices computed come back to
    it (no collective): each real row is owned by the process whose share of its chunk holds it.

`apply_chunked` concatenates the per-chunk results; `map_chunks` is the general form (a custom
`collect`, e.g. read back only what is needed, or keep results on the device to reduce them
there). Both dispatch chunk i + 1 before reading chunk i back, so the host prepares the next
chunk while the device computes, with at most `ahead + 1` chunks' results held on the device.
`dispatch` reads nothing back while it dispatches: every chunk's results stay on the device
(`OnDevice`) until the pass is over and `OnDevice.fetch` reads the rows it is asked for at once.
It trades device memory for a device that never waits on the host; a `buffer_bytes` bounds that
memory by draining the oldest held chunks to the host while later ones compute.
"""

import collections
import dataclasses
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from proxy_jax.core import parallel


def padded_chunks(
  count: int, size: int, power_of_two: bool = False
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

  start: int  # Position of the first row (a seed for per-chunk noise keys).
  rows: np.ndarray  # Positions of every row, padding included.
  valid: int  # The first `valid` rows are real.
  inputs: dict  # The arrays at `rows` (global device arrays when sharded), "mask" if asked.
  sharded: bool
  owner: np.ndarray | None = None  # The process whose share holds each row (sharded only).

  def fetch(self, tree):
    """A result tree of this chunk as numpy arrays on every process, padding dropped."""
    host = parallel.to_host(tree) if self.sharded else jax.device_get(tree)
    return jax.tree.map(lambda x: np.asarray(x)[: self.valid], host)

  def fetch_local(self, tree) -> tuple[np.ndarray, Any]:
    """(positions, rows): the real rows of a result tree that this process owns, read from its
    own devices only (not a collective), and their input positions."""
    mine = np.flatnonzero(self.owned()[: self.valid])
    return self.rows[mine], jax.tree.map(lambda x: _read_rows(x, mine), tree)

  def owned(self) -> np.ndarray:
    """Bool per row of `rows`: whether this process owns it (all rows when unsharded)."""
    if self.owner is None:
      return np.ones(len(self.rows), bool)
    return self.owner == jax.process_index()


def row_owners(width: int) -> np.ndarray:
  """The process whose share (`parallel.process_share`) holds each of a chunk's `width` rows."""
  count = jax.process_count()
  sizes = [len(parallel.process_share(np.arange(width), (p, count))) for p in range(count)]
  return np.repeat(np.arange(count), sizes)


def _read_rows(array, rows: np.ndarray) -> np.ndarray:
  """`array[rows]` as a host copy, read from the addressable shards that hold those rows."""
  if not isinstance(array, jax.Array):
    return np.array(np.asarray(array)[rows])
  out = np.empty((len(rows), *array.shape[1:]), array.dtype)
  done = np.zeros(len(rows), bool)
  for shard in array.addressable_shards:
    start, stop, _ = _row_span(shard, array.shape[0])
    hit = ~done & (rows >= start) & (rows < stop)
    if hit.any():
      out[hit] = np.asarray(shard.data)[rows[hit] - start]
      done |= hit
  if not done.all():
    raise ValueError(f"rows {rows[~done][:5].tolist()} are on no device of this process")
  return out


def _row_span(shard, length: int) -> tuple[int, int, int]:
  """(start, stop, step) of the rows of an array of `length` rows that `shard` holds."""
  index = shard.index[0] if shard.index else slice(None)
  return index.indices(length)


def _shard_on(array, device):
  return next(shard for shard in array.addressable_shards if shard.device == device)


def _count(arrays: Mapping[str, np.ndarray]) -> int:
  counts = {name: len(array) for name, array in arrays.items()}
  if len(set(counts.values())) != 1:
    raise ValueError(f"chunked arrays need one common length, got {counts}")
  return next(iter(counts.values()))


def chunks(
  arrays: Mapping[str, np.ndarray],
  size: int,
  *,
  sharding=None,
  power_of_two: bool = False,
  mask: bool = False,
) -> Iterator[Chunk]:
  """The chunks of `arrays` (equal-length host arrays by name), `size` rows each.

  `mask` adds inputs["mask"], float32 1 for real rows and 0 for padding (for functions that
  reduce over the chunk). With `sharding` every process passes the same full host arrays and
  reads only its share of each chunk's rows (`parallel.process_share`).
  """
  count = _count(arrays)
  devices = len(sharding.device_set) if sharding is not None else 1
  for rows, valid in padded_chunks(count, size, power_of_two):
    rows = np.resize(rows, -(-len(rows) // devices) * devices)  # Whole shares per device.
    share = parallel.process_share(np.arange(len(rows))) if sharding is not None else slice(None)
    host = {name: array[rows[share]] for name, array in arrays.items()}
    if mask:
      host["mask"] = (np.arange(len(rows)) < valid).astype(np.float32)[share]
    inputs = parallel.to_global(host, sharding, len(rows)) if sharding is not None else host
    owner = row_owners(len(rows)) if sharding is not None else None
    yield Chunk(int(rows[0]), rows, valid, inputs, sharding is not None, owner)


def _fetch(chunk: Chunk, outputs):
  return chunk.fetch(outputs)


def keep_on_device(chunk: Chunk, outputs):  # pylint: disable=unused-argument
  """A `collect` that reads nothing back (results to be reduced on the device)."""
  return outputs


def map_chunks(
  fn: Callable[[Chunk], Any],
  arrays: Mapping[str, np.ndarray],
  size: int,
  *,
  collect: Callable[[Chunk, Any], Any] = _fetch,
  ahead: int = 1,
  **chunk_options,
) -> list:
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


def apply_chunked(
  fn: Callable[[Chunk], Any], arrays: Mapping[str, np.ndarray], size: int, **options
):
  """fn's results over all rows of `arrays`, as numpy arrays concatenated in row order.

  `fn(chunk)` returns a tree of arrays with one leading row per input row. With no rows the
  result has fn's trailing shapes and dtypes and zero rows (found by tracing, no compute).
  """
  parts = map_chunks(fn, arrays, size, **options)
  if parts:
    return jax.tree.map(lambda *leaves: np.concatenate(leaves), *parts)
  return _empty_result(fn, arrays, options.get("mask", False))


@dataclasses.dataclass(frozen=True)
class Drained:
  """Rows of one result leaf read back while the pass ran: `values[i]` is input `positions[i]`."""

  positions: np.ndarray  # Ascending input positions (a drain may keep only some rows).
  values: np.ndarray


def drain_rows(chunk: Chunk, outputs):
  """The default drain: every real row of every result leaf, read back to the host."""
  positions = chunk.rows[: chunk.valid]
  # Copies: on XLA:CPU a read back can be a view that keeps the device array alive.
  return jax.tree.map(lambda x: Drained(positions, np.array(x)), chunk.fetch(outputs))


@dataclasses.dataclass(frozen=True)
class OnDevice:
  """A pass's results (`dispatch`): chunks still on the device, plus those drained to the host."""

  parts: list  # fn's result tree of each held chunk (zero-row numpy arrays for no rows).
  rows: np.ndarray  # For each input row, its row in the concatenated parts (-1: drained).
  sharded: bool
  drained: Any = None  # A result tree of `Drained` leaves, None when nothing was drained.
  peak_bytes: int = 0  # The most result bytes held at once (the chunk just dispatched too).
  drained_chunks: int = 0
  owner: np.ndarray | None = None  # For each input row, the process that owns its results.

  def owners(self, positions) -> np.ndarray:
    """The process owning each input position's results (`Chunk.owned`; 0 when unsharded)."""
    positions = np.asarray(positions, np.int64)
    return np.zeros(len(positions), np.int64) if self.owner is None else self.owner[positions]

  def select(self, pick: Callable[[Any], Any]) -> "OnDevice":
    """The same pass with each chunk's result tree reduced by `pick`, e.g. to one leaf."""
    drained = None if self.drained is None else pick(self.drained)
    return dataclasses.replace(self, parts=[pick(part) for part in self.parts], drained=drained)

  def fetch(self, positions=None):
    """The result rows of input `positions` (all by default) as numpy arrays on every process.

    Held rows are gathered on the device first, so only they cross to the host, in one transfer
    (from every process with `parallel.to_host` when sharded). The gather's length is rounded
    up to a power of two: a pass compiles it for a few lengths, whatever the number asked for.
    Drained rows come from the host copies; a row its drain did not keep raises a KeyError.
    """
    positions = np.arange(len(self.rows)) if positions is None else np.asarray(positions, np.int64)
    rows = self.rows[positions]
    held = rows >= 0
    from_device = self._gather(rows[held])
    if held.all():
      return from_device
    return jax.tree.map(
      lambda got, kept: _combine(positions, held, got, kept), from_device, self.drained
    )

  def fetch_local(self, positions) -> tuple[np.ndarray, Any]:
    """(mine, rows): of input `positions`, those this process owns (in the order given) and
    their result rows, read from this process's devices only: per device one gather there and
    one transfer, no collective. Drained rows come from the drains' host copies, which need
    keep only the rows their process owns (`Chunk.fetch_local`)."""
    positions = np.asarray(positions, np.int64)
    mine = positions[self.owners(positions) == (jax.process_index() if self.sharded else 0)]
    rows = self.rows[mine]
    held = rows >= 0
    from_device = self._gather_local(rows[held])
    if held.all():
      return mine, from_device
    return mine, jax.tree.map(
      lambda got, kept: _combine(mine, held, got, kept), from_device, self.drained
    )

  def _gather_local(self, rows):
    """Rows of the concatenated parts, each held by one of this process's devices: per device,
    one gather over that device's shards of every part, then one transfer."""
    if not self.sharded:  # Results on one device (or host arrays): all of them are local.
      return self._gather(rows)
    out = jax.tree.map(lambda x: np.zeros((len(rows), *x.shape[1:]), x.dtype), self.parts[0])
    if not len(rows):
      return out
    starts = np.cumsum([0] + [jax.tree.leaves(tree)[0].shape[0] for tree in self.parts])
    part = np.searchsorted(starts, rows, side="right") - 1
    inner, todo = rows - starts[part], np.ones(len(rows), bool)
    for device in [shard.device for shard in jax.tree.leaves(self.parts[0])[0].addressable_shards]:
      pieces, taken, index, offset = [], [], [], 0
      for number, tree in enumerate(self.parts):
        length = starts[number + 1] - starts[number]
        start, stop, _ = _row_span(_shard_on(jax.tree.leaves(tree)[0], device), length)
        hit = np.flatnonzero(todo & (part == number) & (inner >= start) & (inner < stop))
        todo[hit] = False
        taken.append(hit)
        index.append(offset + inner[hit] - start)
        pieces.append(jax.tree.map(lambda x: _shard_on(x, device).data, tree))  # pylint: disable=cell-var-from-loop
        offset += stop - start
      taken, index = np.concatenate(taken), np.concatenate(index)
      if len(taken):
        padded = np.resize(index, 1 << (len(index) - 1).bit_length())
        got = jax.device_get(_take(pieces, jax.device_put(padded, device)))
        for leaf, values in zip(jax.tree.leaves(out), jax.tree.leaves(got)):
          leaf[taken] = np.asarray(values)[: len(taken)]
    if todo.any():
      raise ValueError(f"rows {rows[todo][:5].tolist()} are on no device of this process")
    return out

  def _gather(self, rows):
    if not len(rows):
      return jax.tree.map(lambda x: np.zeros((0, *x.shape[1:]), x.dtype), self.parts[0])
    taken = _take(self.parts, np.resize(rows, 1 << (len(rows) - 1).bit_length()))
    host = parallel.to_host(taken) if self.sharded else jax.device_get(taken)
    return jax.tree.map(lambda x: np.asarray(x)[: len(rows)], host)


def _combine(positions, held, from_device, kept: Drained) -> np.ndarray:
  """One leaf's rows at `positions`: the held ones from the device, the others from `kept`."""
  out = np.empty((len(positions), *from_device.shape[1:]), from_device.dtype)
  out[held] = from_device
  wanted = positions[~held]
  index = np.minimum(np.searchsorted(kept.positions, wanted), max(len(kept.positions) - 1, 0))
  missing = wanted[kept.positions[index] != wanted] if len(kept.positions) else wanted
  if len(missing):
    raise KeyError(f"input rows {missing[:5].tolist()} were drained without this result")
  out[~held] = kept.values[index]
  return out


@jax.jit
def _take(parts, index):
  return jax.tree.map(lambda *leaves: jnp.concatenate(leaves)[index], *parts)


def _nbytes(tree) -> int:
  # Global sizes: the same on every process, so all of them drain the same chunks (collectives).
  return sum(int(leaf.nbytes) for leaf in jax.tree.leaves(tree))


def dispatch(
  fn: Callable[[Chunk], Any],
  arrays: Mapping[str, np.ndarray],
  size: int,
  *,
  buffer_bytes: int | None = None,
  drain: Callable[[Chunk, Any], Any] = drain_rows,
  **chunk_options,
) -> OnDevice:
  """fn(chunk) for every chunk, the results left on the device: a pass that need not wait.

  The host only prepares and enqueues chunks (JAX dispatches asynchronously), so the device
  runs the pass back to back. The loop runs under `transfer_guard_device_to_host(
  "disallow_explicit")`, so a read back in it raises on accelerators (not on XLA:CPU, whose
  arrays are host memory the guard does not watch). Memory: the device holds the results,
  padding included (for uint8 proxies and maps of N images of side S, N * S * S * 4 bytes; the
  fetch's gather may copy them once more). With `buffer_bytes`, once the results held exceed it
  the oldest half of the held chunks is drained: `drain(chunk, results)` reads them back (a tree
  of `Drained`, e.g. only the rows a caller may ask for), while the chunks dispatched after them
  keep the device busy. So at most max(buffer_bytes, one chunk) stay held, plus the newest chunk
  while a drain reads; a pass that fits the buffer reads nothing back until `OnDevice.fetch`.
  """
  held, drained = collections.deque(), []
  peak, owner = 0, np.zeros(_count(arrays), np.int64)
  with jax.transfer_guard_device_to_host("disallow_explicit"):
    for chunk in chunks(arrays, size, **chunk_options):
      if chunk.owner is not None:
        owner[chunk.rows[: chunk.valid]] = chunk.owner[: chunk.valid]
      out = fn(chunk)
      # Without its inputs: a held chunk must not keep its images on the device.
      held.append((dataclasses.replace(chunk, inputs={}), out, _nbytes(out)))
      del out, chunk  # A drained chunk's results must not outlive the drain.
      peak = max(peak, sum(item[2] for item in held))
      if buffer_bytes is not None:
        _make_room(held, buffer_bytes, drain, drained)
  parts, rows, offset = [], np.full(_count(arrays), -1, np.int64), 0
  for chunk, out, _ in held:
    parts.append(out)
    rows[chunk.rows[: chunk.valid]] = offset + np.arange(chunk.valid)
    offset += len(chunk.rows)
  if not parts:
    parts = [_empty_result(fn, arrays, chunk_options.get("mask", False))]
  merged = jax.tree.map(_merge_drained, *drained) if drained else None
  sharded = chunk_options.get("sharding") is not None
  return OnDevice(parts, rows, sharded, merged, peak, len(drained), owner if sharded else None)


def _make_room(held: collections.deque, limit: int, drain, drained: list) -> None:
  """Drains the oldest half of the chunks before the newest until the held results fit `limit`."""
  while len(held) > 1 and sum(item[2] for item in held) > limit:
    with jax.transfer_guard_device_to_host("allow"):
      for _ in range(len(held) // 2):
        chunk, out, _ = held.popleft()
        drained.append(drain(chunk, out))


def _merge_drained(*parts: Drained) -> Drained:
  return Drained(
    np.concatenate([p.positions for p in parts]), np.concatenate([p.values for p in parts])
  )


def _empty_result(fn, arrays, mask: bool):
  specs = {
    name: jax.ShapeDtypeStruct((1, *array.shape[1:]), array.dtype) for name, array in arrays.items()
  }
  if mask:
    specs["mask"] = jax.ShapeDtypeStruct((1,), np.float32)
  probe = Chunk(0, np.zeros(1, np.int64), 0, {}, False)
  shapes = jax.eval_shape(lambda inputs: fn(dataclasses.replace(probe, inputs=inputs)), specs)
  return jax.tree.map(lambda s: np.zeros((0, *s.shape[1:]), s.dtype), shapes)
