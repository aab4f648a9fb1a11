"""The arms of the thesis's study: augmentation versus and with Proxy Attention.

Every arm is the setting's baseline (flip/rotation only, no proxy steps) plus the overrides
below. The augmentation fields are those of `config.augment` (proxy_jax/augment); numbers not
given here are the library's defaults, which follow each method's paper. "Proxy + the best
label-preserving policy" is fixed before any result is seen: TrivialAugment, which matched or
beat RandAugment without tuning (Mueller & Hutter, 2021); choosing it from this study's own test
results would be selection on the test set.
"""

BASELINE = {"proxy.enabled": False}
# The thesis's proxy setting: 20% of the training set searched, pixels whose CAM is above 0.85
# scaled to 0.2, Grad-CAM++, the bank kept between steps. Its schedule, 5,p,9,p,9,p,9,p,4 over
# 36 epochs, is each study's own (scaled to the study's epochs).
THESIS_PROXY = {"proxy.subset": 0.2, "proxy.threshold": 0.85, "proxy.weight": 0.2,
                "proxy.cam_method": "gradcampp", "proxy.clear_every_step": False}
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
    "keepaugment": {"augment.erase": "cutout", "augment.erase_prob": 1.0,
                    "augment.keep_salient": True},
}
# Combined with proxy steps: stacked (a proxy image is augmented like any other) and apart.
COMBINED_WITH_PROXY = ("cutmix", "saliencymix", "trivialaugment")


def thesis_arms(proxy: dict) -> dict:
  """Arm name -> overrides. `proxy` holds the setting's proxy.* fields (schedule, subset...)."""
  proxy_on = {**proxy, "proxy.enabled": True}
  arms = {"baseline": dict(BASELINE), "proxy": dict(proxy_on)}
  for name, overrides in AUGMENTATIONS.items():
    arms[name] = {**BASELINE, **overrides}
  for name in COMBINED_WITH_PROXY:
    arms[f"proxy+{name}"] = {**proxy_on, **AUGMENTATIONS[name]}
    arms[f"proxy+{name}-skip"] = {**proxy_on, **AUGMENTATIONS[name],
                                  "augment.skip_proxies": True}
  return arms


def thesis_proxy(schedule: str) -> dict:
  """The thesis's proxy.* fields with the study's schedule."""
  return {"proxy.schedule": schedule, **THESIS_PROXY}


def baseline_and_proxy(proxy: dict) -> dict:
  """The two arms that need no augmentation field (tests, and a study before proxy_jax/augment)."""
  return {"baseline": dict(BASELINE), "proxy": {**proxy, "proxy.enabled": True}}
