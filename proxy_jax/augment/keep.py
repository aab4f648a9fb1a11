"""KeepAugment (Gong et al. 2021): label-preserving augmentation that keeps the salient region.

Its paper has two variants, both on the vanilla-gradient saliency map of the un-augmented image:

  * selective-cut (`selective_cutout`, the paper's for Cutout and the default with
    `erase="cutout"`): Cutout's box is drawn again while its mean saliency is at least a
    threshold, so the cut falls on unimportant pixels. In-jit the draws are bounded: all
    `keep_tries` boxes are drawn at once and the first below the threshold is cut; if none is,
    the least salient of them is (the paper redraws without bound).
  * selective-paste (`keep_salient`, the paper's for policies, and `keep_cutout="paste_back"`):
    the wrapped augmentation runs as usual; then each image's most salient box, centred on the
    peak of its map and taken from the un-augmented image, is pasted back over the result.

The official code is not public; the threshold 0.6 on min-max-scaled saliency is the public
re-implementation's (cjf8899/KeepAugment_Pytorch, util/keep_cutout.py). Maps from
`saliency.gradient` are already min-max scaled to [0, 1].
"""

import jax
import jax.numpy as jnp

from proxy_jax.augment import erase, geometry, mix


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


def _draw_selective_cut(key, saliency, *, size: float, tries: int, threshold: float):
  """(top, left, bottom, right) per image, each (B,): the first of `tries` Cutout boxes (centre
  uniform, box clipped at the border) whose mean saliency is below `threshold`, else the least
  salient of them."""
  batch, height, width = saliency.shape
  y_key, x_key = jax.random.split(key)
  box_h, box_w = max(1, round(size * height)), max(1, round(size * width))
  top = jax.random.randint(y_key, (batch, tries), 0, height) - box_h // 2
  left = jax.random.randint(x_key, (batch, tries), 0, width) - box_w // 2
  masks = geometry.box_mask(top, left, top + box_h, left + box_w, height, width)
  counts = jnp.maximum(jnp.sum(masks, axis=(2, 3)), 1)
  means = jnp.sum(masks * saliency[:, None], axis=(2, 3)) / counts
  below = means < threshold
  pick = jnp.where(jnp.any(below, axis=1), jnp.argmax(below, axis=1), jnp.argmin(means, axis=1))
  choose = lambda values: jnp.take_along_axis(values, pick[:, None], axis=1)[:, 0]  # pylint: disable=unnecessary-lambda-assignment
  return choose(top), choose(left), choose(top) + box_h, choose(left) + box_w


def selective_cutout(
  images,
  labels,
  key,
  saliency,
  *,
  size: float,
  prob: float,
  fill: str,
  threshold: float,
  tries: int,
):
  """KeepAugment's selective-cut Cutout: a box of side `size` x image side, cut (filled with
  `fill`) with probability `prob`, where the saliency map (B, H, W) in [0, 1] is low."""
  apply_key, draw_key, fill_key = jax.random.split(key, 3)
  _, height, width, _ = images.shape
  box = _draw_selective_cut(draw_key, saliency, size=size, tries=tries, threshold=threshold)
  applied = jax.random.bernoulli(apply_key, prob, (images.shape[0],))
  mask = geometry.box_mask(*box, height, width) & applied[:, None, None]
  return jnp.where(mask[..., None], erase.fill_values(images, fill_key, fill), images), labels
