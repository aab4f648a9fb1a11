"""The thesis's Proxy Attention grid: 648 proxy trials plus a no-proxy baseline, three seeds each.

  python -m proxy_jax.sweep --config=configs/dogs.py --sweep=configs/sweeps/proxy_grid.py \
      --workdir=runs/grid [--shard=$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT]

The baseline arm (proxy.enabled=False) comes first so partial results already have a reference.
Seeds vary fastest, so an interrupted sweep has complete seed groups for the arms it reached.
"""

from proxy_jax.sweep import concat, product

SEEDS = [0, 1, 2]


def get_sweep():
  baseline = product(**{"proxy.enabled": [False], "seed": SEEDS})
  proxy = product(
    **{
      "proxy.threshold": [0.6, 0.75, 0.85, 0.95],
      "proxy.weight": [0.2, 0.5, 0.8],
      "proxy.subset": [0.2, 0.5, 1.0],
      "proxy.cam_method": ["gradcam", "gradcampp", "eigencam"],
      "proxy.clear_every_step": [True, False],
      "seed": SEEDS,
    }
  )
  return concat(baseline, proxy)
