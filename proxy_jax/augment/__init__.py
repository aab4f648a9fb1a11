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

`make_augment_fn(config.augment, num_classes, image_size)` builds the whole train-time pipeline
the train step calls: crop (stored side -> image_size), flip/rotation (`geometry.flip_rotate`),
policy, erasing, mixing, normalisation, in that order, on uint8 stored images that already have
their proxies swapped in. `mix` may be a comma list:
each batch takes one of them at random (timm's switch), and mixes at all with `mix_prob`.
`check_config(config.augment)` validates every field before any compute, asking each family.
"""

import dataclasses
import functools
import os
import jax
import jax.numpy as jnp

from proxy_jax.images import preprocess
from proxy_jax.core.errors import fail_field
from proxy_jax.augment import crop, erase, geometry, keep, mix, policy, saliency

FAMILIES = {
  "policy": tuple(policy.POLICIES),
  "erase": tuple(erase.ERASERS),
  "mix": tuple(mix.METHODS),
  "keep": ("keep_salient",),
}
NONE = "none"
# KeepAugment with Cutout: its paper's selective-cut, or the selective-paste used for policies.
KEEP_CUTOUTS = ("selective_cut", "paste_back")
# CAM methods a guided mix can use; a frozen model with another head needs a class-agnostic one.
CLASS_AGNOSTIC_CAMS = ("eigencam",)
# The crop draws from its own stream of the step's augmentation key, so adding it left every
# other method's draws (and the runs made before it) unchanged.
CROP_STREAM = 0xC409


def mix_names(augment_config) -> tuple[str, ...]:
  """The `mix` field as a tuple of method names; () for "none"."""
  names = tuple(n.strip() for n in str(augment_config.mix).split(",") if n.strip())
  return () if names in ((), (NONE,)) else names


def needs_frozen_model(augment_config) -> bool:
  """Whether a guided method takes its CAM from a frozen model (`saliency_source`)."""
  guided = any(mix.SALIENCY_KIND.get(n) == "cam" for n in mix_names(augment_config))
  return guided and augment_config.saliency_source != saliency.CURRENT


def _mix_kwargs(name: str, cfg) -> dict:
  if name in ("mixup", "cutmix", "saliencymix"):
    return {"alpha": cfg.mix_alpha}
  if name == "resizemix":
    return {"scale_min": cfg.resizemix_scale_min, "scale_max": cfg.resizemix_scale_max}
  if name == "attentive_cutmix":
    return {"grid": cfg.attentive_grid, "top_k": cfg.attentive_top_k}
  if name == "snapmix":
    return {"alpha": cfg.mix_alpha, "normalize_labels": cfg.snapmix_normalize_labels}
  raise ValueError(f"unknown mix method {name!r}")


@dataclasses.dataclass(frozen=True)
class Models:
  """The models maps may come from in one step: the current one and an optional frozen one."""

  current: saliency.SaliencyModel | None = None
  frozen: saliency.SaliencyModel | None = None


def _mix_branch(name: str, cfg, models: Models):
  """One method as `(images, labels, key) -> (images, labels)`, computing its own map."""
  method = mix.METHODS[name]
  kwargs = _mix_kwargs(name, cfg)
  kind = mix.SALIENCY_KIND.get(name)

  def branch(images, labels, key):
    maps = {}
    if kind == "image":
      maps["saliency"] = saliency.image_map(cfg.saliencymix_map, images)
    elif kind == "cam":
      model = models.current if cfg.saliency_source == saliency.CURRENT else models.frozen
      targets = jnp.argmax(labels, axis=-1)
      # SnapMix's reference shifts and scales the raw class map itself.
      rectify = not (name == "snapmix" and cfg.snapmix_cam == "reference")
      maps["saliency"] = saliency.cam(model, images, targets, cfg.saliency_cam, rectify)
    return method(images, labels, key, **kwargs, **maps)

  return branch


def make_mix_fn(cfg, models: Models):
  """`mix` field -> (images, labels, key) -> (images, labels), or None for "none".

  One method per batch is drawn uniformly from the list, and the batch is mixed at all with
  probability `mix_prob` (timm's Mixup switch and mix_prob). Only the drawn branch runs.
  """
  names = mix_names(cfg)
  if not names:
    return None
  branches = [_mix_branch(name, cfg, models) for name in names]
  if len(branches) == 1 and cfg.mix_prob >= 1.0:
    return branches[0]

  def mix_fn(images, labels, key):
    apply_key, choice_key, method_key = jax.random.split(key, 3)
    choice = jax.random.randint(choice_key, (), 0, len(branches))
    index = jnp.where(jax.random.uniform(apply_key) < cfg.mix_prob, choice + 1, 0)
    identity = lambda images, labels, key: (images, labels)  # pylint: disable=unnecessary-lambda-assignment
    return jax.lax.switch(index, [identity, *branches], images, labels, method_key)

  return mix_fn


def _keep_fn(cfg, policy_fn, cut_fn, paste_fn):
  """KeepAugment `(images, labels, key, maps)`: selective-cut Cutout (after a policy with the
  salient box pasted back), or selective-paste over the whole label-preserving stage."""

  def keep_fn(images, labels, key, maps):
    if cut_fn is None:
      return paste_fn(images, labels, key, maps)
    policy_key, erase_key = jax.random.split(key)
    if policy_fn is not None:
      augmented, labels = policy_fn(images, labels, policy_key)
      images = keep.paste_back(augmented, images, keep.keep_masks(maps, cfg.keep_size))
    return cut_fn(images, labels, erase_key, maps)

  return keep_fn


def _jsd_views(cfg, jsd_views_fn, erase_fn, cut_fn, clean, soft, key, maps):
  """AugMix's two extra views, then erasing (and KeepAugment) on each; the clean view has
  neither, as the AugMix reference trains its cross-entropy on the clean image only."""
  views_key, *erase_keys = jax.random.split(key, 3)
  views = jsd_views_fn(clean, views_key)
  out = []
  for view, erase_key in zip(views, erase_keys):
    if cut_fn is not None:  # Selective-paste for the policy view, then selective-cut.
      view = keep.paste_back(view, clean, keep.keep_masks(maps, cfg.keep_size))
      view, _ = cut_fn(view, soft, erase_key, maps)
    else:
      if erase_fn is not None:
        view, _ = erase_fn(view, soft, erase_key)
      if maps is not None:
        view = keep.paste_back(view, clean, keep.keep_masks(maps, cfg.keep_size))
    out.append(view)
  return out


def _exempt_proxies(cfg, images, clean, is_proxy):
  """With `skip_proxies`, proxied examples keep their clean (flipped/rotated) image."""
  if not cfg.skip_proxies or is_proxy is None:
    return images
  return jnp.where(jnp.asarray(is_proxy, bool)[:, None, None, None], clean, images)


def make_augment_fn(augment_config, num_classes: int, image_size: int | None = None):
  """Builds `augment(images_uint8, labels, key, *, is_proxy=None, models=Models())`.

  `images_uint8` are stored images (side `data.load_size`); the crop (`augment.crop`) brings
  them to `image_size` (None: their own side). Returns (normalised model inputs float32
  (B, H, W, C), soft labels float32 (B, K)). `labels` are int class ids; `is_proxy` (B,) bool
  marks proxied examples, which with `skip_proxies` keep their cropped, flipped and rotated
  image and one-hot label (they may still be pasted into others as a partner). `models` gives
  the CAM/gradient maps their model; it is only called for when a guided method or
  KeepAugment is on.
  """
  cfg = augment_config
  policy_fn = policy.from_config(cfg)
  erase_fn = erase.from_config(cfg)

  def preserving(images, labels, key):
    policy_key, erase_key = jax.random.split(key)
    if policy_fn is not None:
      images, labels = policy_fn(images, labels, policy_key)
    if erase_fn is not None:
      images, labels = erase_fn(images, labels, erase_key)
    return images, labels

  cut_fn = selective_cut_from_config(cfg)
  keep_fn = _keep_fn(cfg, policy_fn, cut_fn, keep.keep_salient(preserving, cfg.keep_size))

  jsd_views_fn = policy.jsd_views_from_config(cfg)

  def augment(images_uint8, labels, key, *, is_proxy=None, models=Models()):
    geometry_key, preserve_key, mix_key = jax.random.split(key, 3)
    crop_fn = crop.from_config(cfg, image_size or images_uint8.shape[1])
    cropped = crop_fn(preprocess.to_unit_range(images_uint8), jax.random.fold_in(key, CROP_STREAM))
    clean = geometry.flip_rotate(cropped, geometry_key, cfg.flip, cfg.rotation_degrees)
    soft = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    maps = saliency.gradient(models.current, clean, labels) if cfg.keep_salient else None
    if jsd_views_fn is not None:
      views = _jsd_views(cfg, jsd_views_fn, erase_fn, cut_fn, clean, soft, preserve_key, maps)
      views = [_exempt_proxies(cfg, v, clean, is_proxy) for v in views]
      return preprocess.normalize(jnp.concatenate([clean, *views])), soft
    images, targets = clean, soft
    if cfg.keep_salient:
      images, targets = keep_fn(images, targets, preserve_key, maps)
    elif policy_fn is not None or erase_fn is not None:
      images, targets = preserving(images, targets, preserve_key)
    mix_fn = make_mix_fn(cfg, models)
    if mix_fn is not None:
      images, targets = mix_fn(images, targets, mix_key)
    images = _exempt_proxies(cfg, images, clean, is_proxy)
    if cfg.skip_proxies and is_proxy is not None:
      targets = jnp.where(jnp.asarray(is_proxy, bool)[:, None], soft, targets)
    return preprocess.normalize(images), targets

  return augment


def selective_cut_from_config(cfg):
  """KeepAugment's selective-cut Cutout as `(images, labels, key, saliency) -> (images,
  labels)` when KeepAugment meets Cutout with `keep_cutout="selective_cut"`; else None."""
  if not (cfg.keep_salient and cfg.erase == "cutout" and cfg.keep_cutout == "selective_cut"):
    return None
  return functools.partial(
    keep.selective_cutout,
    size=cfg.erase_size,
    prob=cfg.erase_prob,
    fill=erase.resolve_fill("cutout", cfg.erase_fill),
    threshold=cfg.keep_threshold,
    tries=cfg.keep_tries,
  )


def models_of(state, frozen_apply_fn=None, frozen=None) -> Models:
  """The step's models: the train state's (frozen for the step) and the optional frozen one."""
  frozen_model = (
    None
    if frozen is None
    else saliency.SaliencyModel(frozen_apply_fn, jax.lax.stop_gradient(frozen))
  )
  return Models(current=saliency.current_model(state), frozen=frozen_model)


def preview(state, batch, config, num_classes: int, frozen_apply_fn=None, frozen=None):
  """The train step's augmentation of one host batch with a fixed key (the run header's grid).

  Returns (normalised inputs, soft targets). `frozen_apply_fn` and `frozen` are the frozen
  saliency model's, when the config names one (the run layer loads it: `restore.load_frozen`).
  """

  def run(state, images, labels, is_proxy, frozen):
    augment_fn = make_augment_fn(config.augment, num_classes, config.image_size)
    return augment_fn(
      images,
      labels,
      jax.random.key(0),
      is_proxy=is_proxy,
      models=models_of(state, frozen_apply_fn, frozen),
    )

  return jax.jit(run)(state, batch["image"], batch["label"], batch["is_proxy"], frozen)


def jsd_weight(augment_config) -> float:
  """AugMix's Jensen-Shannon loss weight; 0.0 when off. When on, `augment` returns the clean
  batch and two AugMix views stacked, (3B, H, W, C), with the clean batch's targets."""
  return float(augment_config.augmix_jsd_weight) if augment_config.augmix_jsd else 0.0


def jensen_shannon_per_example(logits_clean, logits_aug1, logits_aug2):
  """(B,) consistency term per example, so padded rows can be masked out of the mean."""
  one = lambda a, b, c: policy.jensen_shannon_consistency(a[None], b[None], c[None])  # pylint: disable=unnecessary-lambda-assignment
  return jax.vmap(one)(logits_clean, logits_aug1, logits_aug2)


def check_config(augment_config, image_size: int | None = None) -> None:
  """Validates `config.augment` before any compute: this module's fields, then each family's."""
  cfg = augment_config
  for field in ("flip", "keep_salient", "skip_proxies"):
    if not isinstance(cfg[field], bool):
      fail_field(f"augment.{field}", cfg[field], "must be True or False")
  if (
    isinstance(cfg.rotation_degrees, bool)
    or not isinstance(cfg.rotation_degrees, (int, float))
    or not 0 <= cfg.rotation_degrees <= 180
  ):
    fail_field("augment.rotation_degrees", cfg.rotation_degrees, "must be a number in [0, 180]")
  if (
    isinstance(cfg.keep_size, bool)
    or not isinstance(cfg.keep_size, (int, float))
    or not 0 < cfg.keep_size <= 1
  ):
    fail_field(
      "augment.keep_size", cfg.keep_size, "must be in (0, 1] (a fraction of the image side)"
    )
  if cfg.keep_cutout not in KEEP_CUTOUTS:
    fail_field("augment.keep_cutout", cfg.keep_cutout, "choose one of " + ", ".join(KEEP_CUTOUTS))
  if (
    isinstance(cfg.keep_threshold, bool)
    or not isinstance(cfg.keep_threshold, (int, float))
    or not 0 < cfg.keep_threshold <= 1
  ):
    fail_field(
      "augment.keep_threshold",
      cfg.keep_threshold,
      "must be in (0, 1] (mean saliency of a box, maps in [0, 1])",
    )
  if (
    isinstance(cfg.keep_tries, bool)
    or not isinstance(cfg.keep_tries, int)
    or not 1 <= cfg.keep_tries <= 1000
  ):
    fail_field("augment.keep_tries", cfg.keep_tries, "must be an integer in [1, 1000]")
  for family in (crop, policy, erase, mix):  # Each raises ConfigError naming its field.
    family.check_config(cfg)
  if cfg.augmix_jsd and mix_names(cfg):
    fail_field(
      "augment.augmix_jsd",
      cfg.augmix_jsd,
      "cannot combine with mixing (mix must be 'none'): the AugMix "
      "consistency loss compares views of the same image with one label",
    )
  if image_size is not None and cfg.attentive_grid > image_size:
    fail_field(
      "augment.attentive_grid", cfg.attentive_grid, f"must be at most the image size ({image_size})"
    )
  _check_saliency_source(cfg)


def _check_saliency_source(cfg):
  from proxy_jax import cams  # pylint: disable=g-import-not-at-top

  if cfg.saliency_cam not in cams.formulas.ACTIVATION_FORMULAS:
    fail_field(
      "augment.saliency_cam",
      cfg.saliency_cam,
      "choose an activation-map method: " + ", ".join(cams.formulas.ACTIVATION_FORMULAS),
    )
  source = cfg.saliency_source
  if not isinstance(source, str) or not source:
    fail_field(
      "augment.saliency_source",
      cfg.saliency_source,
      "must be 'current', a trained workdir or pretrained weights",
    )
  if not needs_frozen_model(cfg):
    return
  if saliency.is_trained_workdir(source):
    return
  # Hub names ("timm/resnet18.a1_in1k") contain a slash too; paths are told by their start.
  looks_like_path = source.startswith(("/", ".", "~")) or source.endswith(".safetensors")
  if looks_like_path and not os.path.exists(source):
    fail_field(
      "augment.saliency_source",
      cfg.saliency_source,
      "no such trained workdir or pretrained weights file",
    )
  if cfg.saliency_cam not in CLASS_AGNOSTIC_CAMS:
    fail_field(
      "augment.saliency_cam",
      cfg.saliency_cam,
      f"saliency_source={source!r} is not a trained workdir, so it is "
      "taken for pretrained weights whose classifier is not this run's: use a "
      "class-agnostic method (" + ", ".join(CLASS_AGNOSTIC_CAMS) + ")",
    )
