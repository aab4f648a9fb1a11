"""SaliencyMix's map: the JAX transcription of OpenCV's StaticSaliencyFineGrained equals cv2.

Tolerance: none. Every pixel's 8-bit level must equal OpenCV's (the float maps equal to float32
rounding of level / 255), on random and smooth images up to 256 x 256 (where OpenCV's float32
integral image is exact; see fine_grained.py).
"""

import cv2
import jax
import numpy as np
import pytest

from proxy_jax.augment import fine_grained, saliency


def _opencv(image_rgb_uint8):
  detector = cv2.saliency.StaticSaliencyFineGrained_create()
  ok, result = detector.computeSaliency(np.ascontiguousarray(image_rgb_uint8[..., ::-1]))
  assert ok
  return result


def _smooth(height, width, seed):
  """Blobs and gradients: large flat-ish regions, where rounding choices would show."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
  channels = []
  for _ in range(3):
    cy, cx = rng.uniform(0, height), rng.uniform(0, width)
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / rng.uniform(20, 400))
    channels.append(rng.uniform(20, 80) + 150 * blob + rng.uniform(-0.5, 0.5) * xx)
  return np.clip(np.round(np.stack(channels, -1)), 0, 255).astype(np.uint8)


def _cases():
  rng = np.random.default_rng(0)
  return [rng.integers(0, 256, (32, 32, 3), np.uint8), rng.integers(0, 256, (45, 61, 3), np.uint8),
          _smooth(48, 40, 1), _smooth(64, 64, 2), _smooth(130, 97, 3),
          np.full((20, 24, 3), 77, np.uint8)]  # Flat: OpenCV's 0 / 0 gives an all-zero map.


@pytest.mark.parametrize("index", range(6))
def test_fine_grained_equals_opencv(index):
  image = _cases()[index]
  ours = np.asarray(jax.jit(saliency.fine_grained)(image[None].astype(np.float32) / 255.0))[0]
  reference = _opencv(image)
  np.testing.assert_array_equal(np.round(ours * 255), np.round(reference * 255))
  np.testing.assert_allclose(ours, reference, atol=1e-7, rtol=0)


def test_fine_grained_steps_equal_opencvs_grey_and_blur():
  image = _cases()[1]
  grey = np.asarray(fine_grained._grey_levels(image[None] / 255.0))[0]  # pylint: disable=protected-access
  opencv_grey = cv2.cvtColor(np.ascontiguousarray(image[..., ::-1]), cv2.COLOR_BGR2GRAY)
  np.testing.assert_array_equal(grey, opencv_grey)
  blurred = np.asarray(fine_grained._blur_3x3(fine_grained._blur_3x3(grey[None])))[0]  # pylint: disable=protected-access
  twice = cv2.GaussianBlur(cv2.GaussianBlur(opencv_grey, (3, 3), 0, 0), (3, 3), 0, 0)
  np.testing.assert_array_equal(blurred, twice)


def test_truncated_255ths_are_opencvs_float_rounding():
  """The table of (uchar)(255. * (float)(k / 255)): k - 1 exactly where float32(k/255) < k/255."""
  table = fine_grained.TRUNCATED_255THS
  for k in range(256):
    below = np.float64(np.float32(k) / np.float32(255)) < k / 255
    assert table[k] == k - below


def test_image_map_names_both_maps_and_refuses_others():
  images = np.random.default_rng(1).uniform(size=(2, 16, 16, 3)).astype(np.float32)
  for name in saliency.IMAGE_MAPS:
    maps = np.asarray(saliency.image_map(name, images))
    assert maps.shape == (2, 16, 16) and maps.min() >= 0 and maps.max() <= 1
  with pytest.raises(ValueError, match="itti"):
    saliency.image_map("itti", images)


def test_divide_is_exact_floor_division():
  """The float-and-correct division against NumPy's on the ranges the map uses."""
  rng = np.random.default_rng(0)
  numerators = np.concatenate([rng.integers(0, 255 * 50176, 20000), np.arange(0, 3000)])
  denominators = np.concatenate([rng.integers(1, 50176, 20000), rng.integers(1, 40, 3000)])
  # Exact multiples, where a float quotient just below the integer would floor one too low.
  numerators[:500] = denominators[:500] * rng.integers(0, 255, 500)
  got = np.asarray(fine_grained._divide(numerators.astype(np.int32),  # pylint: disable=protected-access
                                        denominators.astype(np.int32)))
  np.testing.assert_array_equal(got, numerators // denominators)
