"""The augmentation's settings: one frozen dataclass of `config.augment`'s fields that checks itself.

Each family owns its fields' checks (`crop`, `policy`, `erase`, `mix`, each `check(settings)`,
raising a ConfigError that names `augment.<field>`); `Settings` runs them all once, when it is
built, so the functions that build the pipeline (`make_augment_fn`, the families' `from_settings`)
trust what they are given and never check again while tracing.
"""

from __future__ import annotations

import dataclasses
import os

from proxy_jax.augment import crop, erase, fields, mix, policy, saliency
from proxy_jax.core.errors import fail_field

NONE = "none"
# KeepAugment with Cutout: its paper's selective-cut, or the selective-paste used for policies.
KEEP_CUTOUTS = ("selective_cut", "paste_back")
# CAM methods a guided mix can use; a frozen model with another head needs a class-agnostic one.
CLASS_AGNOSTIC_CAMS = ("eigencam",)


@dataclasses.dataclass(frozen=True)
class Settings:
  """`config.augment`, field for field (their meaning: proxy_jax/config/defaults.py)."""

  # The crop from the stored image to image_size, flip and rotation.
  crop: str
  crop_scale: tuple[float, float]
  crop_ratio: tuple[float, float]
  crop_padding: int
  crop_pad_mode: str
  flip: bool
  rotation_degrees: float
  # Label-preserving policies.
  policy: str
  randaugment_num_ops: int
  randaugment_magnitude: int
  augmix_width: int
  augmix_depth: int
  augmix_severity: float
  augmix_alpha: float
  augmix_jsd: bool
  augmix_jsd_weight: float
  # Erasing.
  erase: str
  erase_prob: float
  erase_size: float
  erase_area: tuple[float, float]
  erase_aspect: tuple[float, float]
  gridmask_ratio: float
  hide_grid: int
  hide_prob: float
  erase_fill: str
  # Mixing and the maps of the guided mixes.
  mix: str
  mix_alpha: float
  mix_prob: float
  resizemix_scale_min: float
  resizemix_scale_max: float
  attentive_grid: int
  attentive_top_k: int
  saliencymix_map: str
  snapmix_normalize_labels: bool
  snapmix_cam: str
  saliency_source: str
  saliency_cam: str
  # KeepAugment, and what proxied examples skip.
  keep_salient: bool
  keep_size: float
  keep_cutout: str
  keep_threshold: float
  keep_tries: int
  skip_proxies: bool

  def __post_init__(self):
    check(self)


def mix_names(settings) -> tuple[str, ...]:
  """The `mix` field as a tuple of method names; () for "none"."""
  names = tuple(n.strip() for n in str(settings.mix).split(",") if n.strip())
  return () if names in ((), (NONE,)) else names


def needs_frozen_model(settings) -> bool:
  """Whether a guided method takes its CAM from a frozen model (`saliency_source`)."""
  guided = any(mix.SALIENCY_KIND.get(n) == "cam" for n in mix_names(settings))
  return guided and settings.saliency_source != saliency.CURRENT


def check(settings, image_size: int | None = None) -> None:
  """ConfigError for the first augment field that cannot work: the shared fields, each family's,
  then the combinations, then (`image_size`, when given) the Attentive CutMix grid's bound."""
  _check_shared(settings)
  for family in (crop, policy, erase, mix):
    family.check(settings)
  if settings.augmix_jsd and mix_names(settings):
    fail_field(
      "augment.augmix_jsd",
      settings.augmix_jsd,
      "cannot combine with mixing (mix must be 'none'): the AugMix "
      "consistency loss compares views of the same image with one label",
    )
  _check_saliency_source(settings)
  if image_size is not None:
    check_image_size(settings, image_size)


def check_image_size(settings, image_size: int) -> None:
  """The one augment check that needs the run's image size: the Attentive CutMix grid."""
  if settings.attentive_grid > image_size:
    fail_field(
      "augment.attentive_grid",
      settings.attentive_grid,
      f"must be at most the image size ({image_size})",
    )


def _check_shared(s) -> None:
  for field in ("flip", "keep_salient", "skip_proxies"):
    if not isinstance(getattr(s, field), bool):
      fail_field(f"augment.{field}", getattr(s, field), "must be True or False")
  if not fields.is_number(s.rotation_degrees) or not 0 <= s.rotation_degrees <= 180:
    fail_field("augment.rotation_degrees", s.rotation_degrees, "must be a number in [0, 180]")
  if not fields.is_number(s.keep_size) or not 0 < s.keep_size <= 1:
    fail_field("augment.keep_size", s.keep_size, "must be in (0, 1] (a fraction of the image side)")
  if s.keep_cutout not in KEEP_CUTOUTS:
    fail_field("augment.keep_cutout", s.keep_cutout, "choose one of " + ", ".join(KEEP_CUTOUTS))
  if not fields.is_number(s.keep_threshold) or not 0 < s.keep_threshold <= 1:
    fail_field(
      "augment.keep_threshold",
      s.keep_threshold,
      "must be in (0, 1] (mean saliency of a box, maps in [0, 1])",
    )
  tries = s.keep_tries
  if isinstance(tries, bool) or not isinstance(tries, int) or not 1 <= tries <= 1000:
    fail_field("augment.keep_tries", s.keep_tries, "must be an integer in [1, 1000]")


def _check_saliency_source(s) -> None:
  from proxy_jax import cams  # pylint: disable=g-import-not-at-top

  if s.saliency_cam not in cams.formulas.ACTIVATION_FORMULAS:
    fail_field(
      "augment.saliency_cam",
      s.saliency_cam,
      "choose an activation-map method: " + ", ".join(cams.formulas.ACTIVATION_FORMULAS),
    )
  source = s.saliency_source
  if not isinstance(source, str) or not source:
    fail_field(
      "augment.saliency_source",
      source,
      "must be 'current', a trained workdir or pretrained weights",
    )
  if not needs_frozen_model(s) or saliency.is_trained_workdir(source):
    return
  # Hub names ("timm/resnet18.a1_in1k") contain a slash too; paths are told by their start.
  looks_like_path = source.startswith(("/", ".", "~")) or source.endswith(".safetensors")
  if looks_like_path and not os.path.exists(source):
    fail_field(
      "augment.saliency_source", source, "no such trained workdir or pretrained weights file"
    )
  if s.saliency_cam not in CLASS_AGNOSTIC_CAMS:
    fail_field(
      "augment.saliency_cam",
      s.saliency_cam,
      f"saliency_source={source!r} is not a trained workdir, so it is "
      "taken for pretrained weights whose classifier is not this run's: use a "
      "class-agnostic method (" + ", ".join(CLASS_AGNOSTIC_CAMS) + ")",
    )
