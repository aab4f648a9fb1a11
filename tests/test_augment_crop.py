"""Crops of the train step: torchvision's box sampler, PIL's resize, pad crops, invariants."""

import math

from hypothesis import given, settings, strategies as st
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from proxy_jax import augment
from proxy_jax.core import errors
from proxy_jax.images import preprocess
from proxy_jax.augment import crop
from tests.conftest import make_tiny_config


def torchvision_get_params(uniforms, height, width, scale, ratio):
  """torchvision.transforms.RandomResizedCrop.get_params, line by line, its draws injected.

  torch.empty(1).uniform_(a, b) -> a + u * (b - a); torch.randint(0, n) -> floor(u * n).
  """
  area = height * width
  log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
  for attempt in range(10):
    target_area = area * (scale[0] + float(uniforms[0, attempt]) * (scale[1] - scale[0]))
    aspect_ratio = math.exp(
      log_ratio[0] + float(uniforms[1, attempt]) * (log_ratio[1] - log_ratio[0])
    )
    w = int(round(math.sqrt(target_area * aspect_ratio)))
    h = int(round(math.sqrt(target_area / aspect_ratio)))
    if 0 < w <= width and 0 < h <= height:
      i = int(math.floor(float(uniforms[2, attempt]) * (height - h + 1)))
      j = int(math.floor(float(uniforms[3, attempt]) * (width - w + 1)))
      return i, j, h, w
  # Fallback to central crop
  in_ratio = float(width) / float(height)
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w = width
    h = height
  i = (height - h) // 2
  j = (width - w) // 2
  return i, j, h, w


@pytest.mark.parametrize(
  "height,width,scale,ratio",
  [
    (37, 37, (0.08, 1.0), (3 / 4, 4 / 3)),
    (256, 256, (0.08, 1.0), (3 / 4, 4 / 3)),
    (20, 31, (0.5, 1.0), (0.5, 2.0)),
    # Boxes that rarely fit: the 10 tries often fail, exercising the centre fallback.
    (24, 24, (0.9, 1.0), (2.5, 3.0)),
    (30, 12, (0.95, 1.0), (3 / 4, 4 / 3)),
  ],
)
def test_box_sampler_matches_torchvision_get_params(height, width, scale, ratio):
  fell_back = 0
  sample = jax.jit(lambda u: crop.box_from_uniforms(u, height, width, scale, ratio))
  for seed in range(300):
    uniforms = jax.random.uniform(jax.random.key(seed), (4, crop.TRIES))
    want = torchvision_get_params(np.asarray(uniforms, np.float64), height, width, scale, ratio)
    assert tuple(int(v) for v in sample(uniforms)) == want, seed
    top, left, h, w = want
    assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
    fell_back += (top, left) == ((height - h) // 2, (width - w) // 2)
  if scale[0] >= 0.9:
    assert fell_back > 0


def _photo_like(rng, side):
  """Smooth shading, hard edges and fine noise: what real photos mix."""
  yy, xx = np.mgrid[:side, :side] / side
  base = np.stack([np.sin(5 * xx + c) * np.cos(3 * yy - c) for c in range(3)], -1)
  edges = (((xx - 0.5) ** 2 + (yy - 0.4) ** 2) < 0.08)[..., None] * 0.6
  noisy = 0.5 + 0.3 * base + edges + 0.1 * rng.normal(size=(side, side, 3))
  return np.clip(np.round(noisy * 255), 0, 255).astype(np.uint8)


# PIL resamples 8-bit images with fixed-point weights and rounds to 8 bits after each of its
# two passes, so it sits within one level (1/255) of the exact resample; ours is float32 (the
# 2e-3 covers its rounding; benchmarks/crop_vs_pil.py measured at most 1.0009 at 256 px).
PIL_TOLERANCE_LEVELS = 1.0 + 2e-3


@pytest.mark.slow
def test_resized_crop_matches_pil_crop_then_bilinear_resize():
  """Upscaling and downscaling boxes: PIL antialiases when shrinking, and so does this op."""
  rng = np.random.default_rng(0)
  fn = jax.jit(crop.resized_crop, static_argnums=2)
  worst = {"up": 0.0, "down": 0.0}
  for _ in range(60):
    side, size = int(rng.integers(12, 48)), int(rng.integers(6, 32))
    image = _photo_like(rng, side)
    h, w = int(rng.integers(1, side + 1)), int(rng.integers(1, side + 1))
    top, left = int(rng.integers(0, side - h + 1)), int(rng.integers(0, side - w + 1))
    pil = Image.fromarray(image).crop((left, top, left + w, top + h))
    want = np.asarray(pil.resize((size, size), Image.BILINEAR), np.float64)
    got = (
      np.asarray(
        fn(jnp.asarray(image, jnp.float32) / 255.0, jnp.array([top, left, h, w]), size), np.float64
      )
      * 255.0
    )
    kind = "down" if max(h, w) > size else "up"
    worst[kind] = max(worst[kind], float(np.abs(got - want).max()))
  assert worst["up"] <= PIL_TOLERANCE_LEVELS and worst["down"] <= PIL_TOLERANCE_LEVELS, worst
  assert worst["down"] > 0  # Both kinds were drawn.


@pytest.mark.slow
def test_random_resized_crop_uses_the_sampled_box():
  images = jax.random.uniform(jax.random.key(0), (5, 19, 19, 3))
  key = jax.random.key(3)
  got = crop.random_resized_crop(images, key, 8)
  for row, row_key in enumerate(jax.random.split(key, 5)):
    box = crop.box_from_uniforms(
      jax.random.uniform(row_key, (4, crop.TRIES)), 19, 19, (0.08, 1.0), (3 / 4, 4 / 3)
    )
    np.testing.assert_allclose(got[row], crop.resized_crop(images[row], box, 8), atol=1e-6)


def test_whole_image_box_at_the_same_size_is_the_identity():
  images = jax.random.uniform(jax.random.key(1), (2, 9, 9, 3))
  out = crop.random_resized_crop(images, jax.random.key(0), 9, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_allclose(out, images, atol=1e-6)


@pytest.mark.parametrize("mode,numpy_mode", [("zero", "constant"), ("reflect", "reflect")])
def test_pad_crop_is_a_window_of_the_padded_image(mode, numpy_mode):
  rng = np.random.default_rng(1)
  images = rng.random((48, 10, 10, 3)).astype(np.float32)
  out = np.asarray(crop.pad_crop(jnp.asarray(images), jax.random.key(2), 8, 3, mode))
  padded = np.pad(images, ((0, 0), (3, 3), (3, 3), (0, 0)), mode=numpy_mode)
  offsets = set()
  for row in range(len(images)):
    found = [
      (i, j)
      for i in range(16 - 8 + 1)
      for j in range(16 - 8 + 1)
      if np.array_equal(padded[row, i : i + 8, j : j + 8], out[row])
    ]
    assert found, row
    offsets.add(found[0])
  assert len(offsets) > 20  # Windows spread over the 81 possible offsets.


def test_center_crop_follows_torchvision_offsets():
  assert preprocess.center_offset(256, 224) == 16
  assert preprocess.center_offset(37, 32) == 2  # round(2.5) = 2, as Python (and torchvision).
  assert preprocess.center_offset(7, 4) == 2  # round(1.5) = 2.
  images = np.arange(2 * 7 * 7 * 3).reshape(2, 7, 7, 3)
  np.testing.assert_array_equal(preprocess.center_crop(images, 4), images[:, 2:6, 2:6])
  crops = np.zeros((2, 4, 4, 3), images.dtype)
  pasted = preprocess.paste_center(images, crops)
  np.testing.assert_array_equal(preprocess.center_crop(pasted, 4), crops)
  pasted[:, 2:6, 2:6] = images[:, 2:6, 2:6]
  np.testing.assert_array_equal(pasted, images)


@pytest.mark.slow
@settings(max_examples=12, deadline=None)
@given(
  name=st.sampled_from(crop.CROPS),
  stored=st.integers(4, 14),
  shrink=st.integers(0, 4),
  batch=st.integers(1, 3),
  seed=st.integers(0, 2**16),
)
def test_crop_invariants(name, stored, shrink, batch, seed):
  """Any crop: (B, S, S, 3) in [0, 1] from uint8 stored images; labels stay one-hot."""
  size = max(2, stored - shrink)
  config = make_tiny_config(
    **{"augment.crop": name, "augment.crop_padding": 2, "augment.rotation_degrees": 0.0}
  )
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch, stored, stored, 3)).astype(np.uint8)
  labels = rng.integers(0, 10, batch).astype(np.int32)
  cropped = crop.from_settings(config.augment, size)(
    preprocess.to_unit_range(images), jax.random.key(seed)
  )
  assert cropped.shape == (batch, size, size, 3)
  assert float(cropped.min()) >= 0.0 and float(cropped.max()) <= 1.0
  inputs, targets = augment.make_augment_fn(config.augment, 10, size)(
    images, labels, jax.random.key(seed)
  )
  assert inputs.shape == (batch, size, size, 3)
  np.testing.assert_array_equal(targets, np.eye(10, dtype=np.float32)[labels])


@pytest.mark.parametrize(
  "field,value,message",
  [
    ("crop", "random", "augment.crop='random'.*random_resized, pad, center"),
    ("crop_scale", (0.5, 0.1), r"augment.crop_scale=\(0.5, 0.1\).*0 < low <= high <= 1"),
    ("crop_scale", (0.0, 1.0), "augment.crop_scale"),
    ("crop_ratio", (1.0,), "augment.crop_ratio"),
    ("crop_padding", -1, "augment.crop_padding=-1.*integer >= 0"),
    ("crop_pad_mode", "edge", "augment.crop_pad_mode='edge'.*zero, reflect"),
  ],
)
def test_bad_crop_fields_are_refused(field, value, message):
  config = make_tiny_config()
  with config.ignore_type():
    config.augment[field] = value
  with pytest.raises(errors.ConfigError, match=message):
    augment.check(config.augment, config.image_size)
