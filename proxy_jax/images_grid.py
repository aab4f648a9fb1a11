"""The one image-grid layout (TensorBoard images, PNG files, CAM and proxy-step grids)."""

import numpy as np
from PIL import Image

from proxy_jax.io_utils import atomic_write


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
  canvas = np.full((rows * (height + pad) + pad, columns * (width + pad) + pad, channels),
                   255, np.uint8)
  for index, image in enumerate(images):
    top, left = pad + (index // columns) * (height + pad), pad + (index % columns) * (width + pad)
    canvas[top:top + height, left:left + width] = image
  return canvas


def save_png(path: str, picture) -> None:
  image = Image.fromarray(as_uint8(picture))
  atomic_write(path, lambda f: image.save(f, format="PNG"), "wb")
