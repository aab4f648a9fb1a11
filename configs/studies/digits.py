"""Study 1: the embedded digits (tiny CNN, 32 px, 20 epochs), 16 arms x 5 seeds = 80 runs.

  python -m proxy_jax.study --study=configs/studies/digits.py --workdir=runs/study_digits

The proxy arm is the thesis setting (subset 0.2, threshold 0.85, weight 0.2, Grad-CAM++, bank
kept between steps) with its schedule 5,p,9,p,9,p,9,p,4 (36 epochs) scaled to 20 epochs.
"""

from proxy_jax.study.arms import thesis_arms, thesis_proxy, thesis_schedule
from proxy_jax.study.spec import Study


def get_study():
  return Study(
    name="digits",
    description="Embedded scikit-learn digits (1,437 train, 180 val, 180 test), tiny CNN at "
    "32 px, 20 epochs, rotation 20 degrees and no flips in every arm.",
    config="configs/default.py",
    common={"num_epochs": 20},
    seeds=(0, 1, 2, 3, 4),
    arms=thesis_arms(thesis_proxy(thesis_schedule(20))),
  )
