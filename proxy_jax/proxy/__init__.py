"""The proxy image: Proxy Attention's pure transform and the jitted CAM-plus-transform functions.

Library layer: it needs only the CAMs (`proxy_jax.cams`) and the preprocessing, never data,
state or the training loop, so users can make proxies of their own images with their own model:

    maps = cams.compute("gradcam", apply_fn, variables, preprocess.normalize(unit), targets)
    proxies = proxy_transform(unit, maps, threshold=0.85, weight=0.2)

The proxy step (`proxy_jax.run.proxy_step`) walks the training split with these functions.
"""

import functools

import jax
import jax.numpy as jnp

from proxy_jax import cams
from proxy_jax.images import preprocess

# ---------------------------------------------------------------- the transform

STATISTIC_MODES = {"mean": jnp.mean, "max": jnp.max, "min": jnp.min}
# `config.proxy.mode` values `proxy_transform` knows.
PROXY_MODES = ("seed", "blended", *STATISTIC_MODES, "zero", "one")
# `config.proxy.cam_target`: the class each proxy's CAM explains.
CAM_TARGETS = ("predicted", "label")


def proxy_transform(images, maps, threshold, weight, mode: str = "seed"):
  """Down-weights attended pixels of images in [0, 1]; pure and jittable.

  images: (B, H, W, C) floats in [0, 1]; maps: (B, H, W) CAMs in [0, 1]. Non-finite CAM values are
  treated as 0. Pixels with cam below the threshold are never changed. Modes:
    seed:     cam >= t -> (1 - weight) * cam * pixel   (the seed document's Algorithm 1)
    blended:  cam >  t -> (1 - weight * cam) * pixel   (what the original code ran)
    mean/max/min: cam >= t -> that statistic of the image, per channel
    zero/one: cam >= t -> 0 (black) / 1 (white)
  The result is clipped to [0, 1] and has the input's shape and dtype. Integer images are
  refused: clipping uint8 values to [0, 1] would silently destroy them.
  """
  dtype = jnp.asarray(images).dtype
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
      f"proxy_transform takes float images in [0, 1], got {dtype}; convert "
      "uint8 with preprocess.to_unit_range first"
    )
  x = images.astype(jnp.float32)
  cam = jnp.asarray(maps, jnp.float32)
  cam = jnp.where(jnp.isfinite(cam), cam, 0.0)[..., None]
  if mode == "seed":
    out = jnp.where(cam >= threshold, (1.0 - weight) * cam * x, x)
  elif mode == "blended":
    out = jnp.where(cam > threshold, (1.0 - weight * cam) * x, x)
  elif mode in STATISTIC_MODES:
    stat = STATISTIC_MODES[mode](x, axis=(1, 2), keepdims=True)
    out = jnp.where(cam >= threshold, stat, x)
  elif mode in ("zero", "one"):
    out = jnp.where(cam >= threshold, 0.0 if mode == "zero" else 1.0, x)
  else:
    raise ValueError(f"unknown proxy mode {mode!r}; choose {', '.join(PROXY_MODES)}")
  return jnp.clip(out, 0.0, 1.0).astype(dtype)


# ---------------------------------------------------------------- CAMs and proxies, jitted


@functools.lru_cache(maxsize=32)
def fused_scan_fn(apply_fn, method: str, mode: str, cam_options: tuple):
  """Jitted (variables, uint8 images, targets or None, threshold, weight) ->
  (predictions, uint8 proxies, uint8 maps) for a whole batch, in one pass."""

  def scan(variables, images_uint8, targets, threshold, weight):
    unit = preprocess.to_unit_range(images_uint8)
    maps, logits = cams.compute(
      method,
      apply_fn,
      variables,
      preprocess.normalize(unit),
      targets,
      return_logits=True,
      **dict(cam_options),
    )
    out = proxy_transform(unit, maps, threshold, weight, mode)
    return jnp.argmax(logits, -1), to_uint8(out), to_uint8(maps)

  return jax.jit(scan)


@functools.lru_cache(maxsize=32)
def _proxy_fn(apply_fn, method: str, mode: str, cam_options: tuple):
  """Jitted (variables, uint8 images, targets, threshold, weight, key) -> (uint8 proxies, maps).

  The key only reaches methods that draw noise (the SmoothGrad family).
  """
  noisy = method in cams.NOISY_METHODS

  def proxies(variables, images_uint8, targets, threshold, weight, key):
    unit = preprocess.to_unit_range(images_uint8)
    maps = cams.compute(
      method,
      apply_fn,
      variables,
      preprocess.normalize(unit),
      targets,
      **dict(cam_options),
      **({"key": key} if noisy else {}),
    )
    out = proxy_transform(unit, maps, threshold, weight, mode)
    return to_uint8(out), to_uint8(maps)

  return jax.jit(proxies)


def make_proxy_fn(
  apply_fn, method: str, threshold: float, weight: float, mode: str, cam_options: dict
):
  """Jitted (variables, uint8 images, targets, key=None) -> (uint8 proxies, uint8 maps); cached.

  `key` seeds the noise of the SmoothGrad-family methods (required by them).
  """
  fn = _proxy_fn(apply_fn, method, mode, tuple(sorted(cam_options.items())))

  def call(variables, images, targets, key=None):
    if key is None:
      if method in cams.NOISY_METHODS:
        raise ValueError(f"proxy CAM method {method!r} draws noise: pass a PRNG key")
      key = jax.random.key(0)  # Unused by noise-free methods.
    return fn(variables, images, targets, jnp.float32(threshold), jnp.float32(weight), key)

  return call


def to_uint8(unit):
  """Floats in [0, 1] -> uint8 levels, rounded (how proxies and maps are stored)."""
  return jnp.round(jnp.clip(unit, 0.0, 1.0) * 255.0).astype(jnp.uint8)
