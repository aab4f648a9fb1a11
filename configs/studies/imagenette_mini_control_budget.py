"""Following up the positive control: do MixUp and CutMix raise test accuracy in the same regime
with three times the epochs? 3 arms x 3 seeds = 9 runs of 180 epochs (about 4 core-hours).

  python -m proxy_jax.study --study=configs/studies/imagenette_mini_control_budget.py \
      --workdir=runs/control_budget

Declared after the control's first three seeds, before any run of this file. There MixUp (alpha
1 on every batch) and CutMix (alpha 1 on half the batches) did not clearly beat the baseline,
and both fitted their own clean training split far less than the baseline did (MixUp about 81%,
CutMix about 90%, the baseline 98%): at 60 epochs of 2,700 images (about 2,500 SGD steps) the
mixing methods are still fitting, while their CIFAR references train for 200-300 epochs of
50,000 images (78,000-117,000 steps). So the question: with three times the steps, everything
else as the control (the pilot's learning rate and weight decay, chosen for the baseline at 60
epochs and kept so that only the budget changes), do they each beat the baseline? Holm over
these two comparisons. The control's verdict stands whatever this finds; three seeds detect
only large differences (the report shows how large).
"""

from configs.studies import imagenette_mini_control as control
from proxy_jax.study import arms
from proxy_jax.study.preregistration import Gate
from proxy_jax.study.spec import Study

EPOCHS = 3 * control.EPOCHS


DECLARED_WHEN = (
  "Declared after the control's seeds 0-2 had been seen (MixUp and CutMix not clearly above "
  "the baseline, and short of fitting their training split) and before any run of this file. "
  "A follow-up chosen after seeing data: exploratory"
)


def get_study():
  study = control.get_study()
  return Study(
    name="imagenette_mini_control_budget",
    description=control.REGIME.replace(f"{control.EPOCHS} epochs", f"{EPOCHS} epochs"),
    config=study.config,
    # The proxy schedule is not used here (no proxy arm) but must span the epochs.
    common={**study.common, "num_epochs": EPOCHS, "proxy.schedule": arms.thesis_schedule(EPOCHS)},
    seeds=(0, 1, 2),
    arms={arm: study.arms[arm] for arm in ("baseline", "mixup", "cutmix")},
    regime=control.REGIME.replace(f"{control.EPOCHS} epochs", f"{EPOCHS} epochs"),
    gate=Gate(min_train_accuracy=0.95, min_gap=0.15),
    hypotheses=control.HYPOTHESES,
    declared_when=DECLARED_WHEN,
    family=("mixup", "cutmix"),
    explain={"num_images": 500},
  )
