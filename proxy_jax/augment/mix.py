"""Mixing augmentations: two images per example and a soft label weighted by what each gave.

Every method is a pure function

    method(images, labels, key, *, <its parameters>, saliency=None) -> (images, labels)

of float32 images (B, H, W, C) in [0, 1] and float32 soft labels (B, K). Each example's partner is
`images[perm]` with `perm` a random permutation of the batch drawn from the key, and one
lambda ~ Beta(alpha, alpha) serves the whole batch, as in the papers' reference code and timm's
default "batch" mode. The key is split the same way in every method (see `_draws`), so tests can
replay the draws; `lam=` fixes lambda instead of drawing it (tests, schedules; for SnapMix a
pair, the target box's and the crop's). The saliency-guided methods take `saliency`, a float32 (B, H, W) map of each
un-permuted image (`proxy_jax.augment.saliency` computes it); the method picks the partner's map
itself.

Label weights. MixUp, CutMix, ResizeMix, SaliencyMix and Attentive CutMix weight the two labels by
the share of the picture each image gave: for the box methods that is the pasted pixel count over
H * W, computed from the clipped box (timm's `correct_lam`), so it is exact. SnapMix weights by the
partners' CAM mass inside the boxes, which need not sum to 1 (see `snapmix`).

SaliencyMix's map is OpenCV's fine-grained saliency by default (`saliency.fine_grained`).
"""

import jax
import jax.numpy as jnp

from proxy_jax.augment import geometry
from proxy_jax.core.errors import fail_field


class Draws:
  """The random quantities of one call, in the order the key is split."""

  def __init__(self, key, batch: int, alpha: float, lam=None):
    perm_key, lam_key, box_key, extra_key = jax.random.split(key, 4)
    self.perm = jax.random.permutation(perm_key, batch)
    if lam is None:
      lam = jax.random.beta(lam_key, alpha, alpha)
    self.lam = jnp.asarray(lam, jnp.float32)
    self.box_key = box_key
    self.extra_key = extra_key


def _mix_labels(labels, partner_labels, own_weight, partner_weight):
  """own_weight, partner_weight: scalars or (B,) -> soft labels (B, K)."""
  own = jnp.reshape(own_weight, (-1, 1)).astype(jnp.float32)
  other = jnp.reshape(partner_weight, (-1, 1)).astype(jnp.float32)
  return own * labels + other * partner_labels


def pasted_share(mask):
  """Pixel share of a (..., H, W) mask, exact in float32 (an integer count over H * W)."""
  height, width = mask.shape[-2:]
  count = jnp.sum(mask, axis=(-2, -1), dtype=jnp.int32)
  return count.astype(jnp.float32) / jnp.float32(height * width)


def cutmix_box_size(lam, height: int, width: int):
  """Side lengths of a box covering about 1 - lam of the picture (CutMix's rand_bbox)."""
  cut_ratio = jnp.sqrt(1.0 - jnp.clip(lam, 0.0, 1.0))
  cut_h = jnp.floor(height * cut_ratio).astype(jnp.int32)
  cut_w = jnp.floor(width * cut_ratio).astype(jnp.int32)
  return cut_h, cut_w


def centred_box(center_y, center_x, cut_h, cut_w, height: int, width: int):
  """CutMix's box around a centre, clipped to the picture: (top, left, bottom, right)."""
  top = jnp.clip(center_y - cut_h // 2, 0, height)
  bottom = jnp.clip(center_y + cut_h // 2, 0, height)
  left = jnp.clip(center_x - cut_w // 2, 0, width)
  right = jnp.clip(center_x + cut_w // 2, 0, width)
  return top, left, bottom, right


def random_cutmix_box(key, lam, height: int, width: int):
  """Uniform centre anywhere in the picture, box clipped at the border (CutMix reference)."""
  y_key, x_key = jax.random.split(key)
  center_y = jax.random.randint(y_key, (), 0, height)
  center_x = jax.random.randint(x_key, (), 0, width)
  return centred_box(center_y, center_x, *cutmix_box_size(lam, height, width), height, width)


def _paste(images, partner_images, mask):
  """mask (H, W) or (B, H, W): True takes the partner's pixel."""
  mask = jnp.broadcast_to(mask, images.shape[:3])[..., None]
  return jnp.where(mask, partner_images, images)


def _box_coordinates(dst_box, src_box, height: int, width: int, align_corners: bool):
  """Source coordinates, for every output pixel, of a resize of `src_box` onto `dst_box`.

  Pixels outside `dst_box` get coordinates too (they are masked out by the caller); boxes are
  (top, left, bottom, right) with exclusive ends.
  """
  rows = jnp.arange(height, dtype=jnp.float32)[:, None]
  cols = jnp.arange(width, dtype=jnp.float32)[None, :]

  def axis(dst, start, end, src_start, src_end):
    dst_len = jnp.maximum(end - start, 1).astype(jnp.float32)
    src_len = jnp.maximum(src_end - src_start, 1).astype(jnp.float32)
    offset = dst - start.astype(jnp.float32)
    if align_corners:
      scale = jnp.where(dst_len > 1, (src_len - 1) / jnp.maximum(dst_len - 1, 1.0), 0.0)
      return src_start.astype(jnp.float32) + offset * scale
    return src_start.astype(jnp.float32) + (offset + 0.5) * (src_len / dst_len) - 0.5

  top, left, bottom, right = dst_box
  src_top, src_left, src_bottom, src_right = src_box
  src_y = axis(rows, top, bottom, src_top, src_bottom)
  src_x = axis(cols, left, right, src_left, src_right)
  src_y = jnp.clip(src_y, src_top.astype(jnp.float32), (src_bottom - 1).astype(jnp.float32))
  src_x = jnp.clip(src_x, src_left.astype(jnp.float32), (src_right - 1).astype(jnp.float32))
  return jnp.broadcast_to(src_y, (height, width)), jnp.broadcast_to(src_x, (height, width))


def resize_into_box(partner_images, dst_box, src_box, align_corners: bool = False):
  """Each partner's `src_box` region, resized bilinearly onto `dst_box` (same boxes for all)."""
  _, height, width, _ = partner_images.shape
  src_y, src_x = _box_coordinates(dst_box, src_box, height, width, align_corners)
  # The coordinates never leave src_box, so the edge rule never matters; "extend" is exact.
  return jax.vmap(lambda image: geometry.sample(image, src_y, src_x, geometry.EXTEND))(
    partner_images
  )


# ---------------------------------------------------------------- the methods


def mixup(images, labels, key, *, alpha: float, lam=None, saliency=None):
  """Zhang et al. 2018: x = lam x + (1 - lam) x_p, y likewise."""
  del saliency
  draws = Draws(key, images.shape[0], alpha, lam)
  lam = draws.lam
  mixed = lam * images + (1.0 - lam) * images[draws.perm]
  return mixed, _mix_labels(labels, labels[draws.perm], lam, 1.0 - lam)


def cutmix(images, labels, key, *, alpha: float, lam=None, saliency=None):
  """Yun et al. 2019: paste a box of about (1 - lam) of the picture from the partner.

  The label weight is the pasted share of the clipped box, exactly (timm's correct_lam).
  """
  del saliency
  _, height, width, _ = images.shape
  draws = Draws(key, images.shape[0], alpha, lam)
  mask = geometry.box_mask(
    *random_cutmix_box(draws.box_key, draws.lam, height, width), height, width
  )
  share = pasted_share(mask)
  mixed = _paste(images, images[draws.perm], mask)
  return mixed, _mix_labels(labels, labels[draws.perm], 1.0 - share, share)


def resizemix_box(key, height: int, width: int, scale_min: float, scale_max: float):
  """Qin et al. 2020: side scale tau ~ U(scale_min, scale_max), box anywhere fully inside."""
  scale_key, y_key, x_key = jax.random.split(key, 3)
  tau = jax.random.uniform(scale_key, (), jnp.float32, scale_min, scale_max)
  box_h = jnp.clip(jnp.round(tau * height).astype(jnp.int32), 1, height)
  box_w = jnp.clip(jnp.round(tau * width).astype(jnp.int32), 1, width)
  top = jax.random.randint(y_key, (), 0, height - box_h + 1)
  left = jax.random.randint(x_key, (), 0, width - box_w + 1)
  return top, left, top + box_h, left + box_w


def resizemix(images, labels, key, *, scale_min: float, scale_max: float, saliency=None):
  """Qin et al. 2020: the whole partner, shrunk bilinearly into a random box.

  Label weight of the partner = the box's pixel share (the paper's lambda = tau^2, exact for the
  rounded box).
  """
  del saliency
  _, height, width, _ = images.shape
  draws = Draws(key, images.shape[0], 1.0)
  box = resizemix_box(draws.box_key, height, width, scale_min, scale_max)
  whole = (jnp.int32(0), jnp.int32(0), jnp.int32(height), jnp.int32(width))
  shrunk = resize_into_box(images[draws.perm], box, whole)
  mask = geometry.box_mask(*box, height, width)
  share = pasted_share(mask)
  return _paste(images, shrunk, mask), _mix_labels(labels, labels[draws.perm], 1.0 - share, share)


def saliency_peak(saliency):
  """(B, H, W) maps -> (row, col) of each map's maximum (the first one in raster order)."""
  _, height, width = saliency.shape
  flat = jnp.argmax(saliency.reshape(saliency.shape[0], -1), axis=-1)
  return flat // width, flat % width


def saliencymix(images, labels, key, *, alpha: float, saliency, lam=None):
  """Uddin et al. 2021: CutMix whose box is centred on the partner's saliency peak.

  The reference code takes one partner's peak for the whole batch; here each example's box is
  centred on its own partner's peak (same lambda, so the same box size), which is what the
  paper describes. The pasted region comes from the same place in the partner.
  """
  _, height, width, _ = images.shape
  draws = Draws(key, images.shape[0], alpha, lam)
  center_y, center_x = saliency_peak(saliency[draws.perm])
  cut_h, cut_w = cutmix_box_size(draws.lam, height, width)
  boxes = centred_box(center_y, center_x, cut_h, cut_w, height, width)
  masks = geometry.box_mask(*boxes, height, width)
  share = pasted_share(masks)
  mixed = _paste(images, images[draws.perm], masks)
  return mixed, _mix_labels(labels, labels[draws.perm], 1.0 - share, share)


def grid_cell_scores(saliency, grid: int):
  """(B, H, W) -> (B, grid * grid) mean map value per cell; cell i spans floor(i H / grid)..."""
  _, height, width = saliency.shape
  row_cell = (jnp.arange(height) * grid) // height
  col_cell = (jnp.arange(width) * grid) // width
  rows = jax.nn.one_hot(row_cell, grid, dtype=jnp.float32)  # (H, grid)
  cols = jax.nn.one_hot(col_cell, grid, dtype=jnp.float32)  # (W, grid)
  sums = jnp.einsum(
    "bhw,hi,wj->bij", saliency.astype(jnp.float32), rows, cols, precision=jax.lax.Precision.HIGHEST
  )
  # Cells are never empty when grid <= the image side (`settings.check` insists on it).
  counts = jnp.maximum(jnp.einsum("hi,wj->ij", rows, cols), 1.0)
  return (sums / counts).reshape(saliency.shape[0], grid * grid)


def top_cells_mask(saliency, grid: int, top_k: int):
  """(B, H, W) bool masks covering each map's `top_k` highest-scoring grid cells."""
  _, height, width = saliency.shape
  _, chosen = jax.lax.top_k(grid_cell_scores(saliency, grid), top_k)
  picked = jnp.zeros((saliency.shape[0], grid * grid), bool)
  picked = jax.vmap(lambda row, idx: row.at[idx].set(True))(picked, chosen)
  picked = picked.reshape(-1, grid, grid)
  row_cell = (jnp.arange(height) * grid) // height
  col_cell = (jnp.arange(width) * grid) // width
  return picked[:, row_cell][:, :, col_cell]


def attentive_cutmix(images, labels, key, *, grid: int, top_k: int, saliency):
  """Walawalkar et al. 2020: paste the partner's `top_k` most attended cells of a grid.

  The cells are ranked by the partner's CAM averaged over each cell (the paper: a 7 x 7 grid,
  the CAM's own resolution for a 224 px ResNet-50, and k = 6). No lambda is drawn; the label
  weight is the pasted share (k / grid^2 when the grid divides the image).
  """
  draws = Draws(key, images.shape[0], 1.0)
  masks = top_cells_mask(saliency[draws.perm], grid, top_k)
  share = pasted_share(masks)
  mixed = _paste(images, images[draws.perm], masks)
  return mixed, _mix_labels(labels, labels[draws.perm], 1.0 - share, share)


def semantic_weights(saliency):
  """SnapMix's spatial weights (its reference's get_spm): each map minus its minimum, over its
  sum. A constant map has no weights (0 / 0 in the reference): it comes back all NaN, and
  `snapmix` falls back to the area share for it, as the reference does."""
  shifted = saliency - jnp.min(saliency, axis=(1, 2), keepdims=True)
  total = jnp.sum(shifted, axis=(1, 2), keepdims=True)
  return jnp.where(total > 0, shifted / jnp.where(total > 0, total, 1.0), jnp.nan)


def _box_weight(weights, mask):
  """Share of each map's weight inside the mask (the reference's box sum over sum + 1e-8)."""
  total = jnp.sum(weights, axis=(1, 2))
  return jnp.sum(weights * mask, axis=(1, 2)) / (total + 1e-8)


def snapmix(
  images, labels, key, *, alpha: float, saliency, normalize_labels: bool = False, lam=None
):
  """Huang et al. 2021 (SnapMix): a resized partner crop; labels weighted by CAM mass.

  Two boxes come from lam, lam' ~ Beta(alpha, alpha) as in CutMix: the partner's crop box
  (from lam') is resized bilinearly (align_corners, as the reference) onto the target box (from
  lam). `saliency` is each image's class activation map as the reference takes it: the raw,
  signed map (`snapmix_cam="reference"`; not ReLU'd or min-max scaled first, so an
  all-negative map weighs like any other). With w and w_p the weights of `semantic_weights`:

      rho_own = 1 - sum(w in target box),   rho_partner = sum(w_p in crop box).

  The reference trains on rho_own CE(y) + rho_partner CE(y_p), whose weights need not sum to 1
  (a crop of the partner's object pasted over background keeps both near 1); the soft label
  rho_own y + rho_partner y_p gives exactly that loss (the default). Where a map is constant
  (no weights) its rho falls back to the area share, 1 - share for rho_own and share for
  rho_partner, as the reference's NaN fallback; where a box is empty nothing is pasted and
  the labels stay. `normalize_labels=True` divides the weights by their sum (this library's
  earlier default): the ratio rho_own : rho_partner, not the scale. Same-label pairs are not
  special-cased: the soft label already puts the summed weight on the shared class (the
  reference adds the two weights to both of its terms, doubling that example's loss).
  """
  _, height, width, _ = images.shape
  draws = Draws(key, images.shape[0], alpha, None if lam is None else lam[0])
  lam_crop = jnp.asarray(
    jax.random.beta(draws.extra_key, alpha, alpha) if lam is None else lam[1], jnp.float32
  )
  crop_key, target_key = jax.random.split(draws.box_key)
  target_box = random_cutmix_box(target_key, draws.lam, height, width)
  crop_box = random_cutmix_box(crop_key, lam_crop, height, width)
  target_mask = geometry.box_mask(*target_box, height, width)
  crop_mask = geometry.box_mask(*crop_box, height, width)
  both_boxes = jnp.any(target_mask) & jnp.any(crop_mask)
  target_mask = target_mask & both_boxes
  pasted = resize_into_box(images[draws.perm], target_box, crop_box, align_corners=True)
  mixed = _paste(images, pasted, target_mask)
  weights = semantic_weights(saliency.astype(jnp.float32))
  share = pasted_share(target_mask)
  own = jnp.where(both_boxes, 1.0 - _box_weight(weights, target_mask), 1.0)
  partner = jnp.where(both_boxes, _box_weight(weights[draws.perm], crop_mask), 0.0)
  own = jnp.where(jnp.isnan(own), 1.0 - share, own)
  partner = jnp.where(jnp.isnan(partner), share, partner)
  if normalize_labels:
    total = own + partner
    valid = total > 1e-6
    own = jnp.where(valid, own / jnp.where(valid, total, 1.0), 1.0 - share)
    partner = jnp.where(valid, partner / jnp.where(valid, total, 1.0), share)
  return mixed, _mix_labels(labels, labels[draws.perm], own, partner)


# name -> (function, the config fields it takes as keyword arguments, its saliency kind)
METHODS = {
  "mixup": mixup,
  "cutmix": cutmix,
  "resizemix": resizemix,
  "saliencymix": saliencymix,
  "attentive_cutmix": attentive_cutmix,
  "snapmix": snapmix,
}
# The map each guided method needs: "image" (an image statistic, `saliencymix_map`) or "cam"
# (a model's CAM).
SALIENCY_KIND = {"saliencymix": "image", "attentive_cutmix": "cam", "snapmix": "cam"}
# SnapMix's CAM: the raw map as its reference, or ReLU + min-max first (this library's earlier).
SNAPMIX_CAMS = ("reference", "relu_minmax")
# SaliencyMix's image map (saliency.IMAGE_MAPS; named here so mix needs no saliency import).
IMAGE_MAPS = ("fine_grained", "spectral_residual")


def check(settings) -> None:
  """Validates the mixing fields of the augment settings; raises ConfigError naming the field."""
  if not isinstance(settings.mix, str):
    fail_field(
      "augment.mix", settings.mix, "must be a string: none, a method or a comma list of methods"
    )
  names = [n.strip() for n in settings.mix.split(",")]
  if names != ["none"] and (not all(names) or any(n not in METHODS for n in names)):
    fail_field(
      "augment.mix",
      settings.mix,
      "choose none, or one or more (comma-separated) of " + ", ".join(METHODS),
    )
  if len(set(names)) != len(names):
    fail_field("augment.mix", settings.mix, "lists a method twice")
  for field in ("mix_alpha", "resizemix_scale_min", "resizemix_scale_max", "mix_prob"):
    if isinstance(getattr(settings, field), bool) or not isinstance(
      getattr(settings, field), (int, float)
    ):
      fail_field(f"augment.{field}", getattr(settings, field), "must be a number")
  if not settings.mix_alpha > 0:
    fail_field(
      "augment.mix_alpha", settings.mix_alpha, "must be > 0 (the Beta distribution's parameter)"
    )
  if not 0.0 <= settings.mix_prob <= 1.0:
    fail_field("augment.mix_prob", settings.mix_prob, "must be in [0, 1]")
  if not 0.0 < settings.resizemix_scale_min <= 1.0:
    fail_field("augment.resizemix_scale_min", settings.resizemix_scale_min, "must be in (0, 1]")
  if not settings.resizemix_scale_min <= settings.resizemix_scale_max <= 1.0:
    fail_field(
      "augment.resizemix_scale_max",
      settings.resizemix_scale_max,
      "must be in [resizemix_scale_min, 1]",
    )
  for field in ("attentive_grid", "attentive_top_k"):
    if (
      isinstance(getattr(settings, field), bool)
      or not isinstance(getattr(settings, field), int)
      or getattr(settings, field) < 1
    ):
      fail_field(f"augment.{field}", getattr(settings, field), "must be a positive integer")
  if settings.attentive_top_k > settings.attentive_grid**2:
    fail_field(
      "augment.attentive_top_k",
      settings.attentive_top_k,
      f"must be at most attentive_grid^2 = {settings.attentive_grid**2}",
    )
  if not isinstance(settings.snapmix_normalize_labels, bool):
    fail_field(
      "augment.snapmix_normalize_labels", settings.snapmix_normalize_labels, "must be True or False"
    )
  if settings.snapmix_cam not in SNAPMIX_CAMS:
    fail_field(
      "augment.snapmix_cam", settings.snapmix_cam, "choose one of " + ", ".join(SNAPMIX_CAMS)
    )
  if settings.saliencymix_map not in IMAGE_MAPS:
    fail_field(
      "augment.saliencymix_map", settings.saliencymix_map, "choose one of " + ", ".join(IMAGE_MAPS)
    )
