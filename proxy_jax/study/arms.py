"""The arms of the thesis's study: augmentation versus and with Proxy Attention.

Every arm is the setting's baseline (flip/rotation only, no proxy steps) plus the overrides
below. The augmentation fields are those of `config.augment` (proxy_jax/augment); numbers not
given here are the library's defaults, which follow each method's paper. "Proxy + the best
label-preserving policy" is fixed before any result is seen: TrivialAugment, which matched or
beat RandAugment without tuning (Mueller & Hutter, 2021); choosing it from this study's own test
results would be selection on the test set.
"""

import math

from proxy_jax.augment import paper_settings

BASELINE = {"proxy.enabled": False}
# The thesis's proxy setting: 20% of the training set searched, pixels whose CAM is above 0.85
# scaled to 0.2, Grad-CAM++, the bank kept between steps. Its schedule, 5,p,9,p,9,p,9,p,4 over
# 36 epochs, is each study's own (scaled to the study's epochs).
THESIS_PROXY = {
  "proxy.subset": 0.2,
  "proxy.threshold": 0.85,
  "proxy.weight": 0.2,
  "proxy.cam_method": "gradcampp",
  "proxy.clear_every_step": False,
}
# Each label-preserving or mixing method alone (proxy steps off).
AUGMENTATIONS = {
  "mixup": {"augment.mix": "mixup", "augment.mix_alpha": 0.2},
  "cutmix": {"augment.mix": "cutmix", "augment.mix_alpha": 1.0},
  # Cutout as its paper: every image, one square of half the image side (erase_size 0.5).
  "cutout": {"augment.erase": "cutout", "augment.erase_prob": 1.0},
  "trivialaugment": {"augment.policy": "trivialaugment"},
  "saliencymix": {"augment.mix": "saliencymix", "augment.mix_alpha": 1.0},
  "attentive_cutmix": {"augment.mix": "attentive_cutmix"},
  "snapmix": {"augment.mix": "snapmix"},
  # KeepAugment: Cutout that keeps each image's most salient region (compare with "cutout").
  "keepaugment": {
    "augment.erase": "cutout",
    "augment.erase_prob": 1.0,
    "augment.keep_salient": True,
  },
}
# Each method at its references' small-image (CIFAR-size, from scratch) and large-image
# (ImageNet) settings, from the settings table (proxy_jax/augment/paper_settings.py, shown in
# experiments/README.md): MixUp alpha 1 on every batch, CutMix alpha 1 on half the batches,
# SaliencyMix and SnapMix on half the batches, Cutout 16/32 on every image...
SMALL_IMAGE = {name: paper_settings.arm_overrides(name, "small") for name in AUGMENTATIONS}
LARGE_IMAGE = {name: paper_settings.arm_overrides(name, "large") for name in AUGMENTATIONS}
# Combined with proxy steps: stacked (a proxy image is augmented like any other) and apart.
COMBINED_WITH_PROXY = ("cutmix", "saliencymix", "trivialaugment")


def thesis_arms(proxy: dict, augmentations: dict | None = None) -> dict:
  """Arm name -> overrides. `proxy` holds the setting's proxy.* fields (schedule, subset...);
  `augmentations` replaces some of AUGMENTATIONS' settings (e.g. SMALL_IMAGE)."""
  augmentations = {**AUGMENTATIONS, **(augmentations or {})}
  proxy_on = {**proxy, "proxy.enabled": True}
  arms = {"baseline": dict(BASELINE), "proxy": dict(proxy_on)}
  for name, overrides in augmentations.items():
    arms[name] = {**BASELINE, **overrides}
  for name in COMBINED_WITH_PROXY:
    arms[f"proxy+{name}"] = {**proxy_on, **augmentations[name]}
    arms[f"proxy+{name}-skip"] = {**proxy_on, **augmentations[name], "augment.skip_proxies": True}
  return arms


def thesis_proxy(schedule: str) -> dict:
  """The thesis's proxy.* fields with the study's schedule."""
  return {"proxy.schedule": schedule, **THESIS_PROXY}


def baseline_and_proxy(proxy: dict) -> dict:
  """The two arms that need no augmentation field (tests, and a study before proxy_jax/augment)."""
  return {"baseline": dict(BASELINE), "proxy": {**proxy, "proxy.enabled": True}}


# The thesis's schedule: proxy steps after epochs 5, 14, 23 and 32 of 36.
THESIS_EPOCHS, THESIS_PROXY_AFTER = 36, (5, 14, 23, 32)


def thesis_schedule(num_epochs: int) -> str:
  """The thesis's schedule scaled to `num_epochs`: each proxy step after the same share of the
  epochs, rounded to the nearest epoch (10 -> "1,p,3,p,2,p,3,p,1", 60 -> "8,p,15,p,15,p,15,p,7")."""
  after = [int(math.floor(e * num_epochs / THESIS_EPOCHS + 0.5)) for e in THESIS_PROXY_AFTER]
  bounds = [0] + after + [num_epochs]
  if any(a >= b for a, b in zip(bounds, bounds[1:])):
    raise ValueError(f"{num_epochs} epochs are too few for four distinct proxy steps")
  return ",p,".join(str(b - a) for a, b in zip(bounds, bounds[1:]))
