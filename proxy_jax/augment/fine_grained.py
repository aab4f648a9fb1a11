"""OpenCV's StaticSaliencyFineGrained (Montabone & Soto 2010), in JAX, integer for integer.

SaliencyMix's reference computes its map with `cv2.saliency.StaticSaliencyFineGrained`. This
module transcribes opencv_contrib's modules/saliency/src/staticSaliencyFineGrained.cpp so that
the map can be computed in-jit, batched, on the device:

  1. grey: `cvtColor(BGR2GRAY)` on 8-bit levels, OpenCV's fixed-point luma
     (R 9798 + G 19235 + B 3735 + 2^14) >> 15;
  2. two 3x3 Gaussian blurs (sigma from the size: [1, 2, 1] / 4), each rounded back to 8 bits,
     border reflect-101 (OpenCV's BORDER_DEFAULT);
  3. an integral image, and at 6 scales n in (12, 24, 48, 28, 56, 112) the mean of the
     window rows [y - n + 1, y + n], columns [x - n + 1, x + n] (clipped to the image) without
     the centre pixel;
  4. centre-surround: on = trunc(grey - mean) where positive, off = trunc(mean - grey) where
     positive (8-bit);
  5. per polarity the sum over scales, scaled by 255 / its maximum and truncated to 8 bits;
  6. on + off, scaled by 255 / max(max on, max off) and truncated to 8 bits, then / 255: a
     float map in [0, 1], as `computeSaliency` returns it. (A sum above that maximum would make
     the C cast of a double above 255, undefined; x86-64 builds keep the low byte, which this
     code does too. No test or photo image has reached that case.)

Every float step of the C++ is replaced by integer arithmetic that provably gives the same
8-bit result (see each function), so the maps are identical to OpenCV's wherever OpenCV's
float32 integral image is exact, that is while 255 x H x W < 2^24 (images up to 256 x 256);
larger images may differ by a level at some pixels where OpenCV's integral rounds.
tests/test_augment_saliency.py checks equality against cv2 on random and smooth images;
benchmarks/saliencymix_map.py on photos.

Input: float images in [0, 1], RGB, quantised to the 8-bit levels OpenCV would be given
(round(255 x)). Note that the SaliencyMix reference hands OpenCV the *normalised* float tensor
(in RGB order), which OpenCV accepts but then reads the bytes of its float grey image as 8-bit
levels (`gray.at<uchar>` on a CV_32F Mat): the map it trained with is not this algorithm's. This
module computes the algorithm as OpenCV defines it for 8-bit images, which is what the paper
describes.
"""

import jax
import jax.numpy as jnp
import numpy as np

# Window half-sizes of the 6 scales (OpenCV's `neighborhoods`).
NEIGHBORHOODS = (3 * 4, 3 * 4 * 2, 3 * 4 * 2 * 2, 7 * 4, 7 * 4 * 2, 7 * 4 * 2 * 2)
# cvtColor's 8-bit fixed-point luma weights (ITU-R 601 in units of 2^-15): equal to cv2 5.1 on
# every pixel of random images, where the 2^-14 weights (4899, 9617, 1868) are not.
LUMA_R, LUMA_G, LUMA_B, LUMA_SHIFT = 9798, 19235, 3735, 15


def _grey_levels(images):
  """(B, H, W, 3) in [0, 1] RGB -> (B, H, W) int32 grey levels 0..255 (cvtColor BGR2GRAY)."""
  levels = jnp.clip(jnp.round(images.astype(jnp.float32) * 255.0), 0, 255).astype(jnp.int32)
  red, green, blue = levels[..., 0], levels[..., 1], levels[..., 2]
  return (red * LUMA_R + green * LUMA_G + blue * LUMA_B + (1 << (LUMA_SHIFT - 1))) >> LUMA_SHIFT


def _blur_3x3(grey):
  """One 8-bit GaussianBlur(3x3, sigma 0): weights [1, 2, 1] x [1, 2, 1] / 16, rounded half up."""
  height, width = grey.shape[1:]
  padded = jnp.pad(grey, ((0, 0), (1, 1), (1, 1)), mode="reflect")  # reflect-101
  rows = padded[:, :-2] + 2 * padded[:, 1:-1] + padded[:, 2:]
  total = rows[:, :, :-2] + 2 * rows[:, :, 1:-1] + rows[:, :, 2:]
  assert total.shape[1:] == (height, width)
  return (total + 8) >> 4


def _divide(numerator, denominator):
  """floor(numerator / denominator) of non-negative int32 arrays (broadcast), exactly.

  Through float32 and one correction step each way: the operands here are below 2^24 (exact as
  floats) and the quotients below 2^17, so the float quotient is off by far less than 1 and one
  step absorbs it. Integer division is a slow scalar loop on XLA:CPU (this halved the map's
  time at 224 px).
  """
  denominator = jnp.asarray(denominator, jnp.int32)
  quotient = jnp.floor(numerator.astype(jnp.float32) / denominator.astype(jnp.float32))
  quotient = quotient.astype(jnp.int32)
  quotient = quotient - (quotient * denominator > numerator)
  return quotient + ((quotient + 1) * denominator <= numerator)


def _window_bounds(size: int, neighborhood: int):
  """Integral-image indices P1, P2 of every position along one axis, clipped to [0, size]."""
  positions = np.arange(size)
  return (
    np.clip(positions - neighborhood + 1, 0, size),
    np.clip(positions + neighborhood + 1, 0, size),
  )


def _center_surround(grey, integral, neighborhood: int):
  """(on, off) int32 maps of one scale: how far each pixel is above / below its surround.

  OpenCV computes mean = (window - centre) / (area - 1) in float32 and truncates
  centre - mean; here the same is integer arithmetic: trunc(centre - N / A) with N, A
  integers is floor((centre A - N) / A) for a positive difference. The two agree exactly:
  a non-integer N / A lies at least 1 / A >= 1 / 50175 from an integer, more than float32's
  two roundings (<= 1.6e-5 below 256) can move it. (XLA's float32 division is not correctly
  rounded on CPU, so emulating the float code would not be exact anyway.)
  """
  height, width = grey.shape[1:]
  y1, y2 = _window_bounds(height, neighborhood)
  x1, x2 = _window_bounds(width, neighborhood)
  # The integral at the clipped corners, as static slices of the edge-padded integral image
  # (padded row j is row clip(j - n, 0, H)): XLA:CPU's gather was 10x slower.
  padded = jnp.pad(
    integral, ((0, 0), (neighborhood, neighborhood), (neighborhood, neighborhood)), mode="edge"
  )
  at = (
    lambda dy, dx: padded[
      :,
      neighborhood + dy : neighborhood + dy + height,  # pylint: disable=unnecessary-lambda-assignment
      neighborhood + dx : neighborhood + dx + width,
    ]
  )
  near, far = 1 - neighborhood, neighborhood + 1  # P1 = position + near, P2 = position + far
  window = at(far, far) + at(near, near) - at(far, near) - at(near, far)
  area = jnp.asarray((y2 - y1)[:, None] * (x2 - x1)[None, :] - 1, jnp.int32)
  surround = window - grey
  excess = grey * area - surround  # (centre - mean) * area
  magnitude = _divide(jnp.abs(excess), area)  # One division serves both polarities.
  on = jnp.where(excess > 0, magnitude, 0)
  off = jnp.where(excess < 0, magnitude, 0)
  return on, off


def _truncated_255ths():
  """k -> (uchar)(255. * (float)(k / 255)) for k = 0..255: where 255 m / M is the integer k,
  OpenCV's float32 quotient m / M equals float32(k / 255), which may lie just below k / 255."""
  quotients = (np.arange(256, dtype=np.float32) / np.float32(255)).astype(np.float32)
  return np.floor(255.0 * quotients.astype(np.float64)).astype(np.int32)


TRUNCATED_255THS = _truncated_255ths()


def _scale_to_255(total, maximum):
  """(uchar)(255. * (float)(total / (float)maximum)) per pixel, exactly, in integers.

  Where 255 total / maximum is not an integer it lies at least 1 / maximum (>= 1 / 1530) from
  one, far beyond float32's rounding of the quotient, so the C result is the integer floor;
  where it is the integer k, the C result is `TRUNCATED_255THS[k]` (k or k - 1).
  """
  maximum = jnp.maximum(maximum, 1)
  scaled = total * 255
  floor = _divide(scaled, maximum)
  exact = floor * maximum == scaled
  return jnp.where(exact, jnp.asarray(TRUNCATED_255THS)[jnp.clip(floor, 0, 255)], floor)


def fine_grained(images):
  """OpenCV StaticSaliencyFineGrained of (B, H, W, 3) RGB images in [0, 1] -> (B, H, W) [0, 1]."""
  grey = _blur_3x3(_blur_3x3(_grey_levels(images)))
  integral = jnp.pad(jnp.cumsum(jnp.cumsum(grey, axis=1), axis=2), ((0, 0), (1, 0), (1, 0)))
  scales = [_center_surround(grey, integral, n) for n in NEIGHBORHOODS]
  image_max = lambda m: jnp.max(m, axis=(1, 2), keepdims=True)  # pylint: disable=unnecessary-lambda-assignment
  on_total = sum(on for on, _ in scales)
  off_total = sum(off for _, off in scales)
  # An all-zero polarity (a flat image) is 0 / 0 in C, which casts to 0; so it does here.
  on = _scale_to_255(on_total, image_max(on_total))
  off = _scale_to_255(off_total, image_max(off_total))
  peak = jnp.maximum(image_max(on), image_max(off))
  # Integer division is exact here: 255 (on + off) / peak in double only truncates.
  mixed = _divide(255 * (on + off), jnp.maximum(peak, 1))
  levels = jnp.where(peak > 0, mixed % 256, 0)
  return jax.lax.stop_gradient(levels.astype(jnp.float32) * np.float32(1.0 / 255.0))
