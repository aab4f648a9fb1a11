"""The one path every map takes: ReLU, bilinear upsampling, optional smoothing, min-max.

All of it runs in float32 on one `(h, w)` map, whatever the model's compute dtype.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

# A map whose value range is below this fraction of its magnitude counts as constant and
# becomes all zeros (never NaN). Relative, because gradient maps can be tiny (1e-10) yet real.
NORMALIZE_EPS = 1e-6


def varies(low, high, eps: float = NORMALIZE_EPS):
  """Whether values spanning [low, high] differ by more than float32 rounding noise."""
  return high - low > eps * jnp.maximum(jnp.abs(low), jnp.abs(high))


def normalize(cam, eps: float = NORMALIZE_EPS):
  """Min-max to [0, 1] per map; a (near-)constant map becomes all zeros."""
  cam = jnp.asarray(cam, jnp.float32)
  low, high = jnp.min(cam), jnp.max(cam)
  significant = varies(low, high, eps)
  scaled = (cam - low) / jnp.where(significant, high - low, 1.0)
  return jnp.where(significant, jnp.clip(scaled, 0.0, 1.0), 0.0)


def upsample(cam, size: tuple[int, int]):
  """Bilinear resize of one (h, w) map to `size` (a no-op when the sizes already match)."""
  if tuple(cam.shape) == tuple(size):
    return cam
  return jax.image.resize(cam, size, method="bilinear")


@functools.lru_cache(maxsize=64)
def _gaussian_matrix(size: int, sigma: float) -> np.ndarray:
  """(size, size) row-stochastic blur: a truncated Gaussian renormalised at the borders.

  Renormalising each row (instead of padding with zeros) keeps edge pixels at their true
  level, which is the edge artefact smoothing is meant to remove, not to add.
  """
  radius = int(np.ceil(3.0 * sigma))
  index = np.arange(size)
  distance = index[:, None] - index[None, :]
  weights = np.exp(-0.5 * (distance / sigma) ** 2) * (np.abs(distance) <= radius)
  return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def gaussian_smooth(cam, sigma: float):
  """Separable Gaussian blur of one (H, W) map, sigma in pixels; 0 returns it unchanged."""
  if sigma <= 0:
    return cam
  rows = jnp.asarray(_gaussian_matrix(cam.shape[0], float(sigma)))
  cols = jnp.asarray(_gaussian_matrix(cam.shape[1], float(sigma)))
  precision = jax.lax.Precision.HIGHEST
  return jnp.matmul(jnp.matmul(rows, cam, precision=precision), cols.T, precision=precision)


def finish(cam, size: tuple[int, int], smooth_sigma: float = 0.0, rectify: bool = True):
  """Raw (h, w) map -> float32 (H, W) in [0, 1]: ReLU, upsample, smooth, normalise.

  `rectify=False` skips the ReLU and the normalisation: the signed map, upsampled and smoothed.
  """
  cam = jnp.asarray(cam, jnp.float32)
  if not rectify:
    return gaussian_smooth(upsample(cam, size), smooth_sigma)
  cam = jnp.maximum(cam, 0.0)
  cam = gaussian_smooth(upsample(cam, size), smooth_sigma)
  return normalize(cam)
