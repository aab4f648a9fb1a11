"""The positive control of the fair-fight regime: do MixUp and CutMix help here, as they do in
their papers? 5 arms x 5 seeds = 25 runs (experiments/README.md, "A fair fight").

  python -m proxy_jax.study --study=configs/studies/imagenette_mini_control.py \
      --workdir=runs/study_imagenette_mini_control

Needs the pilot's choice (experiments/results/imagenette_mini_pilot/chosen.json): the
baseline's learning rate and weight decay, chosen on the validation split before any arm ran.
Without it the study refuses to load. Declared here, before the runs: the regime, the gate on
the baseline (it must overfit: a regulariser needs something to fix) and the expectation that
MixUp and CutMix (at their small-image papers' settings) each raise test accuracy. Holm runs
over this study's four comparisons only. If the expectation fails, that is the first thing to
explain (implementation against the reference, recipe, budget), before any reading of proxy.
"""

from proxy_jax.study import arms
from proxy_jax.study.pilot import choice_path, read_choice
from proxy_jax.study.preregistration import Gate, Hypothesis
from proxy_jax.study.spec import Study

EPOCHS = 60  # configs/imagenette_mini_resnet.py's num_epochs, which the schedule must match.
REGIME = (
  "imagenette-mini photos (2,700 train, 300 validation carved from train/, 1,000 test "
  "from val/), ResNet-18 at base width 16 with the small-image stem, 32 px, pad-4 "
  "random crop + flip, SGD with Nesterov momentum, cosine schedule, batch 64, "
  f"{EPOCHS} epochs from scratch; learning rate and weight decay chosen by the pilot "
  "on the baseline's validation accuracy (experiments/results/imagenette_mini_pilot)."
)
# Declared before the runs: the field's direction for the mixing methods; Holm over the four
# comparisons of this study (the proxy arms without an expected direction: two-sided).
HYPOTHESES = (Hypothesis("mixup", "higher"), Hypothesis("cutmix", "higher"))
FAMILY = ("mixup", "cutmix", "proxy", "proxy+cutmix")


def control_arms() -> dict:
  """baseline, MixUp and CutMix at the small-image settings, proxy (the thesis's setting, its
  schedule scaled to the epochs) and proxy + CutMix."""
  proxy_on = {**arms.thesis_proxy(arms.thesis_schedule(EPOCHS)), "proxy.enabled": True}
  return {
    "baseline": dict(arms.BASELINE),
    "mixup": {**arms.BASELINE, **arms.SMALL_IMAGE["mixup"]},
    "cutmix": {**arms.BASELINE, **arms.SMALL_IMAGE["cutmix"]},
    "proxy": proxy_on,
    "proxy+cutmix": {**proxy_on, **arms.SMALL_IMAGE["cutmix"]},
  }


def get_study():
  return Study(
    name="imagenette_mini_control",
    description=REGIME,
    config="configs/imagenette_mini_resnet.py",
    common={"num_epochs": EPOCHS, **read_choice(choice_path("imagenette_mini_pilot"))},
    seeds=(0, 1, 2, 3, 4),
    arms=control_arms(),
    regime=REGIME,
    gate=Gate(min_train_accuracy=0.95, min_gap=0.15),
    hypotheses=HYPOTHESES,
    family=FAMILY,
    explain={"num_images": 500},
  )
