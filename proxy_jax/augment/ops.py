"""Single-image ops of the policy augmentations (RandAugment, TrivialAugment, AugMix), pure JAX.

Every op maps one float32 (H, W, C) image in [0, 1] and a (possibly traced) magnitude to an
image of the same shape in [0, 1]; `jax.vmap` batches them. They follow the semantics of PIL's
ImageOps / ImageEnhance, which the policies' magnitudes were tuned on (torchvision and timm both
reproduce PIL), so "Posterize 4 bits" or "Contrast 1.5" mean here what they mean in the papers.

dm-pix supplies `solarize` and the luma (`rgb_to_grayscale`); the affine resampling is the
library's one warp (`geometry.warp` with black edges: dm-pix's `affine_transform` was 30-60x
slower on CPU). dm-pix's
`adjust_brightness` (additive) and `adjust_contrast` / `adjust_saturation` (per-channel mean,
HSV) are TensorFlow's ops, not PIL's blends, so brightness, contrast and color are the PIL
blends written out below (one line each).

Ops that work on PIL's uint8 histogram (posterize, equalize) quantise to the 256-level grid
first, as torchvision does; their output is a multiple of 1/255.
"""

import dm_pix
import jax
import jax.numpy as jnp

from proxy_jax.augment import geometry

# Pixels that geometric ops bring in from outside the image are black (geometry.BLACK), as
# torchvision's RandAugment / TrivialAugment (fill=None) and the AugMix reference (PIL's default).


def _to_levels(image):
  """[0, 1] floats -> integer levels 0..255 (as float32), rounding like a uint8 conversion."""
  return jnp.clip(jnp.floor(image * 255.0 + 0.5), 0.0, 255.0)


def _grayscale(image):
  """PIL's "L" luma (ITU-R 601) kept as C channels; a single-channel image is its own luma."""
  if image.shape[-1] == 1:
    return image
  return dm_pix.rgb_to_grayscale(image, keep_dims=True)


def _blend(degenerate, image, factor):
  """PIL ImageEnhance: factor 0 gives the degenerate image, 1 the original, >1 extrapolates."""
  return jnp.clip(degenerate + factor * (image - degenerate), 0.0, 1.0)


def identity(image, magnitude=0.0):
  del magnitude
  return image


def invert(image, magnitude=0.0):
  del magnitude
  return 1.0 - image


def brightness(image, factor):
  """PIL Brightness: blend with black, i.e. a multiplicative gain."""
  return _blend(jnp.zeros_like(image), image, factor)


def contrast(image, factor):
  """PIL Contrast: blend with the mean luma of the whole image (one scalar, not per channel)."""
  mean = jnp.mean(_grayscale(image))
  return _blend(jnp.full_like(image, mean), image, factor)


def color(image, factor):
  """PIL Color (torchvision adjust_saturation): blend with the image's own luma."""
  return _blend(jnp.broadcast_to(_grayscale(image), image.shape), image, factor)


def sharpness(image, factor):
  """PIL Sharpness: blend with the SMOOTH-filtered image; border pixels stay unfiltered, as PIL."""
  height, width, _ = image.shape
  if height < 3 or width < 3:
    return image
  # 3x3 kernel [[1,1,1],[1,5,1],[1,1,1]] / 13 as nine shifted slices: no conv needed.
  total = 4.0 * image[1:-1, 1:-1]
  for dy in range(3):
    for dx in range(3):
      total = total + image[dy : dy + height - 2, dx : dx + width - 2]
  degenerate = image.at[1:-1, 1:-1].set(total / 13.0)
  return _blend(degenerate, image, factor)


def posterize(image, bits):
  """Keeps the top `bits` (1..8, may be traced) of each 8-bit level, like PIL posterize."""
  step = 2.0 ** (8.0 - jnp.asarray(bits, jnp.float32))
  return jnp.floor(_to_levels(image) / step) * step / 255.0


def solarize(image, threshold):
  """Inverts every value >= threshold (in [0, 1]), like PIL solarize with threshold*255."""
  return dm_pix.solarize(image, threshold)


def autocontrast(image, magnitude=0.0):
  """PIL autocontrast (cutoff 0): stretch each channel's [min, max] to [0, 1].

  A constant channel is left alone, as in PIL. This works on the continuous values; PIL's
  uint8 lookup table truncates, so the two differ by less than one level (1/255).
  """
  del magnitude
  low = jnp.min(image, axis=(0, 1), keepdims=True)
  high = jnp.max(image, axis=(0, 1), keepdims=True)
  span = high - low
  stretched = (image - low) / jnp.where(span > 0, span, 1.0)
  return jnp.where(span > 0, jnp.clip(stretched, 0.0, 1.0), image)


def _equalize_channel(levels):
  """PIL's equalize lookup table for one channel of integer levels (flattened, int32)."""
  histogram = jnp.zeros(256, jnp.int32).at[levels].add(1)
  # PIL spreads the pixels below the brightest occupied level over 255 steps.
  brightest_count = histogram[jnp.max(levels)]
  step = (levels.shape[0] - brightest_count) // 255
  below = jnp.cumsum(histogram) - histogram
  lut = jnp.clip((below + step // 2) // jnp.maximum(step, 1), 0, 255)
  # step 0 (one level, or too few pixels) means PIL leaves the channel as it is.
  lut = jnp.where(step > 0, lut, jnp.arange(256, dtype=jnp.int32))
  return lut[levels]


def equalize(image, magnitude=0.0):
  """Per-channel histogram equalisation exactly as PIL ImageOps.equalize on the uint8 image.

  The histogram is a scatter-add, so `jax.vmap(equalize)` equalises a batch with no loop.
  """
  del magnitude
  height, width, channels = image.shape
  levels = _to_levels(image).astype(jnp.int32).reshape(height * width, channels)
  equalized = jax.vmap(_equalize_channel, in_axes=1, out_axes=1)(levels)
  return (equalized.astype(jnp.float32) / 255.0).reshape(image.shape)


def _warp(image, inverse_yx, offset_yx):
  """Affine resampling with black edges (see `geometry.warp`)."""
  return geometry.warp(image, inverse_yx, offset_yx, geometry.BLACK)


def shear_matrix(shear, axis):
  """Output -> input map of a shear about the top-left corner (torchvision's center=[0, 0]).

  axis "x": input x = x + shear * y (rows slide sideways); axis "y": input y = y + shear * x.
  """
  shear = jnp.asarray(shear, jnp.float32)
  if axis == "x":
    return jnp.array([[1.0, 0.0], [0.0, 1.0]]).at[1, 0].set(shear)
  return jnp.array([[1.0, 0.0], [0.0, 1.0]]).at[0, 1].set(shear)


def shear_x(image, shear):
  return _warp(image, shear_matrix(shear, "x"), jnp.zeros(2))


def shear_y(image, shear):
  return _warp(image, shear_matrix(shear, "y"), jnp.zeros(2))


def translate_x(image, pixels):
  """Moves the content `pixels` to the right (negative: left); black comes in."""
  return _warp(image, jnp.eye(2), jnp.stack([0.0, -jnp.asarray(pixels, jnp.float32)]))


def translate_y(image, pixels):
  """Moves the content `pixels` down (negative: up); black comes in."""
  return _warp(image, jnp.eye(2), jnp.stack([-jnp.asarray(pixels, jnp.float32), 0.0]))


def rotate(image, degrees):
  """Counter-clockwise turn about the image centre (PIL rotate, expand=False), black corners."""
  return geometry.rotate(image, jnp.deg2rad(jnp.asarray(degrees, jnp.float32)), geometry.BLACK)
