"""A proxy step that never waits on the host: its passes are dispatched without a read back.

`proxy_step.run_proxy_step` dispatches every pass with `dispatch.dispatch` and reads back afterwards;
its results must equal bit for bit the step that read every chunk back (tests/proxy_reference.py),
also when a small `proxy.device_buffer_mb` makes `dispatch` drain its oldest chunks mid-pass.

On XLA:CPU, `jax.transfer_guard_device_to_host` watches nothing (the arrays are host memory)
and NumPy reads a single-device array through the buffer protocol, which no Python patch sees.
So the guard test runs in a subprocess with two CPU devices, where the step's arrays are sharded
and every read back (`np.asarray`, `jax.device_get`, `int()`, `block_until_ready`) goes through
`ArrayImpl._value`, `__array__` or `block_until_ready`, which the test makes raise.
"""

import os
import subprocess
import sys
import textwrap
import weakref

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, make_tiny_config, train_one_epoch
from proxy_jax.core import parallel
from proxy_jax.run import dispatch, proxy_bank, proxy_step, steps
from tests.proxy_reference import assert_identical, reference_step


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  """A digits split at 16 px and a tiny CNN trained one epoch (some examples right, some wrong)."""
  config = make_tiny_config(**{"proxy.enabled": True, "num_epochs": 1, "proxy.schedule": "p,1"})
  dataset, state, _ = train_one_epoch(config, str(tmp_path_factory.mktemp("device")))
  return config, dataset.train, state, parallel.shardings(parallel.make_mesh())[1]


# Fused at subset > 0.5 (with the label as CAM target too), two-pass at or below it and for
# noisy methods; reuse_proxies recomputes the banked examples' CAMs on their proxies.
CASES = {
  "fused": {"subset": 1.0},
  "fused_label_target": {"subset": 0.8, "cam_target": "label", "mode": "blended"},
  "fused_reuse_proxies": {"subset": 0.9, "reuse_proxies": True},
  "two_pass": {"subset": 0.3},
  "two_pass_noisy": {"subset": 0.2, "cam_method": "smoothgrad", "threshold": 0.5},
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(CASES))
def test_proxy_step_is_bit_identical_to_reading_every_chunk_back(tiny_model, case):
  config, split, state, sharding = tiny_model
  config = config.copy_and_resolve_references()
  for field, value in CASES[case].items():
    config.proxy[field] = value
  bank = proxy_bank.ProxyBank()
  if config.proxy.reuse_proxies:  # Every third example banked: some chosen ones recompute.
    ids = np.arange(0, len(split), 3)
    bank.store(ids, 255 - split.images[ids])
  predict_fn, key = steps.make_predict_step(), jax.random.key(11)
  expected = reference_step(state, split, bank, config, key, predict_fn, sharding)
  result = proxy_step.run_proxy_step(
    state, split, bank, config, key, predict_fn=predict_fn, batch_sharding=sharding
  )
  assert 0 < len(result.ids) <= result.wrong < len(split)
  assert_identical(result, expected)
  if config.proxy.reuse_proxies:
    assert 0 < bank.holds(result.ids).sum() < len(result.ids)


def test_dispatch_fetches_the_rows_asked_for_like_apply_chunked():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(11, 2, 3)).astype(np.float32)
  fn = lambda chunk: (jnp.sum(chunk.inputs["x"], -1), (chunk.inputs["x"] * 2).astype(jnp.uint8))
  want = dispatch.apply_chunked(fn, {"x": x}, 4)
  passed = dispatch.dispatch(fn, {"x": x}, 4)
  assert len(passed.parts) == 3 and all(isinstance(p[0], jax.Array) for p in passed.parts)
  for positions in (None, [10, 0, 4, 4], [], np.arange(11)[::-1]):
    got = passed.fetch(positions)
    index = np.arange(11) if positions is None else np.asarray(positions, int)
    for got_leaf, want_leaf in zip(got, want):
      assert got_leaf.dtype == want_leaf.dtype
      np.testing.assert_array_equal(got_leaf, want_leaf[index])
  np.testing.assert_array_equal(passed.select(lambda out: out[1]).fetch([3]), want[1][[3]])
  empty = dispatch.dispatch(fn, {"x": x[:0]}, 4).fetch()
  assert [(e.shape, e.dtype) for e in empty] == [((0, 2), np.float32), ((0, 2, 3), np.uint8)]


@pytest.mark.parametrize("sharded", [False, True])
def test_fetch_local_reads_the_rows_this_process_owns(sharded):
  """One process owns every row: its local reads equal the global ones, drained rows too."""
  x = np.random.default_rng(1).uniform(size=(13, 3)).astype(np.float32)
  fn = lambda chunk: (chunk.inputs["x"] * 2, jnp.sum(chunk.inputs["x"], -1))
  want = dispatch.apply_chunked(fn, {"x": x}, 4)
  sharding = parallel.shardings(parallel.make_mesh())[1] if sharded else None

  def drain(chunk, outputs):
    positions, rows = chunk.fetch_local(outputs)
    return jax.tree.map(lambda leaf: dispatch.Drained(positions, leaf), rows)

  for buffer in (None, 1):
    passed = dispatch.dispatch(fn, {"x": x}, 4, sharding=sharding, buffer_bytes=buffer, drain=drain)
    assert passed.drained_chunks == (0 if buffer is None else 3)
    for positions in ([12, 0, 5, 5], [], np.arange(13)[::-1]):
      mine, got = passed.fetch_local(positions)
      np.testing.assert_array_equal(mine, positions)
      assert passed.owners(positions).tolist() == [0] * len(positions)
      for got_leaf, want_leaf in zip(got, want):
        np.testing.assert_array_equal(got_leaf, want_leaf[np.asarray(positions, int)])


def _watched_dispatch(monkeypatch) -> list:
  """Records each pass `dispatch.dispatch` runs: (OnDevice, live result bytes at each chunk).

  The live bytes are measured apart from OnDevice's bookkeeping, by weak references to every
  result array: a drained chunk whose results stayed referenced still counts.
  """
  original, passes = dispatch.dispatch, []

  def watched(fn, *args, **kwargs):
    refs, live = [], []

    def counted(chunk):
      out = fn(chunk)
      held = sum(size for ref, size in refs if ref() is not None)
      refs.extend((weakref.ref(leaf), leaf.nbytes) for leaf in jax.tree.leaves(out))
      live.append(held + sum(leaf.nbytes for leaf in jax.tree.leaves(out)))
      return out

    passes.append((original(counted, *args, **kwargs), live))
    return passes[-1][0]

  monkeypatch.setattr(dispatch, "dispatch", watched)
  return passes


def test_dispatch_with_a_buffer_drains_the_oldest_half_and_fetches_the_same_rows(monkeypatch):
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(21, 2, 3)).astype(np.float32)
  fn = lambda chunk: (jnp.sum(chunk.inputs["x"], -1), (chunk.inputs["x"] * 9).astype(jnp.uint8))
  want = dispatch.apply_chunked(fn, {"x": x}, 2)
  chunk_bytes = 2 * (2 * 4 + 2 * 3)
  passes = _watched_dispatch(monkeypatch)
  for buffer in (3 * chunk_bytes + 1, 1):
    passed = dispatch.dispatch(fn, {"x": x}, 2, buffer_bytes=buffer)
    # 11 chunks, 3 fit: chunk 4 drains 2 of the 3 before it, and so on; 1 byte keeps 1 chunk.
    assert passed.drained_chunks == (8 if buffer > 1 else 10)
    assert len(passed.parts) == 11 - passed.drained_chunks
    live = passes[-1][1]
    assert max(live) == passed.peak_bytes <= max(buffer, chunk_bytes) + chunk_bytes
    for positions in (None, [20, 0, 7, 7], [], np.arange(21)[::-1]):
      index = np.arange(21) if positions is None else np.asarray(positions, int)
      for got, expected in zip(passed.fetch(positions), want):
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected[index])
    np.testing.assert_array_equal(passed.select(lambda out: out[1]).fetch([0]), want[1][[0]])
  unbounded = dispatch.dispatch(fn, {"x": x}, 2)
  assert unbounded.drained_chunks == 0 and unbounded.peak_bytes == 11 * chunk_bytes

  def odd_rows_only(chunk, outputs):  # A drain may keep only the rows a caller can ask for.
    positions = chunk.rows[: chunk.valid]
    return jax.tree.map(
      lambda v: dispatch.Drained(positions[positions % 2 == 1], v[positions % 2 == 1]),
      chunk.fetch(outputs),
    )

  partial = dispatch.dispatch(fn, {"x": x}, 2, buffer_bytes=1, drain=odd_rows_only)
  np.testing.assert_array_equal(partial.fetch([1, 3, 20])[0], want[0][[1, 3, 20]])
  with pytest.raises(KeyError, match=r"\[2\]"):
    partial.fetch([1, 2])


# Each case's buffer forces several drains (chunks of 16 rows, CAM chunks of 4, a buffer of a
# few chunks or of 1 byte): (fields, the CASES entry they change, passes that drain). 50 kB
# holds 3 fused chunks; 10 kB holds 2 CAM chunks but every prediction (64 bytes a chunk).
SMALL_BUFFERS = {
  "fused": ({"device_buffer_mb": 0.05}, "fused", 1),
  "fused_reuse_proxies": ({"device_buffer_mb": 1e-6}, "fused_reuse_proxies", 2),
  "two_pass": ({"subset": 0.5, "device_buffer_mb": 0.01}, "two_pass", 1),
  "two_pass_noisy": ({"device_buffer_mb": 1e-6}, "two_pass_noisy", 2),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(SMALL_BUFFERS))
def test_a_small_device_buffer_drains_and_stays_bit_identical(tiny_model, monkeypatch, case):
  config, split, state, sharding = tiny_model
  config = config.copy_and_resolve_references()
  config.eval_batch_size, config.cams.chunk_size = 16, 4
  fields, base, draining = SMALL_BUFFERS[case]
  for field, value in {**CASES[base], **fields}.items():
    config.proxy[field] = value
  bank = proxy_bank.ProxyBank()
  if config.proxy.reuse_proxies:
    bank.store(np.arange(0, len(split), 3), 255 - split.images[::3])
  predict_fn, key = steps.make_predict_step(), jax.random.key(11)
  expected = reference_step(state, split, bank, config, key, predict_fn, sharding)
  passes = _watched_dispatch(monkeypatch)
  result = proxy_step.run_proxy_step(
    state, split, bank, config, key, predict_fn=predict_fn, batch_sharding=sharding
  )
  assert_identical(result, expected)
  buffer = proxy_step.buffer_bytes(config)
  assert sum(passed.drained_chunks >= 2 for passed, _ in passes) == draining
  for passed, live in passes:
    chunk = live[0]  # The first chunk is the largest (power-of-two passes shrink the last).
    assert max(live) == passed.peak_bytes <= max(buffer, chunk) + chunk


NO_READS = """
import contextlib, sys
sys.path[:0] = [{root!r}, {tests!r}]
import jax, jax.numpy as jnp, numpy as np
from conftest import make_tiny_config
from proxy_jax import data, models
from proxy_jax.core import parallel
from proxy_jax.run import dispatch, proxy_bank, proxy_step, steps, train
from proxy_reference import assert_identical, reference_step
assert jax.device_count() == 2
ARRAY = type(jnp.zeros(1))

@contextlib.contextmanager
def no_reads():
  def read(self, *args, **kwargs):
    raise AssertionError("a device-to-host read while the pass was dispatched")
  saved = {{name: ARRAY.__dict__[name] for name in ("_value", "__array__", "block_until_ready")}}
  ARRAY._value, ARRAY.__array__, ARRAY.block_until_ready = property(read), read, read
  try:
    with jax.transfer_guard_device_to_host("disallow_explicit"):
      yield
  finally:
    for name, value in saved.items():
      setattr(ARRAY, name, value)

config = make_tiny_config(**{{"proxy.enabled": True}})
split = data.load_dataset(config, sys.argv[1]).train
state = train.create_train_state(config, train.create_model(config, 10), jax.random.key(0), 1)
_, sharding = parallel.shardings(parallel.make_mesh())
predict_fn, key = steps.make_predict_step(), jax.random.key(3)
# The check can fail: reading each chunk back, as the step did before, is caught.
with no_reads():
  try:
    dispatch.apply_chunked(lambda chunk: predict_fn(state.apply_fn, models.variables_of(state),
                                                   chunk.inputs["image"]),
                          {{"image": split.images}}, 64, sharding=sharding)
  except AssertionError:
    pass
  else:
    raise SystemExit("a read back went unnoticed")
original, map_chunks, passes = dispatch.dispatch, dispatch.map_chunks, []

def guarded(*args, **kwargs):
  with no_reads():
    passes.append(original(*args, **kwargs))
  return passes[-1]

def refused(*args, **kwargs):
  raise AssertionError("the proxy step used a pass that reads back chunk by chunk")

bank = proxy_bank.ProxyBank()
bank.store(np.arange(0, len(split), 3), split.images[::3])
for subset, reuse, count in ((1.0, False, 1), (0.2, False, 2), (0.9, True, 2)):
  config.proxy.subset, config.proxy.reuse_proxies = subset, reuse
  expected = reference_step(state, split, bank, config, key, predict_fn, sharding)
  dispatch.dispatch, dispatch.map_chunks, passes[:] = guarded, refused, []
  try:
    result = proxy_step.run_proxy_step(state, split, bank, config, key, predict_fn=predict_fn,
                                       batch_sharding=sharding)
  finally:
    dispatch.dispatch, dispatch.map_chunks = original, map_chunks
  assert len(passes) == count and all(p.sharded for p in passes), (subset, len(passes))
  assert not any(p.drained_chunks for p in passes)  # The default buffer holds these passes.
  assert len(result.ids) > 0
  assert_identical(result, expected)
# A 1-byte buffer drains every chunk but the last, reading sharded results back as it goes.
config.proxy.device_buffer_mb, config.eval_batch_size, passes[:] = 1e-6, 32, []
dispatch.dispatch = lambda *args, **kwargs: passes.append(original(*args, **kwargs)) or passes[-1]
try:
  result = proxy_step.run_proxy_step(state, split, bank, config, key, predict_fn=predict_fn,
                                     batch_sharding=sharding)
finally:
  dispatch.dispatch = original
assert passes[0].sharded and passes[0].drained_chunks >= 2, passes[0].drained_chunks
assert_identical(result, reference_step(state, split, bank, config, key, predict_fn, sharding))
print("ok")
"""


@pytest.mark.slow
def test_the_step_dispatches_its_passes_without_reading_back(tmp_path):
  script = tmp_path / "no_reads.py"
  script.write_text(textwrap.dedent(NO_READS.format(root=ROOT, tests=os.path.join(ROOT, "tests"))))
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  result = subprocess.run(
    [sys.executable, str(script), str(tmp_path)],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]
