"""Study 3 (GPU): the fair-fight recipe at the ImageNet papers' size, 16 arms x 5 seeds = 80 runs.

  python -m proxy_jax.sweep --config=configs/imagenette_mini_resnet.py:gpu \
      --sweep=configs/sweeps/imagenette_mini_pilot.py --workdir=runs/pilot_gpu
  python -m proxy_jax.study.pilot --workdir=runs/pilot_gpu \
      --out=experiments/results/imagenette_mini_gpu_pilot
  python -m proxy_jax.study --study=configs/studies/imagenette_mini_gpu.py \
      --workdir=runs/study_imagenette_gpu [--shard=$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT]

The same photos and split as the CPU studies (override the paths with --set data.path=...
--set data.test_path=...) in configs/imagenette_mini_resnet.py:gpu: ResNet-18 at its own width
from scratch, 128 px RandomResizedCrop + flip, SGD with Nesterov momentum, the learning rate and
weight decay of its own pilot (experiments/results/imagenette_mini_gpu_pilot/chosen.json; the
study refuses to load without it), 60 epochs, bfloat16. At 128 px the methods take the
ImageNet papers' settings (arms.LARGE_IMAGE, from the settings table in experiments/README.md).
The gate and the control's hypotheses (MixUp and CutMix raise test accuracy; Holm over the
control's four comparisons) are declared as in configs/studies/imagenette_mini_control.py; the
other arms are exploratory.
"""

from configs.studies import imagenette_mini_control as control
from proxy_jax.study import arms
from proxy_jax.study.pilot import choice_path, read_choice
from proxy_jax.study.preregistration import Gate
from proxy_jax.study.spec import Study

EPOCHS = 60


def get_study():
  return Study(
    name="imagenette_mini_gpu",
    description="imagenette-mini (2,700 train, 300 val carved from train/, 1,000 test from "
    "val/), ResNet-18 at 128 px from scratch, RandomResizedCrop + flip, SGD "
    f"(Nesterov), batch 64, {EPOCHS} epochs, bfloat16.",
    config="configs/imagenette_mini_resnet.py:gpu",
    common={"num_epochs": EPOCHS, **read_choice(choice_path("imagenette_mini_gpu_pilot"))},
    seeds=(0, 1, 2, 3, 4),
    arms=arms.thesis_arms(arms.thesis_proxy(arms.thesis_schedule(EPOCHS)), arms.LARGE_IMAGE),
    regime=(
      "The fair-fight regime of configs/studies/imagenette_mini_control.py at 128 px "
      "on a GPU: ResNet-18 (width 64), RandomResizedCrop + flip, the methods at "
      "their ImageNet papers' settings, learning rate and weight decay from the GPU "
      "pilot's validation accuracy."
    ),
    gate=Gate(min_train_accuracy=0.95, min_gap=0.15),
    hypotheses=control.HYPOTHESES,
    family=control.FAMILY,
    explain={"num_images": 500},
  )
