"""Following up the positive control's MixUp arm: is MixUp's mixing strength the reason it did
not beat the baseline in the fair-fight regime? 3 arms x 5 seeds, 5 new runs.

  python -m proxy_jax.study.reuse --study=configs/studies/imagenette_mini_control_mixup.py \
      --workdir=runs/control_mixup --from=runs/study_imagenette_mini_control
  python -m proxy_jax.study --study=configs/studies/imagenette_mini_control_mixup.py \
      --workdir=runs/control_mixup

Declared after the control's first seed showed MixUp (alpha 1 on every batch, the CIFAR
reference's setting) below the baseline with a training-split accuracy of 80% against the
baseline's 98%, and before any run of this file. MixUp's paper reports that a large alpha makes
its models underfit and that small models and short schedules gain least (Zhang et al. 2018,
Sec. 3.1, ImageNet); this regime is both (ResNet-18 at width 16, 60 epochs, 2,700 images).
So the question: does MixUp at the paper's ImageNet setting (alpha 0.2, every batch) raise test
accuracy over the baseline where alpha 1 did not? The baseline and alpha-1 arms are the
control's own runs (same code version, resolved config and compute slice: reuse them); the
control's verdict stands whatever this finds.
"""

from configs.studies import imagenette_mini_control as control
from proxy_jax.study import arms
from proxy_jax.study.preregistration import Gate, Hypothesis
from proxy_jax.study.spec import Study


DECLARED_WHEN = (
  "Declared after the control's seed 0 had been seen (MixUp at alpha 1 below the baseline) "
  "and before this study's new arm ran; its baseline and alpha-1 arms are the control's runs, "
  "which ran before it was declared. A follow-up chosen after seeing data: exploratory"
)


def get_study():
  study = control.get_study()
  return Study(
    name="imagenette_mini_control_mixup",
    description=control.REGIME,
    config=study.config,
    common=study.common,
    seeds=study.seeds,
    arms={
      "baseline": dict(arms.BASELINE),
      "mixup": {**arms.BASELINE, **arms.SMALL_IMAGE["mixup"]},
      "mixup-imagenet": {**arms.BASELINE, **arms.LARGE_IMAGE["mixup"]},
    },
    regime=control.REGIME,
    gate=Gate(min_train_accuracy=0.95, min_gap=0.15),
    hypotheses=(Hypothesis("mixup-imagenet", "higher"),),
    family=("mixup", "mixup-imagenet"),
    declared_when=DECLARED_WHEN,
    explain={"num_images": 500},
  )
