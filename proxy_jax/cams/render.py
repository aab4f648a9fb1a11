"""Rendering maps for people: colour maps, overlays and (image | overlay) grids. Host-side NumPy."""

import os

import numpy as np
from PIL import Image

from proxy_jax.images import images_grid


def _jet(values):
  # The classic MATLAB jet as three clipped ramps: no matplotlib needed for the default.
  ramp = lambda centre: np.clip(1.5 - np.abs(4.0 * values - centre), 0.0, 1.0)
  return np.stack([ramp(3.0), ramp(2.0), ramp(1.0)], axis=-1)


def colorize(cams, colormap: str = "jet") -> np.ndarray:
  """Maps in [0, 1] `(..., H, W)` -> float32 RGB `(..., H, W, 3)` in [0, 1].

  "jet" is built in; any other name is looked up in matplotlib's colormaps.
  """
  values = np.clip(np.nan_to_num(np.asarray(cams, np.float32)), 0.0, 1.0)
  if colormap == "jet":
    return _jet(values).astype(np.float32)
  from matplotlib import colormaps  # Only for non-default colour maps.

  if colormap not in colormaps:
    raise ValueError(f"unknown colormap {colormap!r}")
  return colormaps[colormap](values)[..., :3].astype(np.float32)


def to_unit_rgb(images) -> np.ndarray:
  """uint8 or [0, 1] float images, RGB or single-channel -> float32 RGB in [0, 1]."""
  images = np.asarray(images)
  images = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images
  images = np.clip(images.astype(np.float32), 0.0, 1.0)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return images


def _resize_maps(cams, size: tuple[int, int]) -> np.ndarray:
  cams = np.asarray(cams, np.float32)
  if cams.shape[-2:] == tuple(size):
    return cams
  flat = cams.reshape(-1, *cams.shape[-2:])
  resized = [np.asarray(Image.fromarray(m).resize(size[::-1], Image.BILINEAR)) for m in flat]
  return np.stack(resized).reshape(*cams.shape[:-2], *size)


def overlay(images, cams, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
  """Blends coloured maps over images -> uint8 RGB `(..., H, W, 3)`.

  `images`: `(..., H, W, 3 or 1)` uint8 or float in [0, 1]; `cams`: `(..., h, w)` in [0, 1],
  resized to the image size if needed. `alpha` is the weight of the colour map.
  """
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha must be in [0, 1], got {alpha}")
  rgb = to_unit_rgb(images)
  colours = colorize(_resize_maps(cams, rgb.shape[-3:-1]), colormap)
  blended = (1.0 - alpha) * rgb + alpha * colours
  return np.round(np.clip(blended, 0.0, 1.0) * 255.0).astype(np.uint8)


def write_grid(
  images,
  cams,
  path: str | None = None,
  writer=None,
  step: int = 0,
  name: str = "cams",
  alpha: float = 0.5,
  colormap: str = "jet",
  columns: int = 4,
) -> np.ndarray:
  """Writes a uint8 grid of (image | overlay) pairs, `columns` pairs per row (laid out by
  `images_grid.grid`), as a PNG at `path` and/or to a clu metric writer; returns the grid."""
  images = to_unit_rgb(images)
  if images.ndim != 4:
    raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
  pairs = np.concatenate(
    [images_grid.as_uint8(images), overlay(images, cams, alpha, colormap)], axis=2
  )
  canvas = images_grid.grid(pairs, columns=max(1, min(columns, len(pairs))), pad=0)
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    images_grid.save_png(path, canvas)
  if writer is not None:
    writer.write_images(step, {name: canvas[None]})
  return canvas
