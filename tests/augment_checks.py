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
