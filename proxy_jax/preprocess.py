"""Pure JAX image preprocessing: uint8 -> [0, 1] and ImageNet normalisation.

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


def eval_inputs(images_uint8):
  return normalize(to_unit_range(images_uint8))
