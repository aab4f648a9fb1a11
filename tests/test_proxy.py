"""Proxy Attention: the transform against NumPy, the schedule, the draw, the bank in training.

The run-level tests train digits at 16 px on 300 examples (seconds each); the resume test kills
a real subprocess with SIGKILL after the first proxy step's checkpoint and resumes it.
"""

import json
import logging
import math
import os
import signal
import subprocess
import sys

from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, make_tiny_config, settings_of, train_one_epoch
from proxy_jax import data, models
from proxy_jax.core import parallel
from proxy_jax.core.errors import DamagedFileError
from proxy_jax.images import preprocess
from proxy_jax import proxy
from proxy_jax.run import checkpoints, dispatch, proxy_bank, proxy_step, resume, steps, train

MODES = ("seed", "blended", "mean", "max", "min", "zero", "one")


# ---------------------------------------------------------------- proxy_transform


def reference_transform(images, maps, threshold, weight, mode):
  """Pixel-by-pixel loops, written from the spec independently of proxy.py."""
  images = np.asarray(images, np.float64)
  out = images.copy()
  batch, height, width, channels = images.shape
  for b in range(batch):
    for y in range(height):
      for x in range(width):
        cam = float(maps[b, y, x])
        cam = cam if math.isfinite(cam) else 0.0
        hit = cam > threshold if mode == "blended" else cam >= threshold
        if not hit:
          continue
        for c in range(channels):
          pixel = images[b, y, x, c]
          plane = images[b, :, :, c]
          out[b, y, x, c] = {
            "seed": (1 - weight) * cam * pixel,
            "blended": (1 - weight * cam) * pixel,
            "mean": plane.mean(),
            "max": plane.max(),
            "min": plane.min(),
            "zero": 0.0,
            "one": 1.0,
          }[mode]
  return np.clip(out, 0.0, 1.0)


def random_inputs(seed, shape=(3, 6, 5, 3)):
  rng = np.random.default_rng(seed)
  images = rng.random(shape).astype(np.float32)
  maps = rng.random(shape[:3]).astype(np.float32)
  # Values exactly at the threshold separate >= (seed, statistics) from > (blended).
  maps[0, 0, :3] = 0.5
  return images, maps


@pytest.mark.parametrize("mode", MODES)
def test_transform_matches_numpy_reference(mode):
  images, maps = random_inputs(0)
  got = np.asarray(proxy.proxy_transform(images, maps, 0.5, 0.3, mode))
  np.testing.assert_allclose(got, reference_transform(images, maps, 0.5, 0.3, mode), atol=1e-6)


def test_transform_threshold_edge_differs_between_seed_and_blended():
  images = np.full((1, 1, 1, 3), 0.8, np.float32)
  at_threshold = np.full((1, 1, 1), 0.5, np.float32)
  assert not np.allclose(proxy.proxy_transform(images, at_threshold, 0.5, 0.2, "seed"), images)
  np.testing.assert_array_equal(
    proxy.proxy_transform(images, at_threshold, 0.5, 0.2, "blended"), images
  )


def test_transform_non_finite_cams_count_as_zero():
  images, maps = random_inputs(1)
  dirty = maps.copy()
  dirty[0, 1, 1], dirty[1, 2, 2], dirty[2, 3, 3] = np.nan, np.inf, -np.inf
  clean = np.where(np.isfinite(dirty), dirty, 0.0)
  for mode in MODES:
    # threshold 0 would pick the zeros up too, so they must be changed exactly like zeros.
    for threshold in (0.0, 0.4):
      got = np.asarray(proxy.proxy_transform(images, dirty, threshold, 0.2, mode))
      assert np.all(np.isfinite(got))
      np.testing.assert_array_equal(
        got, np.asarray(proxy.proxy_transform(images, clean, threshold, 0.2, mode))
      )


def test_transform_refuses_integer_images_and_unknown_modes():
  with pytest.raises(TypeError, match="float images"):
    proxy.proxy_transform(np.zeros((1, 2, 2, 3), np.uint8), np.zeros((1, 2, 2)), 0.5, 0.2)
  with pytest.raises(ValueError, match="unknown proxy mode"):
    proxy.proxy_transform(np.zeros((1, 2, 2, 3)), np.zeros((1, 2, 2)), 0.5, 0.2, "blur")


def test_transform_is_jittable():
  images, maps = random_inputs(2)
  jitted = jax.jit(proxy.proxy_transform, static_argnames="mode")
  for mode in MODES:
    np.testing.assert_allclose(
      jitted(images, maps, 0.6, 0.2, mode=mode),
      proxy.proxy_transform(images, maps, 0.6, 0.2, mode),
      atol=1e-7,
    )


transform_cases = st.fixed_dictionaries(
  {
    "seed": st.integers(0, 2**31 - 1),
    "mode": st.sampled_from(MODES),
    "low": st.floats(0.0, 1.0),
    "high": st.floats(0.0, 1.0),
    "weight": st.floats(0.0, 1.0),
    "dtype": st.sampled_from(["float32", "bfloat16", "float16"]),
  }
)


@settings(max_examples=40, deadline=None)
@given(transform_cases)
def test_transform_invariants(case):
  images, maps = random_inputs(case["seed"], (2, 4, 4, 3))
  images = jnp.asarray(images, case["dtype"])
  low, high = sorted((case["low"], case["high"]))
  changed = {}
  for threshold in (low, high):
    out = proxy.proxy_transform(images, maps, threshold, case["weight"], case["mode"])
    assert out.shape == images.shape and out.dtype == images.dtype
    values = np.asarray(out, np.float32)
    assert values.min() >= 0.0 and values.max() <= 1.0
    differs = np.any(values != np.asarray(images, np.float32), axis=-1)
    # Below the threshold nothing changes (blended: at it neither).
    below = maps <= threshold if case["mode"] == "blended" else maps < threshold
    assert not np.any(differs & below)
    changed[threshold] = differs
  # A higher threshold never changes a pixel that the lower one left alone.
  assert not np.any(changed[high] & ~changed[low])


# ---------------------------------------------------------------- parse_schedule


@pytest.mark.parametrize(
  "schedule, epochs, expected",
  [
    ("5,p,9,p,9,p,9,p,4", 36, (5, 14, 23, 32)),
    ("8,p,6,p,6", 20, (8, 14)),
    ("p,3", 3, (0,)),
    ("2, P ,p,1", 3, (2, 2)),
  ],
)
def test_parse_schedule_good(schedule, epochs, expected):
  parsed = proxy_step.parse_schedule(schedule, epochs)
  assert parsed.epochs == epochs and parsed.proxy_epochs == expected


@pytest.mark.parametrize(
  "schedule, epochs, message",
  [
    ("5,q,3", 8, "neither"),
    ("", 3, "malformed"),
    ("  ", 3, "malformed"),
    ("-2,p,3", 1, "neither"),
    ("0,p,3", 3, "neither"),
    ("3,,p,1", 4, "malformed"),
    ("3,p", 3, "ends with a proxy step"),
    ("2,p,2", 5, "trains 4 epochs"),
    ("3", 3, "no proxy step"),
    ("1.5,p,1.5", 3, "neither"),
  ],
)
def test_parse_schedule_malformed(schedule, epochs, message):
  with pytest.raises(ValueError, match=message):
    proxy_step.parse_schedule(schedule, epochs)


def test_parse_schedule_ignored_when_disabled():
  assert proxy_step.parse_schedule("nonsense", 7, enabled=False) == proxy_step.Schedule(7, ())


# ---------------------------------------------------------------- choosing the wrong ones


@pytest.mark.parametrize("subset", [0.0, 0.01, 0.2, 0.46, 0.5, 1.0])
def test_choose_count_and_membership(subset):
  rng = np.random.default_rng(0)
  wrong = np.sort(rng.choice(1000, 65, replace=False))
  labels = rng.integers(0, 5, 65)
  for balanced in (False, True):
    chosen = proxy_step.choose_wrong(wrong, labels, subset, jax.random.key(3), balanced)
    assert len(chosen) == math.ceil(subset * 65)
    assert len(set(chosen.tolist())) == len(chosen) and set(chosen) <= set(wrong)


def test_choose_is_seeded():
  wrong, labels = np.arange(100), np.arange(100) % 4
  for balanced in (False, True):
    draw = lambda seed: proxy_step.choose_wrong(wrong, labels, 0.3, jax.random.key(seed), balanced)
    np.testing.assert_array_equal(draw(7), draw(7))
    assert not np.array_equal(draw(7), draw(8))


def test_choose_class_balanced_counts():
  # Classes of 50, 10 and 5 wrong examples, 30 to choose: the small classes give all they
  # have and the large one takes the rest (water filling), never more than its share.
  labels = np.repeat([0, 1, 2], [50, 10, 5])
  wrong = np.arange(100, 165)
  chosen = proxy_step.choose_wrong(wrong, labels, 0.46, jax.random.key(0), class_balanced=True)
  counts = np.bincount(labels[np.searchsorted(wrong, chosen)], minlength=3)
  assert counts.tolist() == [15, 10, 5]
  chosen = proxy_step.choose_wrong(wrong, labels, 0.2, jax.random.key(0), class_balanced=True)
  counts = np.bincount(labels[np.searchsorted(wrong, chosen)], minlength=3)
  assert sorted(counts.tolist()) == [4, 4, 5]  # 13 = 4 + 4 + 4 and one extra.


# ---------------------------------------------------------------- the manipulation check


def reference_change(originals, proxies):
  """Pixel by pixel, from the definition: a pixel changed if any channel did."""
  changed, changed_sum, changed_values, total = 0, 0.0, 0, 0.0
  batch, height, width, channels = originals.shape
  for b in range(batch):
    for y in range(height):
      for x in range(width):
        diffs = [
          abs(int(originals[b, y, x, c]) - int(proxies[b, y, x, c])) for c in range(channels)
        ]
        total += sum(diffs)
        if any(diffs):
          changed += 1
          changed_sum += sum(diffs)
          changed_values += channels
  pixels = batch * height * width
  return {
    "changed_pixel_share": changed / pixels,
    "changed_mean_abs": changed_sum / changed_values if changed else None,
    "mean_abs_change": total / (pixels * channels),
  }


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(1, 3), st.floats(0.0, 1.0))
def test_change_figures_match_a_direct_count(seed, batch, share):
  rng = np.random.default_rng(seed)
  originals = rng.integers(0, 256, (batch, 4, 5, 3), np.uint8)
  proxies = originals.copy()
  hit = rng.random((batch, 4, 5)) < share
  proxies[hit] = rng.integers(0, 256, (int(hit.sum()), 3), np.uint8)
  got = proxy_step.change_figures(originals, proxies)
  want = reference_change(originals, proxies)
  assert got.keys() == want.keys()
  for key, value in want.items():
    assert got[key] == pytest.approx(value, abs=1e-9) if value is not None else got[key] is None
  assert 0.0 <= got["changed_pixel_share"] <= 1.0
  if got["changed_mean_abs"] is not None:  # Unchanged pixels add nothing to the mean.
    assert got["mean_abs_change"] == pytest.approx(
      got["changed_mean_abs"] * got["changed_pixel_share"]
    )


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 5))
def test_processes_add_their_change_counts_to_the_figures_of_all(seed, split_at):
  rng = np.random.default_rng(seed)
  originals = rng.integers(0, 256, (5, 4, 4, 3), np.uint8)
  proxies = np.where(rng.random((5, 4, 4, 1)) < 0.3, 255 - originals, originals)
  halves = [
    proxy_step.change_counts(originals[part], proxies[part])
    for part in (slice(None, split_at), slice(split_at, None))
  ]
  got = proxy_step.figures_of_counts(halves[0] + halves[1])
  assert got == proxy_step.change_figures(originals, proxies)
  assert got == pytest.approx(reference_change(originals, proxies))


def test_change_figures_of_no_images_and_mismatched_shapes():
  empty = np.zeros((0, 4, 4, 3), np.uint8)
  assert proxy_step.change_figures(empty, empty) == {
    "changed_pixel_share": None,
    "changed_mean_abs": None,
    "mean_abs_change": None,
  }
  with pytest.raises(ValueError, match="differ in shape"):
    proxy_step.change_figures(np.zeros((1, 4, 4, 3), np.uint8), np.zeros((1, 5, 5, 3), np.uint8))


# ---------------------------------------------------------------- the bank in batches


def test_bank_replaces_never_adds_in_batches():
  ids = np.arange(10, dtype=np.int32)
  images = np.repeat(ids.astype(np.uint8)[:, None, None, None], 2, axis=1)
  images = np.repeat(np.repeat(images, 2, axis=2), 3, axis=3)
  split = data.Split(images.copy(), ids % 3, ids)
  bank = proxy_bank.ProxyBank()
  proxied = [1, 4, 9]
  bank.store(
    proxied, np.full((3, 2, 2, 3), 200, np.uint8) + np.array(proxied, np.uint8)[:, None, None, None]
  )
  seen = []
  for batch in data.batches(split, 4, data.epoch_order(10, 0, 0), swap=bank.swap):
    for image, example_id, mask in zip(batch["image"], batch["id"], batch["mask"]):
      if mask:
        seen.append(int(example_id))
        expected = 200 + example_id if example_id in proxied else example_id
        assert np.all(image == expected)
  assert sorted(seen) == list(range(10))
  np.testing.assert_array_equal(split.images, images)  # The originals are never overwritten.


def test_shares_stored_by_process_lists_and_refused_when_they_disagree(tmp_path):
  images = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
  whole, shares = proxy_bank.ProxyBank(str(tmp_path / "a")), proxy_bank.ProxyBank(str(tmp_path))
  whole.store([3, 8, 9, 12], images, label="step-0000")
  shares.store_shares([np.array([12, 3, 8, 9])], images[[3, 0, 1, 2]], label="step-0000")
  for example_id in (3, 8, 9, 12):
    np.testing.assert_array_equal(shares.get(example_id), whole.get(example_id))
  with pytest.raises(ValueError, match="3 images for the 4 ids of process 0"):
    shares.store_shares([np.array([1, 2, 4, 5])], images[:3], label="step-0001")
  with pytest.raises(ValueError, match="2 id lists for 1 processes"):
    shares.store_shares([np.array([1]), np.array([2])], images[:1], label="step-0001")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
  """A digits split at 16 px and a briefly trained tiny CNN (some examples right, some wrong)."""
  config = make_tiny_config(
    **{"proxy.enabled": True, "proxy.subset": 0.5, "num_epochs": 1, "proxy.schedule": "p,1"}
  )
  dataset, state, _ = train_one_epoch(config, str(tmp_path_factory.mktemp("tiny_model")))
  split = dataset.train
  _, sharding = parallel.shardings(parallel.make_mesh())
  return config, split, state, sharding


def run_step(tiny_model, bank, key, **overrides):
  config, split, state, sharding = tiny_model
  config = config.copy_and_resolve_references()
  for field, value in overrides.items():
    config.proxy[field] = value
  before = bank.to_arrays()
  result = proxy_step.run_proxy_step(
    state,
    split,
    bank,
    config,
    jax.random.key(key),
    predict_fn=steps.make_predict_step(),
    batch_sharding=sharding,
  )
  after = bank.to_arrays()  # The step only reads the bank; storing is the caller's job.
  np.testing.assert_array_equal(before["ids"], after["ids"])
  np.testing.assert_array_equal(before["images"], after["images"])
  assert len(result.ids) == len(result.proxies) == len(result.maps) == len(result.originals)
  crops = preprocess.center_crop(result.proxies, result.originals.shape[1])
  assert result.changes == pytest.approx(reference_change(result.originals, crops))
  bank.store(result.ids, result.proxies, replace_all=config.proxy.clear_every_step)
  return bank, {"wrong": result.wrong, "chosen": len(result.ids)}


@pytest.mark.slow
def test_proxy_step_bank_matches_direct_cam_and_transform(tiny_model, monkeypatch):
  config, split, state, _ = tiny_model
  bank, record = run_step(tiny_model, proxy_bank.ProxyBank(), 0)
  assert 0 < record["wrong"] < len(split) and record["chosen"] == math.ceil(0.5 * record["wrong"])
  assert len(bank) == record["chosen"]
  # Direct recomputation from the definition: predicted-class Grad-CAM++ on the original.
  from proxy_jax import cams  # pylint: disable=g-import-not-at-top

  ids = bank.ids()
  unit = preprocess.to_unit_range(split.images[ids])
  variables = models.variables_of(state)
  logits = state.apply_fn(variables, preprocess.normalize(unit))
  assert np.all(np.argmax(logits, -1) != split.labels[ids])  # Only wrong ones are banked.
  maps = cams.compute("gradcampp", state.apply_fn, variables, preprocess.normalize(unit))
  expected = np.round(np.asarray(proxy.proxy_transform(unit, maps, 0.85, 0.2)) * 255)
  got = np.stack([bank.get(i) for i in ids]).astype(np.float32)
  assert np.max(np.abs(got - expected)) <= 1  # uint8 rounding only.
  # At subset 0.5 the step runs two-pass; the fused scan must give the same bank.
  picks = proxy_step.use_fused_scan
  assert not picks("gradcampp", 0.5) and picks("gradcampp", 0.6) and not picks("scorecam", 1.0)
  monkeypatch.setattr(
    proxy_step, "use_fused_scan", lambda method, subset: not picks(method, subset)
  )
  other, _ = run_step(tiny_model, proxy_bank.ProxyBank(), 0)
  np.testing.assert_array_equal(other.ids(), ids)
  assert np.max(np.abs(other.to_arrays()["images"].astype(int) - got)) <= 1


@pytest.mark.slow
def test_clear_every_step_true_versus_false(tiny_model):
  kept, _ = run_step(tiny_model, proxy_bank.ProxyBank(), 1, clear_every_step=False)
  first = set(kept.ids().tolist())
  kept, _ = run_step(tiny_model, kept, 2, clear_every_step=False)
  cleared, _ = run_step(tiny_model, proxy_bank.ProxyBank(), 1, clear_every_step=True)
  cleared, record = run_step(tiny_model, cleared, 2, clear_every_step=True)
  second = set(cleared.ids().tolist())
  assert len(second) == record["chosen"] and second != first
  assert set(kept.ids().tolist()) == first | second


@pytest.mark.slow
def test_noisy_cam_methods_draw_from_the_step_key(tiny_model):
  first, record = run_step(
    tiny_model, proxy_bank.ProxyBank(), 4, cam_method="smoothgrad", threshold=0.5
  )
  again, _ = run_step(tiny_model, proxy_bank.ProxyBank(), 4, cam_method="smoothgrad", threshold=0.5)
  other, _ = run_step(tiny_model, proxy_bank.ProxyBank(), 5, cam_method="smoothgrad", threshold=0.5)
  assert len(first) == record["chosen"] > 0
  np.testing.assert_array_equal(first.to_arrays()["images"], again.to_arrays()["images"])
  same_ids = np.intersect1d(first.ids(), other.ids())
  assert any(not np.array_equal(first.get(i), other.get(i)) for i in same_ids)


@pytest.mark.slow
def test_reuse_proxies_takes_the_cam_of_the_current_proxy(tiny_model):
  config, _, state, _ = tiny_model
  once, _ = run_step(tiny_model, proxy_bank.ProxyBank(), 3, subset=1.0)
  first = once.to_arrays()
  again, _ = run_step(tiny_model, _memory_bank(first), 3, subset=1.0, reuse_proxies=False)
  np.testing.assert_array_equal(again.to_arrays()["images"], first["images"])
  twice, _ = run_step(tiny_model, _memory_bank(first), 3, subset=1.0, reuse_proxies=True)
  proxy_fn = proxy.make_proxy_fn(
    state.apply_fn, "gradcampp", 0.85, 0.2, "seed", {"chunk_size": 256, "smooth_sigma": 0.0}
  )
  predictions = np.argmax(
    state.apply_fn(models.variables_of(state), data.normalize(first["images"] / 255.0)), -1
  )
  expected, _ = proxy_fn(models.variables_of(state), first["images"], predictions)
  got = twice.to_arrays()["images"].astype(int)
  assert np.max(np.abs(got - np.asarray(expected, int))) <= 1
  assert not np.array_equal(got, first["images"])


# ---------------------------------------------------------------- runs


RESUME_OVERRIDES = {
  "proxy.enabled": True,
  "proxy.schedule": "1,p,1,p,1",
  "num_epochs": 3,
  "proxy.subset": 0.5,
  "data.max_examples": 300,
  "image_size": 16,
}


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """An uninterrupted tiny proxy run whose every host batch is recorded (ids and images)."""
  workdir = str(tmp_path_factory.mktemp("straight"))
  calls = []
  original_batches = data.batches

  def recording_batches(split, batch_size, order=None, start=0, swap=None, **options):
    call = {"n": len(split), "swap": swap is not None, "ids": [], "images": {}}
    calls.append(call)
    for batch in original_batches(split, batch_size, order, start, swap, **options):
      for image, example_id, mask in zip(batch["image"], batch["id"], batch["mask"]):
        if mask:
          call["ids"].append(int(example_id))
          call["images"][int(example_id)] = image.copy()
      yield batch

  original_chunks = dispatch.chunks

  def recording_chunks(arrays, size, **options):
    """Evaluation and the proxy step's passes (no swap: they read the split as it is)."""
    call = {
      "n": len(arrays["image"]),
      "swap": False,
      "ids": [],
      "images": {},
      "evaluation": options.get("mask", False),
    }
    calls.append(call)
    for chunk in original_chunks(arrays, size, **options):
      for row in chunk.rows[: chunk.valid]:
        call["images"][int(row)] = arrays["image"][row].copy()
      yield chunk

  data.batches, dispatch.chunks = recording_batches, recording_chunks
  try:
    summary = train.train_and_evaluate(make_tiny_config(**RESUME_OVERRIDES), workdir)
  finally:
    data.batches, dispatch.chunks = original_batches, original_chunks
  return workdir, summary, calls


@pytest.mark.slow
def test_training_batches_use_proxies_and_evaluation_never_does(straight_run):
  workdir, summary, calls = straight_run
  config = make_tiny_config(**RESUME_OVERRIDES)
  _, bank = final_bank(workdir, config)
  n_train = summary["num_examples"]["train"]
  first, second = summary["proxy_steps"]
  assert len(bank["ids"]) == second["bank_size"] > first["chosen"] > 0
  for step in (first, second):  # The manipulation check: the transform did change pixels.
    assert 0.0 < step["changed_pixel_share"] <= 1.0 and step["changed_mean_abs"] > 0
    assert step["mean_abs_change"] == pytest.approx(
      step["changed_mean_abs"] * step["changed_pixel_share"]
    )
  # Epochs 2 and 3 swap, on the training split only; every id appears exactly once in each.
  swapped = [c for c in calls if c["swap"]]
  assert len(swapped) == 2 and all(c["n"] == n_train for c in swapped)
  for epoch in swapped:
    assert sorted(epoch["ids"]) == list(range(n_train))
  # The last epoch trains on exactly the final bank's proxies in place of their originals.
  originals = data.load_dataset(config, workdir).train.images
  for example_id, image in zip(bank["ids"], bank["images"]):
    np.testing.assert_array_equal(swapped[-1]["images"][int(example_id)], image)
  assert any(
    not np.array_equal(image, originals[i]) for i, image in zip(bank["ids"], bank["images"])
  )
  unbanked = sorted(set(range(n_train)) - set(bank["ids"].tolist()))
  for example_id in unbanked:
    np.testing.assert_array_equal(swapped[-1]["images"][example_id], originals[example_id])
  # Validation and test passes: no swap, and none of their images is a proxy.
  proxies = {image.tobytes() for image in bank["images"]}
  evaluations = [call for call in calls if call.get("evaluation")]
  # Validation after each epoch; test and the training split (originals) at the end.
  assert [call["n"] == n_train for call in evaluations] == [False] * 4 + [True]
  for call in evaluations[:-1]:
    assert not call["swap"]
    assert not proxies & {image.tobytes() for image in call["images"].values()}


KILLED_RUN = """
import os, signal, sys
sys.path[:0] = [{root!r}, {tests!r}]
from conftest import make_tiny_config
from proxy_jax.run import train
overrides = {overrides!r}
original = train.train_epoch

def train_epoch(setup, state, bank, epoch, report, *rest):
  if epoch == 1:  # After epoch 1, its proxy step and their checkpoint: die mid-schedule.
    setup.ckpt.wait()
    os.kill(os.getpid(), signal.SIGKILL)
  return original(setup, state, bank, epoch, report, *rest)

train.train_epoch = train_epoch
train.train_and_evaluate(make_tiny_config(**overrides), sys.argv[1])
"""


KILLED_AFTER_BANK_FILES = """
import os, signal, sys
sys.path[:0] = [{root!r}, {tests!r}]
from conftest import make_tiny_config
from proxy_jax.run import proxy_bank, train
overrides = {overrides!r}
original = proxy_bank.ProxyBank.store_shares

def store_shares(self, owned, images, replace_all=False, label="memory"):
  original(self, owned, images, replace_all, label)
  if label == "step-0001":  # The second step's files are on disk; its checkpoint is not.
    os.kill(os.getpid(), signal.SIGKILL)

proxy_bank.ProxyBank.store_shares = store_shares
train.train_and_evaluate(make_tiny_config(**overrides), sys.argv[1])
"""


KILLED_WITHIN_EPOCH = """
import os, signal, sys
sys.path[:0] = [{root!r}, {tests!r}]
from conftest import make_tiny_config
from proxy_jax.run import resume, train
overrides = {overrides!r}
original = resume.save_within_epoch

def save_within_epoch(ckpt, state, progress, bank, step_in_epoch, totals):
  saved = original(ckpt, state, progress, bank, step_in_epoch, totals)
  if progress.epoch == 1 and step_in_epoch == 4:  # Mid-way through epoch 2, after a proxy step.
    os.kill(os.getpid(), signal.SIGKILL)
  return saved

resume.save_within_epoch = save_within_epoch
train.train_and_evaluate(make_tiny_config(**overrides), sys.argv[1])
"""


def _memory_bank(arrays):
  bank = proxy_bank.ProxyBank()
  bank.store(arrays["ids"], arrays["images"])
  return bank


def final_bank(workdir, config):
  ckpt = checkpoints.RunCheckpoints(workdir, 3)
  try:
    _, meta, bank = ckpt.restore(
      ckpt.latest_epoch(),
      train.create_train_state(config, train.create_model(config, 10), jax.random.key(0), 1),
    )
  finally:
    ckpt.close()
  files = meta.get(proxy_bank.FILES_KEY, [])
  folder = os.path.join(workdir, proxy_bank.FOLDER)
  return meta, proxy_bank.ProxyBank.from_checkpoint(bank, files, folder).to_arrays()


def comparable(summary):
  timing = ("epoch_seconds", "images_per_second")
  strip = lambda row: {k: v for k, v in row.items() if k not in timing}
  return {
    "final": strip(summary["final"]),
    "test": summary["test"],
    "best": summary["best"],
    "history": [strip(r) for r in summary["history"]],
    "proxy_steps": [{k: v for k, v in s.items() if k != "seconds"} for s in summary["proxy_steps"]],
  }


@pytest.mark.slow
def test_resume_mid_schedule_equals_uninterrupted_run(tmp_path, straight_run):
  config = make_tiny_config(**RESUME_OVERRIDES)
  straight_dir, straight, _ = straight_run
  script = tmp_path / "killed_run.py"
  script.write_text(
    KILLED_RUN.format(root=ROOT, tests=os.path.join(ROOT, "tests"), overrides=RESUME_OVERRIDES)
  )
  resumed_dir = str(tmp_path / "b")
  result = subprocess.run(
    [sys.executable, str(script), resumed_dir], capture_output=True, text=True, timeout=300
  )
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  assert not os.path.exists(os.path.join(resumed_dir, "summary.json"))
  meta, bank = final_bank(resumed_dir, config)
  assert meta["epoch"] == 1 and meta["proxy_steps_done"] == 1 and len(bank["ids"]) > 0
  resumed = train.train_and_evaluate(make_tiny_config(**RESUME_OVERRIDES), resumed_dir)
  assert len(resumed["proxy_steps"]) == 2
  assert comparable(resumed) == comparable(straight)
  with (
    open(os.path.join(resumed_dir, "split.json")) as f,
    open(os.path.join(straight_dir, "split.json")) as g,
  ):
    assert json.load(f) == json.load(g)
  (_, bank_a), (_, bank_b) = final_bank(straight_dir, config), final_bank(resumed_dir, config)
  np.testing.assert_array_equal(bank_a["ids"], bank_b["ids"])
  np.testing.assert_array_equal(bank_a["images"], bank_b["images"])


@pytest.mark.slow
def test_a_kill_between_the_bank_files_and_their_checkpoint_loses_nothing(tmp_path, straight_run):
  config = make_tiny_config(**RESUME_OVERRIDES)
  straight_dir, straight, _ = straight_run
  script = tmp_path / "killed_run.py"
  script.write_text(
    KILLED_AFTER_BANK_FILES.format(
      root=ROOT, tests=os.path.join(ROOT, "tests"), overrides=RESUME_OVERRIDES
    )
  )
  workdir = str(tmp_path / "b")
  result = subprocess.run(
    [sys.executable, str(script), workdir], capture_output=True, text=True, timeout=300
  )
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  written = sorted(os.listdir(os.path.join(workdir, proxy_bank.FOLDER)))
  assert written == ["step-0000-process-0-of-1.npy", "step-0001-process-0-of-1.npy"]
  meta, _ = final_bank(workdir, config)  # The newest checkpoint predates the second step.
  assert meta["proxy_steps_done"] == 1 and meta[proxy_bank.FILES_KEY][0]["name"] == written[0]
  resumed = train.train_and_evaluate(make_tiny_config(**RESUME_OVERRIDES), workdir)
  assert comparable(resumed) == comparable(straight)
  (_, bank_a), (_, bank_b) = final_bank(straight_dir, config), final_bank(workdir, config)
  np.testing.assert_array_equal(bank_a["ids"], bank_b["ids"])
  np.testing.assert_array_equal(bank_a["images"], bank_b["images"])
  # The checkpoint refers to the bank's files (4 bytes per id and field), holding no image.
  ckpt = checkpoints.RunCheckpoints(workdir, 3)
  try:
    _, _, item = ckpt.restore(
      ckpt.latest_epoch(),
      train.create_train_state(config, train.create_model(config, 10), jax.random.key(0), 1),
    )
  finally:
    ckpt.close()
  assert sorted(item) == ["file", "ids", "row"] and item["ids"].nbytes == 4 * len(bank_b["ids"])


@pytest.mark.slow
def test_a_kill_within_an_epoch_resumes_from_its_step_and_ends_equal(
  tmp_path, straight_run, caplog
):
  overrides = {**RESUME_OVERRIDES, "checkpoint_every_steps": 2}
  straight_dir, straight, _ = straight_run  # Saved only at epoch ends: the field changes nothing.
  script = tmp_path / "killed_run.py"
  script.write_text(
    KILLED_WITHIN_EPOCH.format(root=ROOT, tests=os.path.join(ROOT, "tests"), overrides=overrides)
  )
  workdir = str(tmp_path / "b")
  result = subprocess.run(
    [sys.executable, str(script), workdir], capture_output=True, text=True, timeout=300
  )
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  steps_per_epoch = data.num_batches(straight["num_examples"]["train"], 32)  # Batch size 32.
  within = os.listdir(os.path.join(workdir, resume.WITHIN_EPOCH_FOLDER))
  assert str(steps_per_epoch + 4) in within  # The newest: step 4 of epoch 2.
  with caplog.at_level(logging.INFO, logger="absl"):
    resumed = train.train_and_evaluate(make_tiny_config(**overrides), workdir)
  assert comparable(resumed) == comparable(straight)
  assert "at epoch 1, step 4 of epoch 2" in caplog.text
  # The newest checkpoint within an epoch (step 4 of epoch 3) is older than the final one.
  os.remove(os.path.join(workdir, "summary.json"))
  caplog.clear()
  with caplog.at_level(logging.INFO, logger="absl"):
    again = train.train_and_evaluate(make_tiny_config(**overrides), workdir)
  assert "at epoch 3 (" in caplog.text and comparable(again) == comparable(straight)
  config = make_tiny_config(**RESUME_OVERRIDES)
  (_, bank_a), (_, bank_b) = final_bank(straight_dir, config), final_bank(workdir, config)
  np.testing.assert_array_equal(bank_a["images"], bank_b["images"])


def test_a_bank_file_changed_after_its_checkpoint_is_named(tmp_path):
  folder = str(tmp_path / "bank")
  bank = proxy_bank.ProxyBank(folder)
  images = np.arange(5 * 4 * 4 * 3, dtype=np.uint8).reshape(5, 4, 4, 3)
  bank.store([2, 7, 9], images[:3], label="step-0000")
  bank.store([7, 11], images[3:], label="step-0001")
  item, files = bank.checkpoint_item()
  assert [f["name"] for f in files] == [
    "step-0000-process-0-of-1.npy",
    "step-0001-process-0-of-1.npy",
  ]
  again = proxy_bank.ProxyBank.from_checkpoint(item, files, folder)
  np.testing.assert_array_equal(again.to_arrays()["ids"], [2, 7, 9, 11])
  np.testing.assert_array_equal(again.to_arrays()["images"], images[[0, 3, 2, 4]])
  path = os.path.join(folder, files[1]["name"])
  with open(path, "r+b") as f:
    f.seek(-1, os.SEEK_END)
    f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
  with pytest.raises(DamagedFileError, match="step-0001-process-0-of-1.npy"):
    proxy_bank.ProxyBank.from_checkpoint(item, files, folder)
  os.remove(path)
  with pytest.raises(DamagedFileError, match="is missing"):
    proxy_bank.ProxyBank.from_checkpoint(item, files, folder)


def test_a_checkpoint_that_held_its_images_restores_into_the_bank_folder(tmp_path):
  folder = str(tmp_path / "bank")
  images = np.full((2, 4, 4, 3), 9, np.uint8)
  bank = proxy_bank.ProxyBank.from_checkpoint(
    {"ids": np.array([3, 5]), "images": images}, [], folder
  )
  np.testing.assert_array_equal(bank.to_arrays()["images"], images)
  item, files = bank.checkpoint_item()  # The next checkpoint refers to the file written once.
  assert set(item) == {"ids", "file", "row"} and len(files) == 1


# ---------------------------------------------------------------- several processes

MULTI_PROCESS_RUN = """
import json, sys
sys.path[:0] = [{root!r}, {tests!r}]
process_id, port, workdir, out = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
import jax
from jax.experimental import multihost_utils
jax.distributed.initialize(coordinator_address=f"localhost:{{port}}", num_processes=2,
                           process_id=process_id)
import numpy as np
from conftest import make_tiny_config
from proxy_jax.config.settings import with_fields
from proxy_jax.run import dispatch, proxy_bank, proxy_rows, proxy_step, train
from proxy_reference import assert_identical, reference_step
fed, drains = [], []
original = dispatch.dispatch

def counting(*args, **kwargs):
  passed = original(*args, **kwargs)
  drains.append(passed.drained_chunks)
  return passed

dispatch.dispatch = counting
make_array = jax.make_array_from_process_local_data

def recording(sharding, local, global_shape=None):
  fed.append([list(np.shape(local)), list(global_shape)])
  return make_array(sharding, local, global_shape)

jax.make_array_from_process_local_data = recording
reads, train_epoch = [], train.train_epoch

class RecordingImages:
  def __init__(self, images):
    self.images = images

  def __getitem__(self, rows):
    reads.append(np.asarray(rows).tolist())
    return self.images[rows]

def recording_epoch(setup, state, bank, epoch, report, *rest):
  split = setup.dataset.train
  images, split.images = split.images, RecordingImages(split.images)
  try:
    return train_epoch(setup, state, bank, epoch, report, *rest)
  finally:
    split.images = images

train.train_epoch = recording_epoch
finish = train._finish

def finish_and_fuse(setup, state, bank, progress, wall_time_s):
  summary = finish(setup, state, bank, progress, wall_time_s)
  # The run's steps took the two-pass path; a fused step on the final state covers the other.
  settings = setup.settings
  result = proxy_step.run_proxy_step(state, setup.dataset.train, proxy_bank.ProxyBank(),
                                     with_fields(settings, {{"proxy.subset": 1.0}}),
                                     jax.random.key(7), predict_fn=setup.predict_fn,
                                     batch_sharding=setup.batch_sharding)
  fused = proxy_bank.ProxyBank()
  fused.store_shares(result.owned, result.proxies)
  # Each pass dispatched whole, then fetched across processes: bit-identical to reading every
  # chunk back (the step before it stayed on the device), fused, two-pass and reused proxies;
  # with a 1-byte buffer too, whose drains read sharded chunks back across processes mid-pass.
  # Each process reads and keeps only the chosen examples its devices computed; nothing the
  # size of an image crosses between processes (only predictions and integer counts).
  identical, chosen_reads, gathered = [], [], []
  stored, allgather = proxy_rows.stored_images, multihost_utils.process_allgather

  def recording_stored(split, bank, ids):
    chosen_reads.extend(np.asarray(ids).tolist())
    return stored(split, bank, ids)

  def recording_allgather(tree, **options):
    gathered.extend(np.ndim(leaf) for leaf in jax.tree.leaves(tree))
    return allgather(tree, **options)

  proxy_rows.stored_images, multihost_utils.process_allgather = recording_stored, recording_allgather
  for subset, reuse, buffer in ((1.0, False, 1024.0), (0.2, False, 1024.0), (0.9, True, 1024.0),
                                (1.0, False, 1e-6), (0.2, False, 1e-6)):
    config = with_fields(settings, {{"proxy.subset": subset, "proxy.reuse_proxies": reuse,
                                     "proxy.device_buffer_mb": buffer}})
    drains[:], chosen_reads[:], gathered[:] = [], [], []
    step = proxy_step.run_proxy_step(state, setup.dataset.train, bank, config,
                                     jax.random.key(7), predict_fn=setup.predict_fn,
                                     batch_sharding=setup.batch_sharding)
    read_ids, widest = set(chosen_reads), max(gathered)
    assert_identical(step, reference_step(state, setup.dataset.train, bank, config,
                                          jax.random.key(7), setup.predict_fn,
                                          setup.batch_sharding))
    identical.append([subset, reuse, len(step.ids), sum(drains), len(step.local_ids),
                      len(read_ids - set(step.local_ids.tolist())),
                      set(step.local_ids.tolist()) <= read_ids, widest, len(read_ids)])
  np.savez(out + ".npz", run_ids=bank.ids(), run_images=bank.to_arrays()["images"],
           fused_ids=fused.ids(), fused_images=fused.to_arrays()["images"])
  with open(out + ".json", "w") as f:
    json.dump({{"summary": summary.to_json(), "fed": fed, "devices": jax.device_count(),
               "identical": identical, "reads": reads,
               "train_size": len(setup.dataset.train)}}, f)
  return summary

train._finish = finish_and_fuse
train.train_and_evaluate(make_tiny_config(**{overrides!r}), workdir)
"""


def _free_port():
  import socket  # pylint: disable=g-import-not-at-top

  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _fused_step_on_final_state(workdir, config):
  """The bank of a fused proxy step (subset 1.0) on a finished run's final state."""
  config = config.copy_and_resolve_references()
  config.proxy.subset = 1.0
  ckpt = checkpoints.RunCheckpoints(workdir, 3)
  try:
    state, _, _ = ckpt.restore(
      ckpt.latest_epoch(),
      train.create_train_state(config, train.create_model(config, 10), jax.random.key(0), 1),
    )
  finally:
    ckpt.close()
  split = data.load_dataset(config, workdir).train
  result = proxy_step.run_proxy_step(
    state,
    split,
    proxy_bank.ProxyBank(),
    config,
    jax.random.key(7),
    predict_fn=steps.make_predict_step(),
  )
  bank = proxy_bank.ProxyBank()
  bank.store(result.ids, result.proxies)
  return bank


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path, straight_run):
  """A real two-process run (localhost coordinator, CPU collectives) against one process."""
  script = tmp_path / "multi_process_run.py"
  script.write_text(
    MULTI_PROCESS_RUN.format(
      root=ROOT, tests=os.path.join(ROOT, "tests"), overrides=RESUME_OVERRIDES
    )
  )
  port, outs = str(_free_port()), [str(tmp_path / f"process{i}") for i in range(2)]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  workers = [
    subprocess.Popen(
      [sys.executable, str(script), str(i), port, str(tmp_path / "two"), outs[i]],
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
  config = make_tiny_config(**RESUME_OVERRIDES)
  straight_dir, reference, _ = straight_run  # The same run in this single-device process.
  _, run_bank = final_bank(straight_dir, config)
  fused = _fused_step_on_final_state(straight_dir, config)
  for worker in workers:
    assert worker.wait(timeout=420) == 0, worker.stderr.read()[-3000:]
  run_settings = settings_of(config)
  local_counts = []
  for process, out in enumerate(outs):
    with open(out + ".json") as f:
      result = json.load(f)
    banks = np.load(out + ".npz")
    assert result["devices"] == 2
    # Training read, in each process, only its half of each global batch's rows.
    size, expected = result["train_size"], []
    for epoch in range(run_settings.num_epochs):
      order = data.epoch_order(size, run_settings.seed, epoch)
      for rows, _ in dispatch.padded_chunks(size, run_settings.batch_size):
        expected.append(np.array_split(order[rows], 2)[process].tolist())
    assert result["reads"] == expected
    # The proxy step equals the chunk-by-chunk reference bit for bit in both processes.
    assert [row[:2] for row in result["identical"]] == [
      [1.0, False],
      [0.2, False],
      [0.9, True],
      [1.0, False],
      [0.2, False],
    ]
    assert all(row[2] > 0 for row in result["identical"])
    assert [row[3] > 0 for row in result["identical"]] == [False] * 3 + [True] * 2  # Drained.
    # Each process read the chosen examples it holds, besides them at most the padding of a
    # CAM pass's last chunk (repeats of the other's rows), never all of them; each holds some.
    for _, _, chosen, _, held, _, read_all_held, widest, read in result["identical"]:
      assert read_all_held and 0 < held < chosen and read < chosen and widest <= 1
    assert [row[5] for row in result["identical"]][::3] == [0, 0]  # Fused: exactly its own.
    held_here = [row[4] for row in result["identical"]]
    local_counts.append(held_here)
    # Each process was given only its half of every global batch (and of every CAM chunk).
    assert result["fed"] and all(
      local[0] * 2 == total[0] and local[1:] == total[1:] for local, total in result["fed"]
    )
    got, want = comparable(result["summary"]), comparable(reference)
    assert got["proxy_steps"] == want["proxy_steps"]
    for got_row, want_row in zip(got["history"] + [got["test"]], want["history"] + [want["test"]]):
      assert got_row.keys() == want_row.keys()
      for key in got_row:
        np.testing.assert_allclose(got_row[key], want_row[key], rtol=1e-4, atol=1e-6)
    for name, (ids, images) in {
      "run": (run_bank["ids"], run_bank["images"]),
      "fused": (fused.ids(), fused.to_arrays()["images"]),
    }.items():
      np.testing.assert_array_equal(banks[f"{name}_ids"], ids)
      assert len(ids) and np.max(np.abs(banks[f"{name}_images"].astype(int) - images)) <= 1
  totals = [row[2] for row in result["identical"]]
  assert [a + b for a, b in zip(*local_counts)] == totals  # The two lists partition the ids.
  first, second = (np.load(out + ".npz") for out in outs)
  for name in first.files:  # The two processes end with identical banks.
    np.testing.assert_array_equal(first[name], second[name])
