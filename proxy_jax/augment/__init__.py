"""Augmentation library: every method a pure, batched, in-jit function of (images, labels, key).

Families, one file each (images float32 (B, H, W, C) in [0, 1], labels float32 (B, K) soft):

  policy.py    label-preserving policies: RandAugment, TrivialAugment, AugMix
  erase.py     label-preserving erasing: Cutout, RandomErasing, GridMask, Hide-and-Seek
  mix.py       soft-label mixing: MixUp, CutMix, ResizeMix, SaliencyMix, Attentive CutMix, SnapMix
  keep.py      KeepAugment: policy and erasing keep each image's most salient box
  saliency.py  the maps the guided methods use (OpenCV fine-grained or spectral residual, CAM,
               input gradient); fine_grained.py transcribes OpenCV's fine-grained saliency
  geometry.py  the shared warp/rotation (named edge rule), box mask, flip and rotation
  crop.py      the crop from the stored image to the training size (random resized, pad, centre)

`make_augment_fn(settings, num_classes, image_size)` builds the whole train-time pipeline
the train step calls: crop (stored side -> image_size), flip/rotation (`geometry.flip_rotate`),
policy, erasing, mixing, normalisation, in that order, on uint8 stored images that already have
their proxies swapped in. `mix` may be a comma list:
each batch takes one of them at random (timm's switch), and mixes at all with `mix_prob`.
`Settings` (settings.py) holds `config.augment`'s fields and checks them all, asking each family,
when it is built: the functions here trust the settings they are given.
"""

import dataclasses
import functools
import jax
import jax.numpy as jnp

from proxy_jax.images import preprocess
from proxy_jax.augment import crop, erase, geometry, keep, mix, policy, saliency
from proxy_jax.augment.settings import (  # noqa: F401 (the package's names)
  CLASS_AGNOSTIC_CAMS,
  KEEP_CUTOUTS,
  NONE,
  Settings,
  check,
  check_image_size,
  mix_names,
  needs_frozen_model,
)

FAMILIES = {
  "policy": tuple(policy.POLICIES),
  "erase": tuple(erase.ERASERS),
  "mix": tuple(mix.METHODS),
  "keep": ("keep_salient",),
}
# The crop draws from its own stream of the step's augmentation key: its draws and every other
# method's are independent (turning one on leaves the others' draws as they were).
CROP_STREAM = 0xC409


def crop_key(augment_key):
  """The key the crop draws its boxes from (the stream's workers crop with the same boxes)."""
  return jax.random.fold_in(augment_key, CROP_STREAM)


def _mix_kwargs(name: str, settings) -> dict:
  if name in ("mixup", "cutmix", "saliencymix"):
    return {"alpha": settings.mix_alpha}
  if name == "resizemix":
    return {"scale_min": settings.resizemix_scale_min, "scale_max": settings.resizemix_scale_max}
  if name == "attentive_cutmix":
    return {"grid": settings.attentive_grid, "top_k": settings.attentive_top_k}
  if name == "snapmix":
    return {"alpha": settings.mix_alpha, "normalize_labels": settings.snapmix_normalize_labels}
  raise ValueError(f"unknown mix method {name!r}")


@dataclasses.dataclass(frozen=True)
class Models:
  """The models maps may come from in one step: the current one and an optional frozen one."""

  current: saliency.SaliencyModel | None = None
  frozen: saliency.SaliencyModel | None = None


def _mix_branch(name: str, settings, models: Models):
  """One method as `(images, labels, key) -> (images, labels)`, computing its own map."""
  method = mix.METHODS[name]
  kwargs = _mix_kwargs(name, settings)
  kind = mix.SALIENCY_KIND.get(name)

  def branch(images, labels, key):
    maps = {}
    if kind == "image":
      maps["saliency"] = saliency.image_map(settings.saliencymix_map, images)
    elif kind == "cam":
      model = models.current if settings.saliency_source == saliency.CURRENT else models.frozen
      targets = jnp.argmax(labels, axis=-1)
      # SnapMix's reference shifts and scales the raw class map itself.
      rectify = not (name == "snapmix" and settings.snapmix_cam == "reference")
      maps["saliency"] = saliency.cam(model, images, targets, settings.saliency_cam, rectify)
    return method(images, labels, key, **kwargs, **maps)

  return branch


def make_mix_fn(settings, models: Models):
  """`mix` field -> (images, labels, key) -> (images, labels), or None for "none".

  One method per batch is drawn uniformly from the list, and the batch is mixed at all with
  probability `mix_prob` (timm's Mixup switch and mix_prob). Only the drawn branch runs.
  """
  names = mix_names(settings)
  if not names:
    return None
  branches = [_mix_branch(name, settings, models) for name in names]
  if len(branches) == 1 and settings.mix_prob >= 1.0:
    return branches[0]

  def mix_fn(images, labels, key):
    apply_key, choice_key, method_key = jax.random.split(key, 3)
    choice = jax.random.randint(choice_key, (), 0, len(branches))
    index = jnp.where(jax.random.uniform(apply_key) < settings.mix_prob, choice + 1, 0)
    identity = lambda images, labels, key: (images, labels)  # pylint: disable=unnecessary-lambda-assignment
    return jax.lax.switch(index, [identity, *branches], images, labels, method_key)

  return mix_fn


def _keep_fn(settings, policy_fn, cut_fn, paste_fn):
  """KeepAugment `(images, labels, key, maps)`: selective-cut Cutout (after a policy with the
  salient box pasted back), or selective-paste over the whole label-preserving stage."""

  def keep_fn(images, labels, key, maps):
    if cut_fn is None:
      return paste_fn(images, labels, key, maps)
    policy_key, erase_key = jax.random.split(key)
    if policy_fn is not None:
      augmented, labels = policy_fn(images, labels, policy_key)
      images = keep.paste_back(augmented, images, keep.keep_masks(maps, settings.keep_size))
    return cut_fn(images, labels, erase_key, maps)

  return keep_fn


def _jsd_views(settings, jsd_views_fn, erase_fn, cut_fn, clean, soft, key, maps):
  """AugMix's two extra views, then erasing (and KeepAugment) on each; the clean view has
  neither, as the AugMix reference trains its cross-entropy on the clean image only."""
  views_key, *erase_keys = jax.random.split(key, 3)
  views = jsd_views_fn(clean, views_key)
  out = []
  for view, erase_key in zip(views, erase_keys):
    if cut_fn is not None:  # Selective-paste for the policy view, then selective-cut.
      view = keep.paste_back(view, clean, keep.keep_masks(maps, settings.keep_size))
      view, _ = cut_fn(view, soft, erase_key, maps)
    else:
      if erase_fn is not None:
        view, _ = erase_fn(view, soft, erase_key)
      if maps is not None:
        view = keep.paste_back(view, clean, keep.keep_masks(maps, settings.keep_size))
    out.append(view)
  return out


def _exempt_proxies(settings, images, clean, is_proxy):
  """With `skip_proxies`, proxied examples keep their clean (flipped/rotated) image."""
  if not settings.skip_proxies or is_proxy is None:
    return images
  return jnp.where(jnp.asarray(is_proxy, bool)[:, None, None, None], clean, images)


def make_augment_fn(
  settings, num_classes: int, image_size: int | None = None, cropped: bool = False
):
  """Builds `augment(images_uint8, labels, key, *, is_proxy=None, models=Models())`.

  `images_uint8` are stored images (side `data.load_size`); the crop (`augment.crop`) brings
  them to `image_size` (None: their own side). `cropped`: they arrive already cropped (the
  stream's workers cut the boxes `crop.random_boxes` draws from `crop_key`), the crop is skipped. Returns (normalised model inputs float32
  (B, H, W, C), soft labels float32 (B, K)). `labels` are int class ids; `is_proxy` (B,) bool
  marks proxied examples, which with `skip_proxies` keep their cropped, flipped and rotated
  image and one-hot label (they may still be pasted into others as a partner). `models` gives
  the CAM/gradient maps their model; it is only called for when a guided method or
  KeepAugment is on.
  """
  policy_fn = policy.from_settings(settings)
  erase_fn = erase.from_settings(settings)

  def preserving(images, labels, key):
    policy_key, erase_key = jax.random.split(key)
    if policy_fn is not None:
      images, labels = policy_fn(images, labels, policy_key)
    if erase_fn is not None:
      images, labels = erase_fn(images, labels, erase_key)
    return images, labels

  cut_fn = selective_cut_from_settings(settings)
  keep_fn = _keep_fn(settings, policy_fn, cut_fn, keep.keep_salient(preserving, settings.keep_size))

  jsd_views_fn = policy.jsd_views_from_settings(settings)

  def augment(images_uint8, labels, key, *, is_proxy=None, models=Models()):
    geometry_key, preserve_key, mix_key = jax.random.split(key, 3)
    unit = preprocess.to_unit_range(images_uint8)
    if not cropped:
      unit = crop.from_settings(settings, image_size or unit.shape[1])(unit, crop_key(key))
    clean = geometry.flip_rotate(unit, geometry_key, settings.flip, settings.rotation_degrees)
    soft = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    maps = saliency.gradient(models.current, clean, labels) if settings.keep_salient else None
    if jsd_views_fn is not None:
      views = _jsd_views(settings, jsd_views_fn, erase_fn, cut_fn, clean, soft, preserve_key, maps)
      views = [_exempt_proxies(settings, v, clean, is_proxy) for v in views]
      return preprocess.normalize(jnp.concatenate([clean, *views])), soft
    images, targets = clean, soft
    if settings.keep_salient:
      images, targets = keep_fn(images, targets, preserve_key, maps)
    elif policy_fn is not None or erase_fn is not None:
      images, targets = preserving(images, targets, preserve_key)
    mix_fn = make_mix_fn(settings, models)
    if mix_fn is not None:
      images, targets = mix_fn(images, targets, mix_key)
    images = _exempt_proxies(settings, images, clean, is_proxy)
    if settings.skip_proxies and is_proxy is not None:
      targets = jnp.where(jnp.asarray(is_proxy, bool)[:, None], soft, targets)
    return preprocess.normalize(images), targets

  return augment


def selective_cut_from_settings(settings):
  """KeepAugment's selective-cut Cutout as `(images, labels, key, saliency) -> (images,
  labels)` when KeepAugment meets Cutout with `keep_cutout="selective_cut"`; else None."""
  if not (
    settings.keep_salient and settings.erase == "cutout" and settings.keep_cutout == "selective_cut"
  ):
    return None
  return functools.partial(
    keep.selective_cutout,
    size=settings.erase_size,
    prob=settings.erase_prob,
    fill=erase.resolve_fill("cutout", settings.erase_fill),
    threshold=settings.keep_threshold,
    tries=settings.keep_tries,
  )


def models_of(state, frozen_apply_fn=None, frozen=None) -> Models:
  """The step's models: the train state's (frozen for the step) and the optional frozen one."""
  frozen_model = (
    None
    if frozen is None
    else saliency.SaliencyModel(frozen_apply_fn, jax.lax.stop_gradient(frozen))
  )
  return Models(current=saliency.current_model(state), frozen=frozen_model)


def preview(
  state, batch, run_settings, num_classes: int, frozen_apply_fn=None, frozen=None, cropped=False
):
  """The train step's augmentation of one host batch with a fixed key (the run header's grid).

  Returns (normalised inputs, soft targets). `frozen_apply_fn` and `frozen` are the frozen
  saliency model's, when the settings name one (the run layer loads it: `restore.load_frozen`);
  `cropped`: the batch arrived cropped (as in `make_augment_fn`).
  """

  def run(state, images, labels, is_proxy, frozen):
    augment_fn = make_augment_fn(
      run_settings.augment, num_classes, run_settings.image_size, cropped
    )
    return augment_fn(
      images,
      labels,
      jax.random.key(0),
      is_proxy=is_proxy,
      models=models_of(state, frozen_apply_fn, frozen),
    )

  return jax.jit(run)(state, batch["image"], batch["label"], batch["is_proxy"], frozen)


def jsd_weight(settings) -> float:
  """AugMix's Jensen-Shannon loss weight; 0.0 when off. When on, `augment` returns the clean
  batch and two AugMix views stacked, (3B, H, W, C), with the clean batch's targets."""
  return float(settings.augmix_jsd_weight) if settings.augmix_jsd else 0.0


def jensen_shannon_per_example(logits_clean, logits_aug1, logits_aug2):
  """(B,) consistency term per example, so padded rows can be masked out of the mean."""
  one = lambda a, b, c: policy.jensen_shannon_consistency(a[None], b[None], c[None])  # pylint: disable=unnecessary-lambda-assignment
  return jax.vmap(one)(logits_clean, logits_aug1, logits_aug2)
