"""Study 3 (GPU): imagenette-mini at ResNet-18, 128 px, 36 epochs, 16 arms x 5 seeds = 80 runs.

  python -m proxy_jax.study --study=configs/studies/imagenette_mini_gpu.py \
      --workdir=runs/study_imagenette_gpu [--shard=$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT]

The CPU study (imagenette_mini.py) with a larger model, image size and budget: the same data
and split (override the paths with --set data.path=... --set data.test_path=...). The proxy
arm runs the thesis schedule 5,p,9,p,9,p,9,p,4 unscaled, with the thesis settings; bfloat16
compute with float32 parameters.
"""

import dataclasses

from configs.studies import imagenette_mini
from proxy_jax.study.arms import thesis_arms, thesis_proxy, thesis_schedule


def get_study():
  study = imagenette_mini.get_study()
  return dataclasses.replace(
      study,
      name="imagenette_mini_gpu",
      description="imagenette-mini (2,700 train, 300 val carved from train/, 1,000 test from "
                  "val/), ResNet-18 at 128 px from scratch, batch 64, 36 epochs, bfloat16, "
                  "flips and rotation 20 degrees in every arm.",
      common={**study.common, "model.name": "resnet18", "image_size": 128, "num_epochs": 36,
              "dtype": "bfloat16",
              # One checkpoint per run (~130 MB with Adam's moments): 80 runs fit the disk.
              "keep_checkpoints": 1},
      seeds=(0, 1, 2, 3, 4),
      arms=thesis_arms(thesis_proxy(thesis_schedule(36))),
      explain={"num_images": 500})
