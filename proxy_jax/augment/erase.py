"""Erasing augmentations (label-preserving): Cutout, RandomErasing, GridMask, Hide-and-Seek.

Each method is `method(images, labels, key, *, ...) -> (images, labels)` on float32 (B, H, W, C)
images in [0, 1]; labels pass through unchanged. A method splits its key once into a draw key
and a fill key; `_draw_<method>(draw_key, shape, ...)` returns the sampled parameters (boxes,
offsets, cell choices) so a test can rebuild the exact mask in NumPy. The erased pixels take
`fill`: "dataset_mean" (the normalisation mean colour, `preprocess.IMAGENET_MEAN`: what a hole
cut in the normalised tensor, value 0 there, is in [0, 1] space), "zero" (black), "mean" (each
image's per-channel mean) or "noise" (uniform in [0, 1), drawn from the fill key).

The config's `erase_fill="paper"` (the default) gives each method its reference's fill
(`PAPER_FILLS`): Cutout's and GridMask's references cut after normalisation (the hole is the
mean colour), Hide-and-Seek's paper fills the dataset mean pixel, RandomErasing's paper draws
random values. "zero" is this library's earlier black fill.

All shapes and the method's hyper-parameters are static; the random draws are per image.
"""

import functools
import math

import jax
import jax.numpy as jnp

from proxy_jax.images import preprocess
from proxy_jax.augment import fields, geometry
from proxy_jax.core.errors import fail_field

FILLS = ("dataset_mean", "zero", "mean", "noise")
PAPER = "paper"
PAPER_FILLS = {
  "cutout": "dataset_mean",
  "random_erasing": "noise",
  "gridmask": "dataset_mean",
  "hide_and_seek": "dataset_mean",
}
ERASE_CHOICES = ("none", "cutout", "random_erasing", "gridmask", "hide_and_seek")
# RandomErasing's reference code retries a box up to 100 times until it fits the image.
RANDOM_ERASING_ATTEMPTS = 100
# GridMask's ImageNet setting draws the unit d in [96, 224) on 224-px images; scaled to the side.
GRIDMASK_UNIT_RANGE = (96 / 224, 1.0)


def fill_values(images, key, fill):
  """What erased pixels become: an array broadcastable to `images`."""
  if fill == "dataset_mean":
    return jnp.asarray(preprocess.IMAGENET_MEAN, images.dtype)
  if fill == "zero":
    return jnp.zeros((), images.dtype)
  if fill == "mean":
    return jnp.mean(images, axis=(1, 2), keepdims=True)
  if fill == "noise":
    return jax.random.uniform(key, images.shape, images.dtype)
  raise ValueError(f"fill={fill!r} is invalid: choose one of {', '.join(FILLS)}")


def _apply_mask(images, key, mask, fill):
  """Replaces the pixels where `mask` (B, H, W) is True by the fill."""
  return jnp.where(mask[..., None], fill_values(images, key, fill), images)


def _box_mask(top, left, box_height, box_width, height, width):
  """(B, H, W) mask of the boxes [top, top+h) x [left, left+w), clipped to the image."""
  return geometry.box_mask(top, left, top + box_height, left + box_width, height, width)


def _draw_cutout(key, shape, *, size, prob):
  """Centre of each box, uniform over the image (so boxes may hang over the border), and
  whether the image is erased at all."""
  batch, height, width, _ = shape
  apply_key, y_key, x_key = jax.random.split(key, 3)
  return {
    "apply": jax.random.bernoulli(apply_key, prob, (batch,)),
    "centre_y": jax.random.randint(y_key, (batch,), 0, height),
    "centre_x": jax.random.randint(x_key, (batch,), 0, width),
    "box_height": jnp.full((batch,), max(1, round(size * height)), jnp.int32),
    "box_width": jnp.full((batch,), max(1, round(size * width)), jnp.int32),
  }


def cutout(images, labels, key, *, size=0.5, prob=1.0, fill="dataset_mean"):
  """Cutout (DeVries & Taylor 2017): one box of side `size` x image side, centred anywhere."""
  draw_key, fill_key = jax.random.split(key)
  _, height, width, _ = images.shape
  draw = _draw_cutout(draw_key, images.shape, size=size, prob=prob)
  top = draw["centre_y"] - draw["box_height"] // 2
  left = draw["centre_x"] - draw["box_width"] // 2
  mask = _box_mask(top, left, draw["box_height"], draw["box_width"], height, width)
  return _apply_mask(images, fill_key, mask & draw["apply"][:, None, None], fill), labels


def _draw_random_erasing(key, shape, *, prob, area, aspect):
  """Zhong et al.'s sampling, all attempts at once: the first box that fits wins.

  Each attempt draws an area share in `area`, an aspect ratio h/w uniform in `aspect` (the
  reference code's uniform(r1, 1/r1)), rounds h and w, and fits if h < H and w < W (strictly,
  as the reference); its top-left corner is uniform over the positions that keep it inside.
  An image whose attempts all fail is left alone, as in the paper.
  """
  batch, height, width, _ = shape
  n = RANDOM_ERASING_ATTEMPTS
  apply_key, area_key, aspect_key, y_key, x_key = jax.random.split(key, 5)
  target = jax.random.uniform(area_key, (batch, n), minval=area[0], maxval=area[1])
  target = target * (height * width)
  ratio = jax.random.uniform(aspect_key, (batch, n), minval=aspect[0], maxval=aspect[1])
  box_height = jnp.round(jnp.sqrt(target * ratio)).astype(jnp.int32)
  box_width = jnp.round(jnp.sqrt(target / ratio)).astype(jnp.int32)
  fits = (box_height < height) & (box_width < width) & (box_height > 0) & (box_width > 0)
  first = jnp.argmax(fits, axis=1)
  pick = lambda values: jnp.take_along_axis(values, first[:, None], axis=1)[:, 0]
  box_height, box_width = pick(box_height), pick(box_width)
  # Uniform in [0, H - h] via a uniform float, so the bound can differ per image.
  top = jnp.floor(jax.random.uniform(y_key, (batch,)) * (height - box_height + 1))
  left = jnp.floor(jax.random.uniform(x_key, (batch,)) * (width - box_width + 1))
  return {
    "apply": jax.random.bernoulli(apply_key, prob, (batch,)) & jnp.any(fits, axis=1),
    "top": top.astype(jnp.int32),
    "left": left.astype(jnp.int32),
    "box_height": box_height,
    "box_width": box_width,
  }


def random_erasing(
  images, labels, key, *, prob=0.5, area=(0.02, 0.4), aspect=(0.3, 1 / 0.3), fill="noise"
):
  """RandomErasing (Zhong et al. 2020): with probability `prob` erase one random rectangle."""
  draw_key, fill_key = jax.random.split(key)
  _, height, width, _ = images.shape
  draw = _draw_random_erasing(draw_key, images.shape, prob=prob, area=area, aspect=aspect)
  mask = _box_mask(draw["top"], draw["left"], draw["box_height"], draw["box_width"], height, width)
  return _apply_mask(images, fill_key, mask & draw["apply"][:, None, None], fill), labels


def _draw_gridmask(key, shape, *, prob, ratio):
  """Per image: the grid unit d, the erased square side ceil(d * ratio) and the grid offsets."""
  batch, height, width, _ = shape
  side = min(height, width)
  low = max(2, math.ceil(GRIDMASK_UNIT_RANGE[0] * side))
  high = max(low + 1, math.floor(GRIDMASK_UNIT_RANGE[1] * side) + 1)
  apply_key, unit_key, y_key, x_key = jax.random.split(key, 4)
  unit = jax.random.randint(unit_key, (batch,), low, high)
  return {
    "apply": jax.random.bernoulli(apply_key, prob, (batch,)),
    "unit": unit,
    "erased": jnp.ceil(unit * ratio).astype(jnp.int32),
    # The reference draws offsets in [0, d) on a padded canvas; modulo d that is uniform too.
    "offset_y": jnp.floor(jax.random.uniform(y_key, (batch,)) * unit).astype(jnp.int32),
    "offset_x": jnp.floor(jax.random.uniform(x_key, (batch,)) * unit).astype(jnp.int32),
  }


def gridmask(images, labels, key, *, prob=1.0, ratio=0.6, fill="dataset_mean"):
  """GridMask (Chen et al. 2020), its ImageNet setting (mode 1, no rotation): a regular grid
  of erased squares, side ceil(d * ratio) every d pixels, d and the grid's offset random."""
  draw_key, fill_key = jax.random.split(key)
  _, height, width, _ = images.shape
  draw = _draw_gridmask(draw_key, images.shape, prob=prob, ratio=ratio)
  unit = draw["unit"][:, None, None]
  erased = draw["erased"][:, None, None]
  rows = (jnp.arange(height)[None, :, None] - draw["offset_y"][:, None, None]) % unit
  cols = (jnp.arange(width)[None, None, :] - draw["offset_x"][:, None, None]) % unit
  mask = (rows < erased) & (cols < erased) & draw["apply"][:, None, None]
  return _apply_mask(images, fill_key, mask, fill), labels


def _draw_hide_and_seek(key, shape, *, prob, grid, hide_prob):
  """Which of the grid x grid cells each image hides (B, grid, grid)."""
  batch = shape[0]
  apply_key, cell_key = jax.random.split(key)
  return {
    "apply": jax.random.bernoulli(apply_key, prob, (batch,)),
    "hidden": jax.random.bernoulli(cell_key, hide_prob, (batch, grid, grid)),
  }


def hide_and_seek(images, labels, key, *, prob=1.0, grid=4, hide_prob=0.5, fill="dataset_mean"):
  """Hide-and-Seek (Singh & Lee 2017): split the image into grid x grid cells and hide each
  with probability `hide_prob`. Cell of pixel (y, x) is (y * grid // H, x * grid // W), so
  sides that `grid` does not divide give cells differing by at most one pixel."""
  draw_key, fill_key = jax.random.split(key)
  _, height, width, _ = images.shape
  draw = _draw_hide_and_seek(draw_key, images.shape, prob=prob, grid=grid, hide_prob=hide_prob)
  cell_rows = jnp.arange(height) * grid // height
  cell_cols = jnp.arange(width) * grid // width
  mask = draw["hidden"][:, cell_rows][:, :, cell_cols] & draw["apply"][:, None, None]
  return _apply_mask(images, fill_key, mask, fill), labels


ERASERS = {
  "cutout": cutout,
  "random_erasing": random_erasing,
  "gridmask": gridmask,
  "hide_and_seek": hide_and_seek,
}


def _check_pair(settings, field, low, high):
  """A (min, max) pair with low < min <= max <= high."""
  value = getattr(settings, field)
  if (
    not isinstance(value, (tuple, list))
    or len(value) != 2
    or not all(fields.is_number(v) for v in value)
    or not low < value[0] <= value[1] <= high
  ):
    fail_field(
      f"augment.{field}",
      value,
      f"must be two finite numbers (min, max) with {low} < min <= max <= {high}",
    )


def check(settings):
  """Raises ConfigError (a ValueError) naming the field for any erase field that cannot work."""
  if settings.erase not in ERASE_CHOICES:
    fail_field("augment.erase", settings.erase, "choose one of " + ", ".join(ERASE_CHOICES))
  if settings.erase_fill not in (PAPER, *FILLS):
    fail_field(
      "augment.erase_fill", settings.erase_fill, "choose one of " + ", ".join((PAPER, *FILLS))
    )
  fields.check_number(settings, "erase_prob", 0.0, 1.0)
  fields.check_number(settings, "erase_size", 0.0, 1.0, low_open=True)
  _check_pair(settings, "erase_area", 0.0, 1.0)
  _check_pair(settings, "erase_aspect", 0.0, math.inf)
  fields.check_number(settings, "gridmask_ratio", 0.0, 1.0, low_open=True, high_open=True)
  fields.check_number(settings, "hide_prob", 0.0, 1.0)
  grid = settings.hide_grid
  if not isinstance(grid, int) or isinstance(grid, bool) or grid <= 0:
    fail_field("augment.hide_grid", grid, "must be a positive integer (cells per side)")


def from_settings(settings):
  """The configured eraser as `(images, labels, key) -> (images, labels)`, or None for "none"."""
  name, c = settings.erase, settings
  if name == "none":
    return None
  params = {
    "cutout": dict(size=c.erase_size, prob=c.erase_prob),
    "random_erasing": dict(
      prob=c.erase_prob, area=tuple(c.erase_area), aspect=tuple(c.erase_aspect)
    ),
    "gridmask": dict(prob=c.erase_prob, ratio=c.gridmask_ratio),
    "hide_and_seek": dict(prob=c.erase_prob, grid=c.hide_grid, hide_prob=c.hide_prob),
  }[name]
  return functools.partial(ERASERS[name], fill=resolve_fill(name, c.erase_fill), **params)


def resolve_fill(name: str, fill: str) -> str:
  """The fill an eraser uses: its paper's for "paper", else the one named."""
  return PAPER_FILLS[name] if fill == PAPER else fill
