"""Geometry shared by the augmentations: one bilinear resampler, one rotation, one box mask.

* `sample` / `warp` / `rotate`: bilinear resampling of an (H, W, C) image at the source
  point of every output pixel. `edges` names what a source point outside the image gives:
    - "black" (`BLACK`): the whole pixel is 0 (scipy.ndimage's mode="constant"); PIL's
      rotate/affine and so torchvision's RandAugment / TrivialAugment and the AugMix
      reference, which the policy ops follow (`ops.py`);
    - "extend" (`EXTEND`): the nearest edge pixel (mode="nearest"); the train-time random
      rotation (`flip_rotate`) uses it so that rotation adds no dark wedges a CAM could latch
      on to, and resizing a box (`mix.resize_into_box`) never reads outside its box anyway.
  That is the only difference between the two: inside the image both interpolate the same
  4 taps.
* `box_mask`: the half-open box [top, bottom) x [left, right) as a boolean mask, for the box
  methods (CutMix family, Cutout, RandomErasing, KeepAugment); bounds of any batch shape.
* `flip_rotate`: the random horizontal flip and rotation applied before everything else.
"""

import jax
import jax.numpy as jnp
import numpy as np

BLACK, EXTEND = "black", "extend"
EDGES = (BLACK, EXTEND)


def sample(image, src_y, src_x, edges: str):
  """Bilinear samples of one (H, W, C) image at float source grids src_y, src_x (any shape S).

  Returns (*S, C). Whole pixels are gathered (4 taps), not channel by channel: dm-pix's
  `affine_transform` interpolates over the channel axis too and ran 30-60x slower on XLA:CPU.
  """
  if edges not in EDGES:
    raise ValueError(f"edges={edges!r} is invalid: choose one of {', '.join(EDGES)}")
  height, width, _ = image.shape
  y0, x0 = jnp.floor(src_y), jnp.floor(src_x)
  wy, wx = (src_y - y0)[..., None], (src_x - x0)[..., None]

  def tap(y, x):  # Clipped: past the edge this is the edge pixel ("extend"), or has weight 0.
    return image[
      jnp.clip(y, 0, height - 1).astype(jnp.int32), jnp.clip(x, 0, width - 1).astype(jnp.int32)
    ]

  out = (1 - wy) * ((1 - wx) * tap(y0, x0) + wx * tap(y0, x0 + 1)) + wy * (
    (1 - wx) * tap(y0 + 1, x0) + wx * tap(y0 + 1, x0 + 1)
  )
  if edges == BLACK:
    inside = (src_y >= 0) & (src_y <= height - 1) & (src_x >= 0) & (src_x <= width - 1)
    out = jnp.where(inside[..., None], out, jnp.zeros((), out.dtype))
  return out


def warp(image, inverse_yx, offset_yx, edges: str):
  """Affine resampling: output pixel (y, x) reads input inverse_yx @ (y, x) + offset_yx.

  The result is clipped to [0, 1] (bilinear weights can overshoot by an ulp). Integer shifts
  and quarter turns are exact permutations.
  """
  height, width, _ = image.shape
  rows, cols = jnp.meshgrid(
    jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
  )
  inverse_yx = jnp.asarray(inverse_yx, jnp.float32)
  offset_yx = jnp.asarray(offset_yx, jnp.float32)
  src_y = inverse_yx[0, 0] * rows + inverse_yx[0, 1] * cols + offset_yx[0]
  src_x = inverse_yx[1, 0] * rows + inverse_yx[1, 1] * cols + offset_yx[1]
  return jnp.clip(sample(image, src_y, src_x, edges), 0.0, 1.0)


def rotation_matrix(radians):
  """Output -> input map (y, x rows) of a counter-clockwise turn as displayed, like PIL rotate."""
  radians = jnp.asarray(radians, jnp.float32)
  # Snap to a 2^-20 grid: float32 cos(90 deg) is -4e-8, which would push a border sample a hair
  # outside the image (black under "black"); quarter turns must stay exact permutations.
  cos, sin = (jnp.round(f(radians) * 2.0**20) / 2.0**20 for f in (jnp.cos, jnp.sin))
  return jnp.stack([jnp.stack([cos, sin]), jnp.stack([-sin, cos])])


def rotate(image, radians, edges: str):
  """Turns one (H, W, C) image counter-clockwise about its centre (PIL rotate, expand=False)."""
  height, width, _ = image.shape
  centre = jnp.array([(height - 1) / 2.0, (width - 1) / 2.0], jnp.float32)
  inverse = rotation_matrix(radians)
  return warp(image, inverse, centre - inverse @ centre, edges)


def box_mask(top, left, bottom, right, height: int, width: int):
  """(..., H, W) bool mask of rows [top, bottom) and columns [left, right).

  The bounds are ints or arrays of one shape (...); a box hanging over the border is clipped
  by the comparison itself.
  """
  top, left, bottom, right = (jnp.asarray(v)[..., None, None] for v in (top, left, bottom, right))
  rows = jnp.arange(height)[:, None]
  cols = jnp.arange(width)[None, :]
  return (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)


def flip_rotate(images, key, flip: bool = True, rotation_degrees: float = 20.0):
  """Random horizontal flip and rotation (uniform in +-rotation_degrees, edges extended),
  independently per image, on (B, H, W, C) images in [0, 1]."""

  def one(image, image_key):
    flip_key, angle_key = jax.random.split(image_key)
    if flip:
      image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
    if rotation_degrees > 0:
      limit = np.deg2rad(rotation_degrees)
      angle = jax.random.uniform(angle_key, (), minval=-limit, maxval=limit)
      image = rotate(image, angle, EXTEND)
    return image

  return jax.vmap(one)(images, jax.random.split(key, images.shape[0]))
