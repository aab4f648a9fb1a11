"""KeepAugment (Gong et al. 2021): label-preserving augmentation that keeps the salient region.

The wrapped augmentation (a policy, erasing, or both) runs as usual; then each image's most
salient box, centred on the peak of its vanilla-gradient saliency map and taken from the
un-augmented image, is pasted back over the result. That is the paper's "selective-paste"
variant, which covers both of its uses: erasing can no longer remove the object's most telling
part, and a policy's colour and geometry changes leave it intact.
"""

import jax.numpy as jnp

from proxy_jax.augment import geometry, mix


def keep_box(saliency, size: float):
  """(B, H, W) maps -> (top, left, bottom, right) per image, each (B,) int32.

  The box has sides round(size * H) x round(size * W) (at least 1 pixel), is centred on the
  map's peak and shifted, not shrunk, where the peak lies near the border.
  """
  _, height, width = saliency.shape
  box_h = max(1, min(height, int(round(size * height))))
  box_w = max(1, min(width, int(round(size * width))))
  peak_y, peak_x = mix.saliency_peak(saliency)
  top = jnp.clip(peak_y - box_h // 2, 0, height - box_h)
  left = jnp.clip(peak_x - box_w // 2, 0, width - box_w)
  return top, left, top + box_h, left + box_w


def keep_masks(saliency, size: float):
  """(B, H, W) bool: True inside each image's kept box."""
  _, height, width = saliency.shape
  boxes = keep_box(saliency, size)
  return geometry.box_mask(*boxes, height, width)


def paste_back(augmented, original, masks):
  return jnp.where(masks[..., None], original, augmented)


def keep_salient(augment_fn, size: float):
  """Wraps `augment_fn(images, labels, key) -> (images, labels)`.

  The wrapper takes the saliency of the un-augmented images as an extra argument:
  `wrapped(images, labels, key, saliency) -> (images, labels)`.
  """
  def wrapped(images, labels, key, saliency):
    augmented, labels_out = augment_fn(images, labels, key)
    return paste_back(augmented, images, keep_masks(saliency, size)), labels_out
  return wrapped
