"""Crops of the train step, from stored images (side `data.load_size`) to the training size.

Pure JAX functions of (images, key) on float32 (B, L, L, C) images in [0, 1], batched with
`jax.vmap`, output (B, S, S, C) of a static shape:

  random_resized  torchvision's RandomResizedCrop: a box of area share ~ U(scale) and aspect
                  ratio w/h log-uniform in `ratio`, 10 tries, then the centre fallback, exactly
                  `RandomResizedCrop.get_params` (`box_from_uniforms`); the box is resized to
                  S x S with PIL's bilinear filter (`resized_crop`).
  pad             pad-k random crop (torchvision `RandomCrop(S, padding=k)`, the CIFAR
                  scripts of CutMix, Cutout and SaliencyMix): zero or reflect padding, then a
                  uniformly placed S x S window.
  center          the centre crop, what evaluation, the proxy step, CAMs and inference see
                  (torchvision Resize + CenterCrop; `preprocess.center_crop`).

Why a resize of our own: `jax.image.scale_and_translate` antialiases like PIL but lets the
filter reach pixels outside the crop box (it only stops at the image border), while PIL (and
torchvision, which crops first) renormalises the filter inside the box. `resized_crop` builds the
two separable weight matrices of PIL's bilinear resample confined to the box, so downscaling
antialiases exactly as PIL does and the result equals PIL crop + resize to within PIL's own 8-bit
rounding (tests/test_augment_crop.py; benchmarks/crop_vs_pil.py).
"""

import math

import jax
import jax.numpy as jnp

from proxy_jax.images import preprocess
from proxy_jax.augment import fields
from proxy_jax.core.errors import fail_field

center_crop = preprocess.center_crop

CROPS = ("random_resized", "pad", "center")
PAD_MODES = ("zero", "reflect")
# torchvision's RandomResizedCrop draws at most this many boxes before the centre fallback.
TRIES = 10


def box_from_uniforms(uniforms, height: int, width: int, scale, ratio):
  """RandomResizedCrop.get_params with its random draws given: (top, left, h, w) int32.

  `uniforms` (4, TRIES) in [0, 1) stand for torchvision's per-try draws, in order: the area
  share (`uniform_(*scale)`), the log aspect ratio (`uniform_(*log(ratio))`), and the two
  `randint` offsets (floor(u * n) for randint(0, n)). The first try whose box fits wins; if none
  does, the fallback crops the whole image, clamped to the ratio range, at its centre.
  """
  area = float(height * width)
  log_low, log_high = math.log(ratio[0]), math.log(ratio[1])
  target_area = area * (scale[0] + uniforms[0] * (scale[1] - scale[0]))
  aspect = jnp.exp(log_low + uniforms[1] * (log_high - log_low))
  # Python's round (half to even), as torchvision's int(round(...)); jnp.round is the same.
  w = jnp.round(jnp.sqrt(target_area * aspect)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(target_area / aspect)).astype(jnp.int32)
  fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  top = jnp.floor(uniforms[2] * (height - h + 1)).astype(jnp.int32)
  left = jnp.floor(uniforms[3] * (width - w + 1)).astype(jnp.int32)
  first = jnp.argmax(fits)
  fallback = jnp.array(_fallback_box(height, width, ratio), jnp.int32)
  chosen = jnp.stack([top[first], left[first], h[first], w[first]])
  return jnp.where(jnp.any(fits), chosen, fallback)


def _fallback_box(height: int, width: int, ratio) -> tuple[int, int, int, int]:
  in_ratio = width / height
  if in_ratio < min(ratio):
    w = width
    h = int(round(w / min(ratio)))
  elif in_ratio > max(ratio):
    h = height
    w = int(round(h * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def _bilinear_weights(start, length, in_size: int, out_size: int):
  """(out_size, in_size) rows of PIL's bilinear resample of [start, start + length) to out_size.

  PIL: output pixel o samples centre c = start + (o + 0.5) * scale (scale = length / out); its
  triangle filter has support max(scale, 1) (wider when shrinking: the antialiasing), and the
  weights of the pixels inside the box are normalised to sum to 1.
  """
  length = jnp.asarray(length, jnp.float32)
  scale = length / out_size
  support = jnp.maximum(scale, 1.0)
  centres = start + (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * scale
  pixels = jnp.arange(in_size, dtype=jnp.float32)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(pixels[None, :] + 0.5 - centres[:, None]) / support)
  inside = (pixels >= start) & (pixels < start + length)
  weights = jnp.where(inside[None, :], weights, 0.0)
  return weights / jnp.sum(weights, axis=1, keepdims=True)


def resized_crop(image, box, size: int):
  """One (H, W, C) image's box (top, left, h, w) resized to (size, size, C), PIL bilinear."""
  height, width, _ = image.shape
  top, left, h, w = (box[i] for i in range(4))
  rows = _bilinear_weights(top, h, height, size)
  cols = _bilinear_weights(left, w, width, size)
  # HIGHEST: no TF32/bf16 passes on accelerators, so the pixels stay float32-exact.
  out = jnp.einsum("oh,hwc,pw->opc", rows, image, cols, precision=jax.lax.Precision.HIGHEST)
  return jnp.clip(out, 0.0, 1.0)


def random_boxes(key, count: int, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """(count, 4) int32 RandomResizedCrop boxes (top, left, h, w), one per image of a batch; the
  boxes the stream's workers crop with when the crop runs there (`data.stream_crop`)."""

  def one(one_key):
    uniforms = jax.random.uniform(one_key, (4, TRIES))
    return box_from_uniforms(uniforms, height, width, scale, ratio)

  return jax.vmap(one)(jax.random.split(key, count))


def random_resized_crop(images, key, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """RandomResizedCrop(size, scale, ratio) of each image, independently."""
  count, height, width, _ = images.shape
  boxes = random_boxes(key, count, height, width, scale, ratio)
  return jax.vmap(lambda image, box: resized_crop(image, box, size))(images, boxes)


def pad_crop(images, key, size: int, padding: int, mode: str = "zero"):
  """RandomCrop(size, padding, padding_mode="constant" (0) or "reflect") of each image."""
  if mode not in PAD_MODES:
    raise ValueError(f"pad mode {mode!r}; choose one of {', '.join(PAD_MODES)}")
  pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
  padded = jnp.pad(images, pad, mode="constant" if mode == "zero" else "reflect")
  _, height, width, channels = padded.shape
  offsets = jax.vmap(
    lambda k: jax.random.randint(k, (2,), 0, jnp.array([height - size + 1, width - size + 1]))
  )(jax.random.split(key, images.shape[0]))

  def one(image, offset):
    return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (size, size, channels))

  return jax.vmap(one)(padded, offsets)


def from_settings(settings, image_size: int):
  """The augment settings' crop as (images, key) -> images of side `image_size`."""
  name = settings.crop
  if name == "random_resized":
    scale, ratio = tuple(settings.crop_scale), tuple(settings.crop_ratio)
    return lambda images, key: random_resized_crop(images, key, image_size, scale, ratio)
  if name == "pad":
    return lambda images, key: pad_crop(
      images, key, image_size, settings.crop_padding, settings.crop_pad_mode
    )
  if name == "center":
    return lambda images, key: center_crop(images, image_size)
  raise ValueError(f"unknown crop {name!r}; choose one of {', '.join(CROPS)}")


def check(settings) -> None:
  """Validates the crop fields of the augment settings (ConfigError naming the field)."""
  if settings.crop not in CROPS:
    fail_field("augment.crop", settings.crop, "choose one of " + ", ".join(CROPS))
  for field, upper in (("crop_scale", 1.0), ("crop_ratio", math.inf)):
    value = getattr(settings, field)
    pair = tuple(value) if isinstance(value, (list, tuple)) else ()
    if (
      len(pair) != 2
      or not all(fields.is_number(v) for v in pair)
      or not 0 < pair[0] <= pair[1] <= upper
    ):
      bound = "1" if upper == 1.0 else "inf"
      fail_field(
        f"augment.{field}", value, f"must be a pair (low, high) with 0 < low <= high <= {bound}"
      )
  padding = settings.crop_padding
  if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
    fail_field("augment.crop_padding", padding, "must be an integer >= 0 (pixels on each side)")
  if settings.crop_pad_mode not in PAD_MODES:
    fail_field(
      "augment.crop_pad_mode", settings.crop_pad_mode, "choose one of " + ", ".join(PAD_MODES)
    )
