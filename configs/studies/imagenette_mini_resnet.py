"""The whole comparison in the fair-fight regime: every arm of the imagenette-mini study (the
single methods, proxy, proxy combined with CutMix, SaliencyMix and TrivialAugment with and
without skip_proxies) in the regime of the positive control, 16 arms x 3 seeds = 48 runs.

  python -m proxy_jax.study --study=configs/studies/imagenette_mini_resnet.py \
      --workdir=runs/study_imagenette_mini_resnet

Run it after the control (configs/studies/imagenette_mini_control.py) has reported: same
regime, same pilot choice, same gate. Every method takes its small-image (CIFAR-size)
references' settings (arms.SMALL_IMAGE, from the settings table in experiments/README.md).
Every comparison here is exploratory (Holm across the 15 arms); the pre-registered test is the
control's, and the report opens with it and its two follow-ups (MixUp at alpha 0.2; MixUp and
CutMix at three times the epochs) as their own reports recorded them.
"""

import dataclasses

from configs.studies import imagenette_mini_control as control
from proxy_jax.study import arms


def get_study():
  study = control.get_study()
  return dataclasses.replace(
    study,
    name="imagenette_mini_resnet",
    seeds=(0, 1, 2),
    arms=arms.thesis_arms(
      arms.thesis_proxy(arms.thesis_schedule(control.EPOCHS)), arms.SMALL_IMAGE
    ),
    hypotheses=(),
    family=(),
    controls=(
      "imagenette_mini_control",
      "imagenette_mini_control_mixup",
      "imagenette_mini_control_budget",
    ),
  )
