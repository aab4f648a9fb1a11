"""Checks shared by the tests of the label-preserving augmentation families."""

import jax
import numpy as np


def assert_label_preserving(fn, images, labels, seed: int) -> None:
  """`fn(images, labels, key)`: labels kept, output in [0, 1] with the input's shape and dtype,
  the same key gives the same batch and another key another batch."""
  out, out_labels = fn(images, labels, jax.random.key(seed))
  again, _ = fn(images, labels, jax.random.key(seed))
  other, _ = fn(images, labels, jax.random.key(seed + 1))
  assert out.shape == images.shape and out.dtype == images.dtype
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
  np.testing.assert_array_equal(out_labels, labels)
  np.testing.assert_array_equal(out, again)
  assert not np.array_equal(out, other)


def np_bilinear(image, src_y, src_x):
  """Bilinear sampling with edge clamping: image (h, w, C), coordinate grids (H, W)."""
  h, w = image.shape[:2]
  y = np.clip(src_y, 0, h - 1)
  x = np.clip(src_x, 0, w - 1)
  y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
  y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
  wy, wx = (y - y0)[..., None], (x - x0)[..., None]
  top = image[y0, x0] * (1 - wx) + image[y0, x1] * wx
  bottom = image[y1, x0] * (1 - wx) + image[y1, x1] * wx
  return top * (1 - wy) + bottom * wy
