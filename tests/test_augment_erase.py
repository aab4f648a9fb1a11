"""Erasing augmentations against NumPy rebuilds of their masks, invariants, config checks."""

import functools

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from configs import default
from tests.augment_checks import assert_label_preserving
from proxy_jax.images import preprocess
from proxy_jax.augment import erase


def _images(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, jnp.float32)


def _labels(batch, classes=5):
  return jax.nn.one_hot(jnp.arange(batch) % classes, classes)


def _numpy_fill(images, fill_key, fill):
  images = np.asarray(images)
  if fill == "dataset_mean":  # A hole cut after normalisation: 0 there is the mean colour.
    return np.broadcast_to(np.array([0.485, 0.456, 0.406], np.float32), images.shape)
  if fill == "zero":
    return np.zeros_like(images)
  if fill == "mean":
    return np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape)
  return np.asarray(jax.random.uniform(fill_key, images.shape, jnp.float32))


def _numpy_erase(images, fill_key, fill, masks):
  """Reference: copy, then overwrite the masked pixels of each image one by one."""
  expected = np.array(images)
  fills = _numpy_fill(images, fill_key, fill)
  for b, mask in enumerate(masks):
    expected[b][mask] = fills[b][mask]
  return expected


def _draw(draw_fn, key, shape, **params):
  draw_key, fill_key = jax.random.split(key)
  return jax.tree.map(np.asarray, draw_fn(draw_key, shape, **params)), fill_key


@pytest.mark.parametrize(
  "shape,fill",
  [
    ((16, 8, 8, 3), "zero"),
    ((3, 16, 12, 3), "mean"),
    ((4, 8, 8, 3), "dataset_mean"),
    ((1, 8, 8, 1), "noise"),
  ],
)
def test_cutout_matches_numpy_box(shape, fill):
  images, key = _images(shape), jax.random.key(3)
  out, labels = erase.cutout(images, _labels(shape[0]), key, size=0.5, prob=0.8, fill=fill)
  draw, fill_key = _draw(erase._draw_cutout, key, shape, size=0.5, prob=0.8)
  _, height, width, _ = shape
  masks, clipped = [], False
  for b in range(shape[0]):
    mask = np.zeros((height, width), bool)
    box_h, box_w = round(0.5 * height), round(0.5 * width)
    assert draw["box_height"][b] == box_h and draw["box_width"][b] == box_w
    top = draw["centre_y"][b] - box_h // 2
    left = draw["centre_x"][b] - box_w // 2
    clipped |= top < 0 or left < 0 or top + box_h > height or left + box_w > width
    if draw["apply"][b]:
      mask[max(top, 0) : max(top + box_h, 0), max(left, 0) : max(left + box_w, 0)] = True
    masks.append(mask)
  np.testing.assert_allclose(out, _numpy_erase(images, fill_key, fill, masks), atol=1e-6)
  np.testing.assert_array_equal(labels, _labels(shape[0]))
  if shape[0] == 16:  # with 16 centres on an 8x8 image some box hangs over the border
    assert clipped


def test_random_erasing_matches_numpy_reference():
  shape, key, area, aspect = (12, 16, 16, 3), jax.random.key(7), (0.02, 0.4), (0.3, 1 / 0.3)
  images = _images(shape)
  out, _ = erase.random_erasing(
    images, _labels(12), key, prob=0.7, area=area, aspect=aspect, fill="noise"
  )
  draw, fill_key = _draw(erase._draw_random_erasing, key, shape, prob=0.7, area=area, aspect=aspect)
  # Replay Zhong et al.'s retry loop in NumPy from the same uniform draws.
  keys = jax.random.split(jax.random.split(key)[0], 5)
  n = erase.RANDOM_ERASING_ATTEMPTS
  targets = np.asarray(jax.random.uniform(keys[1], (12, n), minval=area[0], maxval=area[1]))
  ratios = np.asarray(jax.random.uniform(keys[2], (12, n), minval=aspect[0], maxval=aspect[1]))
  coins = np.asarray(jax.random.bernoulli(keys[0], 0.7, (12,)))
  masks = []
  for b in range(12):
    mask = np.zeros((16, 16), bool)
    for attempt in range(n):
      target = targets[b, attempt] * 256
      h = int(np.round(np.sqrt(target * ratios[b, attempt])))
      w = int(np.round(np.sqrt(target / ratios[b, attempt])))
      if 0 < h < 16 and 0 < w < 16:
        assert (draw["box_height"][b], draw["box_width"][b]) == (h, w)
        top, left = draw["top"][b], draw["left"][b]
        assert 0 <= top <= 16 - h and 0 <= left <= 16 - w
        if coins[b]:
          mask[top : top + h, left : left + w] = True
        break
    masks.append(mask)
  assert sum(m.any() for m in masks) >= 4
  np.testing.assert_allclose(out, _numpy_erase(images, fill_key, "noise", masks), atol=1e-6)


def test_random_erasing_skips_images_when_no_box_fits():
  # An area share of 1 never fits strictly inside (h < H and w < W): nothing is erased.
  images = _images((2, 8, 8, 3))
  out, _ = erase.random_erasing(
    images, _labels(2), jax.random.key(0), prob=1.0, area=(1.0, 1.0), aspect=(1.0, 1.0), fill="zero"
  )
  np.testing.assert_array_equal(out, images)


def test_gridmask_matches_numpy_grid():
  shape, key = (6, 16, 16, 3), jax.random.key(11)
  images = _images(shape)
  out, _ = erase.gridmask(images, _labels(6), key, prob=1.0, ratio=0.6, fill="mean")
  draw, fill_key = _draw(erase._draw_gridmask, key, shape, prob=1.0, ratio=0.6)
  rows, cols = np.arange(16)[:, None], np.arange(16)[None, :]
  masks = []
  for b in range(6):
    unit, side = draw["unit"][b], draw["erased"][b]
    assert 7 <= unit <= 16 and side == int(np.ceil(unit * 0.6))
    assert 0 <= draw["offset_y"][b] < unit and 0 <= draw["offset_x"][b] < unit
    masks.append(
      ((rows - draw["offset_y"][b]) % unit < side) & ((cols - draw["offset_x"][b]) % unit < side)
    )
  np.testing.assert_allclose(out, _numpy_erase(images, fill_key, "mean", masks), atol=1e-6)


@pytest.mark.parametrize("shape,grid", [((5, 12, 12, 3), 4), ((1, 10, 7, 1), 3)])
def test_hide_and_seek_matches_numpy_cells(shape, grid):
  images, key = _images(shape), jax.random.key(5)
  out, _ = erase.hide_and_seek(
    images, _labels(shape[0]), key, prob=1.0, grid=grid, hide_prob=0.5, fill="zero"
  )
  draw, fill_key = _draw(erase._draw_hide_and_seek, key, shape, prob=1.0, grid=grid, hide_prob=0.5)
  _, height, width, _ = shape
  masks = []
  for b in range(shape[0]):
    mask = np.zeros((height, width), bool)
    for i in range(grid):
      for j in range(grid):
        if draw["hidden"][b, i, j]:  # cell rows [ceil(i H / g), ceil((i+1) H / g))
          mask[
            -(-i * height // grid) : -(-(i + 1) * height // grid),
            -(-j * width // grid) : -(-(j + 1) * width // grid),
          ] = True
    masks.append(mask)
  np.testing.assert_allclose(out, _numpy_erase(images, fill_key, "zero", masks), atol=1e-6)


@pytest.mark.parametrize("name", sorted(erase.ERASERS))
def test_probability_zero_and_one(name):
  images = _images((4, 16, 16, 3))
  never, _ = erase.ERASERS[name](images, _labels(4), jax.random.key(1), prob=0.0)
  np.testing.assert_array_equal(never, images)
  always, _ = erase.ERASERS[name](images, _labels(4), jax.random.key(1), prob=1.0, fill="zero")
  # prob 1: every image loses pixels (Hide-and-Seek may hide no cell, rarely; not with this key).
  assert np.all(np.any(np.asarray(always) != np.asarray(images), axis=(1, 2, 3)))


_INVARIANT_SHAPE = (4, 16, 16, 3)


@settings(max_examples=20, deadline=None)
@given(
  name=st.sampled_from(sorted(erase.ERASERS)),
  fill=st.sampled_from(erase.FILLS),
  seed=st.integers(0, 2**30),
  image_seed=st.integers(0, 3),
)
def test_invariants(name, fill, seed, image_seed):
  images, labels = _images(_INVARIANT_SHAPE, image_seed), _labels(4)
  # Eager: after the first example every primitive is compiled, so examples cost milliseconds.
  fn = functools.partial(erase.ERASERS[name], prob=1.0, fill=fill)
  assert_label_preserving(fn, images, labels, seed)


def test_paper_fill_is_each_references_and_the_default():
  """Cutout's reference cuts the normalised tensor: its hole normalises to exactly 0."""
  assert default.get_config().augment.erase_fill == "paper"
  images = _images((4, 8, 8, 3), 3)
  for name, expected in (
    ("cutout", "dataset_mean"),
    ("gridmask", "dataset_mean"),
    ("hide_and_seek", "dataset_mean"),
    ("random_erasing", "noise"),
  ):
    assert erase.resolve_fill(name, "paper") == expected
  fn = erase.from_settings(_config(erase="cutout", erase_prob=1.0, erase_size=0.5))
  out, _ = fn(images, _labels(4), jax.random.key(0))
  erased = np.asarray(out) != images
  normalised = np.asarray(preprocess.normalize(out))
  assert erased.any() and np.allclose(normalised[erased.any(-1)], 0.0, atol=1e-6)
  assert erase.resolve_fill("cutout", "zero") == "zero"  # The earlier black fill, by name.


def _config(**fields):
  config = default.get_config().augment
  for name, value in fields.items():
    config[name] = value
  return config


@pytest.mark.parametrize(
  "field,value",
  [
    ("erase", "cutmix"),
    ("erase_fill", "gray"),
    ("erase_prob", 1.5),
    ("erase_prob", float("nan")),
    ("erase_size", 0.0),
    ("erase_area", (0.4, 0.1)),
    ("erase_area", (0.1,)),
    ("erase_aspect", (0.0, 2.0)),
    ("erase_aspect", (1.0, float("inf"))),
    ("gridmask_ratio", 1.0),
    ("hide_grid", 0),
    ("hide_grid", 2.5),
    ("hide_prob", -0.1),
  ],
)
def test_check_config_names_the_field(field, value):
  # Not type-safe: a sweep or a JSON file can hand any type to the checks.
  config = ml_collections.ConfigDict(_config().to_dict(), type_safe=False)
  config[field] = value
  with pytest.raises(ValueError, match=f"config.augment.{field}="):
    erase.check(config)


def test_from_config():
  assert erase.from_settings(_config()) is None  # the defaults switch erasing off
  images, labels, key = _images((2, 8, 8, 3)), _labels(2), jax.random.key(4)
  fn = jax.jit(
    erase.from_settings(_config(erase="random_erasing", erase_prob=1.0, erase_fill="mean"))
  )
  expected = erase.random_erasing(
    images, labels, key, prob=1.0, area=(0.02, 0.4), aspect=(0.3, 3.3), fill="mean"
  )
  np.testing.assert_array_equal(fn(images, labels, key)[0], expected[0])
