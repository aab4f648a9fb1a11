"""The shared geometry: one bilinear warp with named edges, one box mask, flip and rotation."""

import jax
import numpy as np
import pytest
from scipy import ndimage

from proxy_jax.augment import erase, geometry, ops


def _images(shape=(3, 12, 12, 3), seed=0):
  return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def _scipy_rotate(image, radians, mode):
  """Direct transcription: inverse-map every output pixel about the centre, order-1 spline."""
  height, width, _ = image.shape
  cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
  yy, xx = np.meshgrid(
    np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij"
  )
  cos, sin = np.cos(radians), np.sin(radians)
  src_y = cos * (yy - cy) + sin * (xx - cx) + cy
  src_x = -sin * (yy - cy) + cos * (xx - cx) + cx
  return np.stack(
    [
      ndimage.map_coordinates(image[..., c], [src_y, src_x], order=1, mode=mode, cval=0.0)
      for c in range(image.shape[-1])
    ],
    -1,
  )


@pytest.mark.parametrize("degrees", [-17.0, 9.5, 33.0])
def test_extend_rotation_is_scipy_nearest(degrees):
  """ "extend": points outside read the nearest edge pixel (the train-time rotation)."""
  image = _images((10, 13, 3), seed=1)
  ours = geometry.rotate(image, np.deg2rad(degrees), geometry.EXTEND)
  np.testing.assert_allclose(ours, _scipy_rotate(image, np.deg2rad(degrees), "nearest"), atol=2e-5)


@pytest.mark.parametrize("degrees", [-17.0, 23.0])
def test_black_rotation_is_scipy_constant_inside_and_black_outside(degrees):
  image = _images((11, 11, 3), seed=2)
  ours = np.asarray(geometry.rotate(image, np.deg2rad(degrees), geometry.BLACK))
  reference = _scipy_rotate(image, np.deg2rad(degrees), "nearest")
  ones = np.asarray(geometry.rotate(np.ones_like(image), np.deg2rad(degrees), geometry.EXTEND))
  inside = np.asarray(geometry.rotate(np.ones_like(image), np.deg2rad(degrees), geometry.BLACK)) > 0
  # The two edge rules differ only where the source point leaves the image.
  np.testing.assert_allclose(ours[inside], reference[inside], atol=2e-5)
  assert np.all(ours[~inside] == 0) and (~inside).any() and np.all(ones == 1)
  np.testing.assert_array_equal(ops.rotate(image, degrees), ours)  # The policy op is this one.


@pytest.mark.parametrize("edges", geometry.EDGES)
def test_quarter_turns_are_exact_permutations(edges):
  image = _images((8, 8, 3))
  for turns in range(4):
    np.testing.assert_array_equal(
      geometry.rotate(image, turns * np.pi / 2, edges), np.rot90(image, turns)
    )


def test_unknown_edges_are_refused():
  with pytest.raises(ValueError, match="edges='wrap'"):
    geometry.rotate(_images((4, 4, 3)), 0.1, "wrap")


def test_box_mask_is_the_half_open_box_for_any_batch_shape():
  rng = np.random.default_rng(0)
  top, left = rng.integers(-3, 9, (2, 5)), rng.integers(-3, 9, (2, 5))
  bottom, right = top + rng.integers(0, 8, (2, 5)), left + rng.integers(0, 8, (2, 5))
  masks = np.asarray(geometry.box_mask(top, left, bottom, right, 7, 9))
  assert masks.shape == (2, 5, 7, 9)
  for index in np.ndindex(2, 5):
    expected = np.zeros((7, 9), bool)
    expected[
      max(top[index], 0) : max(bottom[index], 0), max(left[index], 0) : max(right[index], 0)
    ] = True
    np.testing.assert_array_equal(masks[index], expected)
  assert geometry.box_mask(1, 2, 3, 5, 4, 6).shape == (4, 6)  # Scalar bounds: one mask.
  # Erasing's (top, left, height, width) boxes are the same mask.
  np.testing.assert_array_equal(
    erase._box_mask(top[0], left[0], bottom[0] - top[0], right[0] - left[0], 7, 9),  # pylint: disable=protected-access
    masks[0],
  )


def test_no_flip_no_rotation_is_identity():
  images = _images()
  out = geometry.flip_rotate(images, jax.random.key(0), flip=False, rotation_degrees=0.0)
  np.testing.assert_array_equal(out, images)


def test_flip_gives_original_or_mirror_per_image():
  images = _images((16, 6, 6, 3))
  out = np.asarray(geometry.flip_rotate(images, jax.random.key(3), flip=True, rotation_degrees=0.0))
  flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
  same = [np.array_equal(o, i) for o, i in zip(out, images)]
  assert all(f or s for f, s in zip(flipped, same))
  assert any(flipped) and any(same)


def test_flip_rotate_is_a_function_of_the_key():
  images = _images()
  first = geometry.flip_rotate(images, jax.random.key(5), True, 20.0)
  again = geometry.flip_rotate(images, jax.random.key(5), True, 20.0)
  other = geometry.flip_rotate(images, jax.random.key(6), True, 20.0)
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  assert first.shape == images.shape and first.dtype == np.float32
  assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
