"""The answer, powered: does Proxy Attention change test accuracy in the fair-fight regime, alone
and on top of MixUp? 5 arms x 16 fresh seeds = 80 runs, declared here before any of them ran.

  python -m proxy_jax.study --study=configs/studies/imagenette_mini_powered.py \
      --workdir=runs/study_imagenette_mini_powered --parallel=2

Regime: the declared 60-epoch fair-fight regime (configs/imagenette_mini_resnet.py with the
pilot's learning rate and weight decay, experiments/results/imagenette_mini_pilot), unchanged,
one code version and one compute slice (one CPU core per trial) for every run.

Seeds 5-20: none of them was used by any earlier run of this project (the pilot used 0-1, the
control and its follow-ups 0-4, the comparison 0-2), so nothing about them has been seen.

Arms: `baseline`; `proxy` (the thesis's setting: subset 0.2, threshold 0.85, weight 0.2,
Grad-CAM++, bank kept; its schedule 5,p,9,p,9,p,9,p,4 scaled to 60 epochs as in the control:
8,p,15,p,15,p,15,p,7); `mixup` (alpha 0.2 on every batch, MixUp's ImageNet setting, the positive
control); `proxy+mixup` (the combination, compared with `mixup`); `proxy-all` (the same proxy
steps over every wrong image, subset 1.0: the dose arm, exploratory, outside every test).

Hypotheses (Holm over these three, alpha 0.05): proxy differs from baseline (two-sided: the
primary test); mixup is higher than baseline (one-sided: the positive control); proxy+mixup
differs from mixup (two-sided). Equivalence: a TOST of proxy against baseline within +-1.0 point
of test accuracy, each one-sided test at alpha 0.05 (outside the Holm family). The rule: if
mixup does not hold, the positive control has failed and the study is declared uninformative
about the others; the report says so first.

Power, computed before the runs (`power.declared_detectable`, `stats.tost_power`) from the
standard deviations of paired test-accuracy differences the control studies observed (5 seeds
each; tests/test_study_files.py recomputes them from the committed results):
  proxy - baseline         sd 0.94 points (imagenette_mini_control)
  mixup - baseline         sd 1.49 points (imagenette_mini_control_mixup, alpha 0.2)
  proxy+mixup - mixup      sd 2.28 points: never run; the largest sd of the control's paired
                           differences (its MixUp alpha 1), as a cautious stand-in
With 16 seeds, at Holm's strictest level (0.05 / 3), 80% power:
  proxy vs baseline (two-sided)       detects 0.84 points  (1.31 at the sd's 80% upper
                                                              confidence bound, 1.46 points)
  mixup vs baseline (one-sided)       detects 1.20 points  (1.87 at its upper bound)
  proxy+mixup vs mixup (two-sided)    detects 2.04 points  (3.18 at its upper bound)
  TOST of proxy within +-1 point      power 0.98 at a true difference of 0 (0.66 at the upper
                                      bound)
The primary test detects well under 1.5 points, also at the pessimistic spread, so n = 16
stands. The study spends about 12-13 core-hours (80 runs of 9-10 core-minutes).
"""

from configs.studies import imagenette_mini_control as control
from proxy_jax.study import arms
from proxy_jax.study.power import Equivalence, Power
from proxy_jax.study.preregistration import Gate, Hypothesis
from proxy_jax.study.spec import Study

SEEDS = tuple(range(5, 21))
MIXUP = arms.LARGE_IMAGE["mixup"]  # alpha 0.2 on every batch: the control's follow-up setting.
SPREADS_FROM = (
  "the control studies' paired test-accuracy differences over seeds 0-4 "
  "(imagenette_mini_control: proxy; imagenette_mini_control_mixup: mixup at alpha "
  "0.2; proxy+mixup - mixup never ran: the control's largest sd, MixUp alpha 1)"
)


def powered_arms() -> dict:
  proxy_on = {**arms.thesis_proxy(arms.thesis_schedule(control.EPOCHS)), "proxy.enabled": True}
  return {
    "baseline": dict(arms.BASELINE),
    "proxy": proxy_on,
    "mixup": {**arms.BASELINE, **MIXUP},
    "proxy+mixup": {**proxy_on, **MIXUP},
    "proxy-all": {**proxy_on, "proxy.subset": 1.0},
  }


def get_study():
  study = control.get_study()
  return Study(
    name="imagenette_mini_powered",
    description=control.REGIME,
    config=study.config,
    common=study.common,
    seeds=SEEDS,
    arms=powered_arms(),
    regime=control.REGIME,
    gate=Gate(min_train_accuracy=0.95, min_gap=0.15),
    hypotheses=(
      Hypothesis("proxy", "differs"),
      Hypothesis("mixup", "higher"),
      Hypothesis("proxy+mixup", "differs", against="mixup"),
    ),
    family=("proxy", "mixup", "proxy+mixup"),
    control_arms=("mixup",),
    equivalence=(Equivalence("proxy", margin=0.01, alpha=0.05),),
    power=Power(
      source=SPREADS_FROM,
      std={"proxy": 0.0094, "mixup": 0.0149, "proxy+mixup": 0.0228},
      detectable={"proxy": 0.0084, "mixup": 0.0120, "proxy+mixup": 0.0204},
      equivalence_power={"proxy": 0.98},
    ),
    explain={"num_images": 500},
  )
