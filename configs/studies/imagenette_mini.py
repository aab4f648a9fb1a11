"""Study 2: imagenette-mini real photos on the 2-core CPU, 16 arms x 3 seeds = 48 runs.

  python -m proxy_jax.study --study=configs/studies/imagenette_mini.py \
      --workdir=runs/study_imagenette_mini

`train/` (3,000 photos) is carved into train and val, the 1,000 `val/` photos are the test split.
Data paths are relative to the directory the command runs in (the repository root, with the
shared data beside it); elsewhere pass --set data.path=DIR/train --set data.test_path=DIR/val.
Model: the tiny CNN at 32 px for 10 epochs, the size whose 48 runs fit one CPU session beside
the digits study (measured on one core: 62 s per run at 32 px, 155 s at 48 px, and ResNet-18
at 32 px 145 s per epoch). The proxy arm is the thesis setting with its schedule scaled to 10
epochs (proxy steps after epochs 1, 4, 6 and 9).
"""

from proxy_jax.study.arms import thesis_arms, thesis_proxy, thesis_schedule
from proxy_jax.study.spec import Study


def get_study():
  return Study(
    name="imagenette_mini",
    description="imagenette-mini (2,700 train, 300 val carved from train/, 1,000 test from "
    "val/), tiny CNN at 32 px, batch 64, 10 epochs, flips and rotation 20 "
    "degrees in every arm.",
    config="configs/folder.py",
    common={
      "data.name": "imagenette_mini",
      "data.path": "../shared/data/imagenette-mini/train",
      "data.test_path": "../shared/data/imagenette-mini/val",
      "model.name": "tiny_cnn",
      "image_size": 32,
      "num_epochs": 10,
      "batch_size": 64,
    },
    seeds=(0, 1, 2),
    arms=thesis_arms(thesis_proxy(thesis_schedule(10))),
  )
