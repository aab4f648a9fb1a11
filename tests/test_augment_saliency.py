"""SaliencyMix's maps: the JAX transcription of OpenCV's StaticSaliencyFineGrained equals cv2;
the spectral-residual option matches a NumPy transcription of OpenCV's steps.

Tolerance: none. Every pixel's 8-bit level must equal OpenCV's (the float maps equal to float32
rounding of level / 255), on random and smooth images up to 256 x 256 (where OpenCV's float32
integral image is exact; see fine_grained.py). The spectral-residual map: within 2e-4 of the
float64 transcription (float32 FFTs).
"""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from proxy_jax.augment import fine_grained, saliency
from tests.augment_checks import np_bilinear


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
  return [
    rng.integers(0, 256, (32, 32, 3), np.uint8),
    rng.integers(0, 256, (45, 61, 3), np.uint8),
    _smooth(48, 40, 1),
    _smooth(64, 64, 2),
    _smooth(130, 97, 3),
    np.full((20, 24, 3), 77, np.uint8),
  ]  # Flat: OpenCV's 0 / 0 gives an all-zero map.


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


@pytest.mark.slow
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
  got = np.asarray(
    fine_grained._divide(
      numerators.astype(np.int32),  # pylint: disable=protected-access
      denominators.astype(np.int32),
    )
  )
  np.testing.assert_array_equal(got, numerators // denominators)


# ---------------------------------------------------------------- spectral residual


def _np_resize_linear(maps, height, width):
  """cv2.resize INTER_LINEAR: half-pixel centres, edges clamped, no antialiasing."""
  h, w = maps.shape[-2:]
  ys = np.clip((np.arange(height) + 0.5) * h / height - 0.5, 0, h - 1)
  xs = np.clip((np.arange(width) + 0.5) * w / width - 0.5, 0, w - 1)
  src_y, src_x = np.meshgrid(ys, xs, indexing="ij")
  return np_bilinear(maps[..., None], src_y, src_x)[..., 0]


def _np_filter_reflect101(plane, kernel):
  radius = len(kernel) // 2
  padded = np.pad(plane, radius, mode="reflect")
  h, w = plane.shape
  rows = sum(k * padded[i : i + h, :] for i, k in enumerate(kernel))
  return sum(k * rows[:, i : i + w] for i, k in enumerate(kernel))


def _np_spectral_residual(image):
  """OpenCV's StaticSaliencySpectralResidual, transcribed step by step in float64."""
  grey = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
  small = _np_resize_linear(grey, 64, 64)
  spectrum = np.fft.fft2(small)
  log_amplitude = np.log(np.maximum(np.abs(spectrum), 1e-12))
  residual = log_amplitude - _np_filter_reflect101(log_amplitude, np.full(3, 1 / 3))
  back = np.fft.ifft2(np.exp(residual + 1j * np.angle(spectrum)))
  offsets = np.arange(5) - 2.0
  gauss = np.exp(-(offsets**2) / (2 * 8.0**2))
  magnitude = _np_filter_reflect101(np.abs(back), gauss / gauss.sum())
  saliency_map = magnitude**2
  saliency_map /= saliency_map.max()
  return _np_resize_linear(saliency_map, *image.shape[:2])


def test_spectral_residual_matches_numpy_transcription():
  rng = np.random.default_rng(4)
  image = 0.4 + 0.05 * rng.standard_normal((40, 40, 3))
  image[10:18, 24:32] = 0.95  # A small bright square on a grey, noisy background.
  image = np.clip(image, 0, 1).astype(np.float32)
  got = np.asarray(saliency.spectral_residual(jnp.asarray(image[None])))[0]
  want = _np_spectral_residual(image)
  np.testing.assert_allclose(got, want, atol=2e-4)
  assert 0.5 < got.max() <= 1.0 + 1e-6 and got.min() >= 0.0
  peak = np.unravel_index(np.argmax(got), got.shape)
  assert np.unravel_index(np.argmax(want), want.shape) == peak
  assert 8 <= peak[0] <= 19 and 22 <= peak[1] <= 33  # On the odd one out: the square.
