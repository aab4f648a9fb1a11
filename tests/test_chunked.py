"""The chunked-apply helper: fixed shapes, padding never leaks, chunked equals all at once."""

import os
import subprocess
import sys
import textwrap

from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np

from proxy_jax import data
from proxy_jax.run import dispatch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@given(st.integers(0, 40), st.integers(1, 9), st.booleans())
def test_padded_chunks_cover_each_position_once_in_fixed_shapes(count, size, power_of_two):
  chunks = list(dispatch.padded_chunks(count, size, power_of_two))
  assert len(chunks) == data.num_batches(count, size)
  real = [rows[:valid] for rows, valid in chunks]
  assert np.concatenate(real or [np.zeros(0, int)]).tolist() == list(range(count))
  for rows, valid in chunks:
    # Padding repeats the chunk's own positions: real examples, never another chunk's.
    assert set(rows.tolist()) == set(rows[:valid].tolist())
    if power_of_two:
      pow2 = len(rows) & (len(rows) - 1) == 0
      assert valid <= len(rows) <= size and (len(rows) == size or pow2 and len(rows) < 2 * valid)
    else:
      assert len(rows) == size


@jax.jit
def _row_function(images, labels):
  """Row-wise: each output row depends on its own input row only."""
  return images.sum(axis=2) * 2.0 + labels[:, None], labels * 3


@settings(deadline=None, max_examples=30)
@given(st.integers(1, 13), st.integers(1, 6), st.booleans(), st.integers(0, 3))
def test_apply_chunked_equals_the_whole_batch_at_once(count, size, power_of_two, ahead):
  rng = np.random.default_rng(count * 7 + size)
  images = rng.uniform(size=(count, 3, 2)).astype(np.float32)
  labels = rng.integers(0, 9, count).astype(np.int32)
  shapes, starts = set(), []

  def fn(chunk):
    shapes.add(chunk.inputs["image"].shape[0])
    starts.append(chunk.start)
    # Host inputs stay numpy without a sharding (callers may prepare them on the host).
    assert isinstance(chunk.inputs["image"], np.ndarray)
    return _row_function(chunk.inputs["image"], chunk.inputs["label"])

  got = dispatch.apply_chunked(
    fn, {"image": images, "label": labels}, size, power_of_two=power_of_two, ahead=ahead
  )
  want = jax.device_get(_row_function(images, labels))
  for got_leaf, want_leaf in zip(got, want):
    assert isinstance(got_leaf, np.ndarray) and got_leaf.dtype == want_leaf.dtype
    np.testing.assert_array_equal(got_leaf, want_leaf)
  assert starts == list(range(0, count, size))
  if not power_of_two:
    assert shapes == {size}  # One compiled shape, the ragged last chunk included.
  else:
    assert all(s == size or s & (s - 1) == 0 for s in shapes)


def test_map_chunks_dispatches_ahead_and_collects_in_order():
  events = []

  def fn(chunk):
    events.append(("dispatch", chunk.start))
    return jnp.asarray(chunk.inputs["x"])

  def collect(chunk, outputs):
    events.append(("collect", chunk.start))
    return chunk.fetch(outputs)

  x = np.arange(7)
  parts = dispatch.map_chunks(fn, {"x": x}, 3, collect=collect, ahead=1)
  assert events == [
    ("dispatch", 0),
    ("dispatch", 3),
    ("collect", 0),
    ("dispatch", 6),
    ("collect", 3),
    ("collect", 6),
  ]
  assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6]]  # Padding dropped.


def test_mask_marks_real_rows_and_a_device_reduction_counts_each_once():
  x = np.arange(1, 11, dtype=np.float32)
  per_chunk = dispatch.map_chunks(
    lambda chunk: jnp.sum(chunk.inputs["x"] * chunk.inputs["mask"]),
    {"x": x},
    4,
    mask=True,
    collect=dispatch.keep_on_device,
  )
  assert all(isinstance(p, jax.Array) for p in per_chunk)
  assert float(sum(per_chunk)) == x.sum()
  masks = [c.inputs["mask"] for c in dispatch.chunks({"x": x}, 4, mask=True)]
  assert [m.tolist() for m in masks][-1] == [1.0, 1.0, 0.0, 0.0]


def test_no_rows_give_empty_results_of_the_right_shape_and_dtype():
  images = np.zeros((0, 5, 5, 3), np.uint8)
  got = dispatch.apply_chunked(
    lambda chunk: (
      jnp.mean(chunk.inputs["image"], axis=(1, 2)),
      jnp.argmax(chunk.inputs["image"].reshape(-1, 75), -1),
    ),
    {"image": images},
    4,
  )
  assert got[0].shape == (0, 3) and got[0].dtype == np.float32
  assert got[1].shape == (0,) and got[1].dtype == np.int32


def test_arrays_of_different_lengths_are_refused():
  try:
    list(dispatch.chunks({"a": np.zeros(3), "b": np.zeros(4)}, 2))
  except ValueError as error:
    assert "one common length" in str(error)
  else:
    raise AssertionError("arrays of different lengths were accepted")


SHARDED = """
import sys
sys.path.insert(0, {root!r})
import jax, numpy as np
from proxy_jax.core import parallel
from proxy_jax.run import dispatch
assert jax.device_count() == 2
_, sharding = parallel.shardings(parallel.make_mesh())
x = np.arange(7 * 3, dtype=np.float32).reshape(7, 3)
seen = []
def fn(chunk):
  seen.append((chunk.inputs["x"].shape[0], len(chunk.inputs["x"].sharding.device_set)))
  return jax.jit(lambda v: v * 2.0)(chunk.inputs["x"])
for power_of_two in (False, True):
  got = dispatch.apply_chunked(fn, {{"x": x}}, 3, sharding=sharding, power_of_two=power_of_two)
  np.testing.assert_array_equal(got, x * 2.0)
# Chunks of 3 are rounded up to whole shares of the 2 devices and split over both.
assert set(seen) == {{(4, 2), (2, 2)}}, seen
print("ok")
"""


def test_sharded_chunks_round_to_whole_device_shares_and_gather_back(tmp_path):
  script = tmp_path / "sharded.py"
  script.write_text(textwrap.dedent(SHARDED.format(root=ROOT)))
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = subprocess.run(
    [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
  )
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
