"""The one image-grid layout (TensorBoard images, PNG files, CAM and proxy-step grids), optionally
with a caption under each tile."""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from proxy_jax.core.io_utils import atomic_write


def as_uint8(images) -> np.ndarray:
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def grid(images, columns: int | None = None, pad: int = 2) -> np.ndarray:
  """(N, H, W, 3) images -> one (rows*H', columns*W', 3) uint8 picture with white gutters."""
  images = as_uint8(images)
  count, height, width, channels = images.shape
  columns = columns or int(np.ceil(np.sqrt(count)))
  rows = -(-count // columns)
  canvas = np.full(
    (rows * (height + pad) + pad, columns * (width + pad) + pad, channels), 255, np.uint8
  )
  for index, image in enumerate(images):
    top, left = pad + (index // columns) * (height + pad), pad + (index % columns) * (width + pad)
    canvas[top : top + height, left : left + width] = image
  return canvas


def save_png(path: str, picture) -> None:
  image = Image.fromarray(as_uint8(picture))
  atomic_write(path, lambda f: image.save(f, format="PNG"), "wb")


CAPTION_HEIGHT = 12


def captioned_grid(images, captions, min_tile: int = 96, pad: int = 2) -> np.ndarray:
  """Like `grid`, with each tile enlarged (nearest) to at least `min_tile` px and a line of
  text under it (e.g. the label weights of a mixed image: "3:0.62 7:0.38")."""
  images = as_uint8(images)
  scale = max(1, -(-min_tile // images.shape[2]))
  tiles = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)
  count, height, width, channels = tiles.shape
  font = ImageFont.load_default()
  framed = np.full((count, height + CAPTION_HEIGHT, width, channels), 255, np.uint8)
  for index, (tile, caption) in enumerate(zip(tiles, captions)):
    strip = Image.new("RGB", (width, CAPTION_HEIGHT), (255, 255, 255))
    ImageDraw.Draw(strip).text((1, 0), caption, fill=(0, 0, 0), font=font)
    framed[index, :height] = tile
    framed[index, height:] = np.asarray(strip)[..., :channels]
  return grid(framed, pad=pad)


def label_weights_caption(soft_label, top: int = 2, floor: float = 0.005) -> str:
  """ "3:0.62 7:0.38": the largest weights of a soft label (one entry for a plain label)."""
  soft_label = np.asarray(soft_label, np.float64)
  order = np.argsort(-soft_label, kind="stable")[:top]
  return " ".join(f"{int(c)}:{soft_label[c]:.2f}" for c in order if soft_label[c] >= floor)


TITLE_FONT_SIZE = 16


def _text_strip(width: int, height: int, text: str, size: int = TITLE_FONT_SIZE) -> np.ndarray:
  strip = Image.new("RGB", (width, height), (255, 255, 255))
  font = ImageFont.load_default(size=size)
  ImageDraw.Draw(strip).text((4, (height - size) // 2), text, fill=(0, 0, 0), font=font)
  return np.asarray(strip)


def titled_rows(rows, column_titles, row_captions, min_tile: int = 160, pad: int = 4) -> np.ndarray:
  """(N, K, H, W, 3) images -> one picture: a title over each of the K columns, then one row
  per example with its caption (e.g. its label) above it; tiles enlarged (nearest) to at least
  `min_tile` px so that a 32 px image is still readable."""
  rows = as_uint8(rows)
  count, columns, height, width, _ = rows.shape
  scale = max(1, -(-min_tile // max(height, width)))
  tile_w = width * scale
  line = TITLE_FONT_SIZE + 8
  total_w = columns * (tile_w + pad) + pad
  parts = [
    np.concatenate(
      [np.full((line, pad, 3), 255, np.uint8)]
      + [
        np.concatenate(
          [_text_strip(tile_w, line, title), np.full((line, pad, 3), 255, np.uint8)], axis=1
        )
        for title in column_titles
      ],
      axis=1,
    )
  ]
  for images, caption in zip(rows, row_captions):
    parts.append(_text_strip(total_w, line, caption, TITLE_FONT_SIZE - 2))
    tiles = np.repeat(np.repeat(images, scale, axis=1), scale, axis=2)
    parts.append(grid(tiles, columns=columns, pad=pad))
  return np.concatenate(parts, axis=0)
