"""Batch-size finder: the CPU ceiling, a (fake) device memory limit, and out-of-memory back-off."""

import jax
import pytest

from configs import default
from proxy_jax.run import batch_finder
from proxy_jax.run import train


def _tiny_config(ceiling):
  config = default.get_config()
  config.image_size = 16
  config.num_epochs = 1
  config.batch_size_ceiling = ceiling
  # Augmentation only slows compilation here; memory growth with the batch is what matters.
  config.augment.rotation_degrees = 0.0
  return config


def test_candidates_and_ceiling():
  assert batch_finder.candidate_sizes(64) == [8, 16, 32, 64]
  assert batch_finder.candidate_sizes(48) == [8, 16, 32, 48]
  assert batch_finder.candidate_sizes(4) == [4]
  config = _tiny_config(0)
  assert batch_finder.resolve_ceiling(config, None) == batch_finder.CEILING_WITHOUT_LIMIT
  assert batch_finder.resolve_ceiling(config, 2**30) == batch_finder.CEILING_WITH_LIMIT
  assert batch_finder.resolve_ceiling(_tiny_config(24), None) == 24


@pytest.fixture(scope="module")
def factory():
  """Builds the model, state and step once for the whole file (the init is the slow part)."""
  return train.finder_step_factory(_tiny_config(16), 10)


@pytest.fixture(scope="module")
def cpu_search(factory):
  assert batch_finder.device_memory_limit(jax.devices()[0]) is None  # CPU reports no limit.
  return batch_finder.search(_tiny_config(16), 10, factory)


@pytest.mark.slow
def test_cpu_returns_the_ceiling(cpu_search):
  chosen, probes = cpu_search
  assert chosen == 16
  assert [p.batch_size for p in probes] == [8, 16] and all(p.fits for p in probes)
  # The compiled step's memory analysis grows with the batch; the step really ran.
  assert 0 < probes[0].predicted_bytes < probes[1].predicted_bytes
  assert all(p.measured_bytes and p.measured_bytes > 0 for p in probes)


@pytest.mark.slow
def test_fake_limit_backs_off(cpu_search, factory, monkeypatch):
  _, probes = cpu_search
  small, large = probes[0].predicted_bytes, probes[1].predicted_bytes
  # A limit between the two predictions (at the 0.9 fraction): 8 fits, 16 does not.
  limit = int((small + large) / 2 / 0.9)
  monkeypatch.setattr(batch_finder, "device_memory_limit", lambda device: limit)
  chosen, new_probes = batch_finder.search(_tiny_config(16), 10, factory)
  assert chosen == 8
  assert not new_probes[-1].fits and "predicted above" in new_probes[-1].reason
  assert new_probes[-1].measured_bytes is None  # Rejected on the prediction, never run.


@pytest.mark.slow
def test_out_of_memory_when_run_backs_off(factory, monkeypatch):
  real_run = batch_finder.run_step

  def run_or_oom(compiled, state, batch, key):
    if batch["image"].shape[0] > 4:
      raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 1 GiB")
    return real_run(compiled, state, batch, key)

  monkeypatch.setattr(batch_finder, "run_step", run_or_oom)
  # 8 (the start) fails when run, so the finder halves below it: 4 runs.
  chosen, probes = batch_finder.search(_tiny_config(16), 10, factory)
  assert chosen == 4
  assert [p.batch_size for p in probes] == [8, 4]
  assert "out of memory" in probes[0].reason


@pytest.mark.slow
def test_other_errors_are_not_mistaken_for_memory(factory, monkeypatch):
  def broken(compiled, state, batch, key):
    raise jax.errors.JaxRuntimeError("INVALID_ARGUMENT: shapes do not match")

  monkeypatch.setattr(batch_finder, "run_step", broken)
  with pytest.raises(jax.errors.JaxRuntimeError, match="INVALID_ARGUMENT"):
    batch_finder.search(_tiny_config(8), 10, factory)
