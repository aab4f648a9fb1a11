"""Pure JAX image preprocessing: uint8 -> [0, 1], the centre crop, ImageNet normalisation.

No host state, so it runs inside the jitted steps on the device. The train-time random flip and
rotation live with the other augmentations (`proxy_jax.augment.geometry.flip_rotate`).
"""

import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def to_unit_range(images_uint8):
  return jnp.asarray(images_uint8, jnp.float32) / 255.0


def normalize(images):
  """Images in [0, 1] -> ImageNet-standardised float32."""
  return (jnp.asarray(images, jnp.float32) - IMAGENET_MEAN) / IMAGENET_STD


def denormalize(images):
  """Exact inverse of `normalize`: back to [0, 1] (not clipped)."""
  return jnp.asarray(images, jnp.float32) * IMAGENET_STD + IMAGENET_MEAN


def center_offset(stored: int, size: int) -> int:
  """torchvision CenterCrop's offset: int(round((stored - size) / 2)), Python's round."""
  return int(round((stored - size) / 2.0))


def center_crop(images, size: int):
  """The centre size x size window of (..., L, L, C) images (NumPy or JAX; a slice, no copy).

  On images stored by `data.fit_image` at side L (shorter side resized to L, centre square)
  this is the torchvision Resize(L) + CenterCrop(size) view that evaluation, the proxy step,
  CAMs and inference see. A no-op when the images already have side `size`.
  """
  top = center_offset(images.shape[-3], size)
  left = center_offset(images.shape[-2], size)
  return images[..., top : top + size, left : left + size, :]


def paste_center(stored, crops):
  """NumPy copy of `stored` (N, L, L, C) with its centre window replaced by `crops` (N, S, S, C)."""
  out = np.array(stored, copy=True)
  size = crops.shape[-2]
  top, left = center_offset(out.shape[-3], size), center_offset(out.shape[-2], size)
  out[..., top : top + size, left : left + size, :] = crops
  return out


def eval_inputs(images_uint8):
  """Model input of images already at the training size (evaluation's centre crops)."""
  return normalize(to_unit_range(images_uint8))
