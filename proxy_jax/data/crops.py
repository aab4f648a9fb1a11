"""The training crop in the stream's workers: RandomResizedCrop from each file's own pixels.

With `data.stream_crop = "workers"` (and `augment.crop = "random_resized"`), a streamed batch
reaches the train step already cropped to `image_size`; the step skips its crop and does the
rest of the augmentation in-jit as always. The boxes are the step's own: drawn by
`augment.crop.random_boxes` from the step's key (the run layer computes them per epoch, so each
example's box follows from (seed, epoch, position), whichever worker or process crops it).

A box (top, left, h, w) is in the stored image's coordinates (side `data.load_size`, the centre
square `decode.fit_image` keeps). `decode_crop` maps it onto the original frame and cuts it from
the file's own pixels, so an original is cropped from full resolution, with JPEG decoded at the
smallest DCT scale that keeps the box at least `size` pixels (PIL `draft`: most of a JPEG's
decode cost skipped for small boxes and small training sizes). A banked proxy exists only as a
stored square; `crop_square` cuts the same box from it, so a proxy and the original it replaces
are cropped alike. Both crop first and then resize (torchvision's order, the step's
`crop.resized_crop`), PIL bilinear: on an original that is already a stored square both equal
the step's crop to within 8-bit rounding (tests/test_stream_crops.py).
"""

import io
import math

import numpy as np
from PIL import ExifTags, Image, ImageOps

from proxy_jax.data import decode

# EXIF orientations that swap width and height (the transposes and 90-degree turns).
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def upright_size(image: Image.Image) -> tuple[int, int]:
  """(width, height) of the image once its EXIF orientation is applied, before decoding it."""
  orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
  width, height = image.size
  return (height, width) if orientation in _SWAPPING_ORIENTATIONS else (width, height)


def stored_region(width: int, height: int, side: int, box) -> tuple[float, ...]:
  """(x0, y0, x1, y1) of the upright original (width x height) that a box of the stored square
  covers: `decode.fit_image`'s resize of the shorter side to `side` and centre cut, inverted."""
  new_w, new_h, left, top = decode.fit_geometry(width, height, side)
  along_x, along_y = width / new_w, height / new_h
  box_top, box_left, box_h, box_w = (int(v) for v in box)
  x0, y0 = (box_left + left) * along_x, (box_top + top) * along_y
  return (x0, y0, x0 + box_w * along_x, y0 + box_h * along_y)


def _cut_and_resize(image: Image.Image, region, size: int) -> np.ndarray:
  """`region` (float x0, y0, x1, y1) of `image` resized to size x size, PIL bilinear, the
  filter confined to the region's whole-pixel hull (crop, then resize: no pixel from beyond)."""
  x0, y0, x1, y1 = region
  hull = (
    max(0, math.floor(x0)),
    max(0, math.floor(y0)),
    min(image.width, math.ceil(x1)),
    min(image.height, math.ceil(y1)),
  )
  piece = decode.as_rgb8(image.crop(hull))
  inner = (x0 - hull[0], y0 - hull[1], x1 - hull[0], y1 - hull[1])
  return np.asarray(piece.resize((size, size), Image.BILINEAR, box=inner), np.uint8)


def decode_crop(data: bytes, side: int, box, size: int, draft: bool = True) -> np.ndarray:
  """uint8 (size, size, 3): the stored-square `box` of one image file, cut from its own pixels.

  `draft`: decode a JPEG at the smallest of its 1/1, 1/2, 1/4, 1/8 scales that still gives the
  box at least `size` pixels a side (other formats decode whole either way).
  """
  with Image.open(io.BytesIO(data)) as image:
    width, height = upright_size(image)
    region = stored_region(width, height, side, box)
    shrink = min(region[2] - region[0], region[3] - region[1]) / size
    if draft and shrink >= 2:
      image.draft(image.mode, (math.ceil(image.width / shrink), math.ceil(image.height / shrink)))
    image.load()
    upright = ImageOps.exif_transpose(image)
    along_x, along_y = upright.width / width, upright.height / height
    scaled = (region[0] * along_x, region[1] * along_y, region[2] * along_x, region[3] * along_y)
    return _cut_and_resize(upright, scaled, size)


def crop_square(square: np.ndarray, box, size: int) -> np.ndarray:
  """uint8 (size, size, 3): `box` of a stored square (a banked proxy), cut and resized."""
  box_top, box_left, box_h, box_w = (int(v) for v in box)
  region = (box_left, box_top, box_left + box_w, box_top + box_h)
  return _cut_and_resize(Image.fromarray(square), region, size)
