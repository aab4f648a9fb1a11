"""Pure JAX image preprocessing: uint8 -> [0, 1], augmentation, ImageNet normalisation.

Everything here is a function of (images, key) with no host state, so it runs inside the jitted
train step on the device, after a proxy image has been swapped in for its original.
"""

import jax
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
  return images[..., top:top + size, left:left + size, :]


def paste_center(stored, crops):
  """NumPy copy of `stored` (N, L, L, C) with its centre window replaced by `crops` (N, S, S, C)."""
  out = np.array(stored, copy=True)
  size = crops.shape[-2]
  top, left = center_offset(out.shape[-3], size), center_offset(out.shape[-2], size)
  out[..., top:top + size, left:left + size, :] = crops
  return out


def rotate(image, angle_radians):
  """Rotates one (H, W, C) image about its centre, bilinear, edges extended.

  Edge extension instead of black corners keeps rotation from adding dark wedges that a CAM
  could latch on to.
  """
  height, width, _ = image.shape
  cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
  yy, xx = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                        jnp.arange(width, dtype=jnp.float32), indexing="ij")
  cos, sin = jnp.cos(angle_radians), jnp.sin(angle_radians)
  # Inverse mapping: where in the source each output pixel comes from. Positive angles turn
  # the picture counter-clockwise as displayed (like np.rot90 and PIL).
  src_y = cos * (yy - cy) + sin * (xx - cx) + cy
  src_x = -sin * (yy - cy) + cos * (xx - cx) + cx

  def channel(plane):
    return jax.scipy.ndimage.map_coordinates(plane, [src_y, src_x], order=1, mode="nearest")

  return jax.vmap(channel, in_axes=2, out_axes=2)(image)


def augment_one(image, key, flip: bool, rotation_degrees: float):
  flip_key, angle_key = jax.random.split(key)
  if flip:
    image = jnp.where(jax.random.bernoulli(flip_key), image[:, ::-1], image)
  if rotation_degrees > 0:
    limit = np.deg2rad(rotation_degrees)
    image = rotate(image, jax.random.uniform(angle_key, (), minval=-limit, maxval=limit))
  return image


def augment(images, key, flip: bool = True, rotation_degrees: float = 20.0):
  """Random horizontal flip and rotation, independently per image, on [0, 1] images."""
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(lambda im, k: augment_one(im, k, flip, rotation_degrees))(images, keys)


def train_inputs(images_uint8, key, flip: bool, rotation_degrees: float):
  """uint8 batch -> augmented, normalised model input."""
  return normalize(augment(to_unit_range(images_uint8), key, flip, rotation_degrees))


def eval_inputs(images_uint8):
  """Model input of images already at the training size (evaluation's centre crops)."""
  return normalize(to_unit_range(images_uint8))
