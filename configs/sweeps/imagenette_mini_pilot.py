"""The pilot of the fair-fight regime: the baseline alone over learning rate x weight decay x
seeds, declared before any arm runs (experiments/README.md, "A fair fight").

  python -m proxy_jax.sweep --config=configs/imagenette_mini_resnet.py \
      --sweep=configs/sweeps/imagenette_mini_pilot.py --workdir=runs/pilot_imagenette_mini
  python -m proxy_jax.study.pilot --workdir=runs/pilot_imagenette_mini \
      --out=experiments/results/imagenette_mini_pilot

(the GPU size: --config=configs/imagenette_mini_resnet.py:gpu and
--out=experiments/results/imagenette_mini_gpu_pilot). 4 x 2 settings x 2 seeds = 16 runs. The
rates bracket the CIFAR references' 0.1 at batch 128 (0.05 at this batch of 64) by a factor 2
either way; the decays are the CIFAR (5e-4) and ImageNet (1e-4) references'. The pilot tool
chooses on the validation split only; seeds vary fastest, so a partial sweep has whole settings.
"""

from proxy_jax.sweep import product

LEARNING_RATES = [0.025, 0.05, 0.1, 0.2]
WEIGHT_DECAYS = [5e-4, 1e-4]
SEEDS = [0, 1]


def get_sweep():
  return product(
    **{
      "optimizer.learning_rate": LEARNING_RATES,
      "optimizer.weight_decay": WEIGHT_DECAYS,
      "seed": SEEDS,
    }
  )
