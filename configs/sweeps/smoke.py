"""Three very short trials on the embedded default (digits): a check that sweeps work end to end.

python -m proxy_jax.sweep --sweep=configs/sweeps/smoke.py --workdir=runs/smoke
"""

from proxy_jax.sweep import concat, product


def get_common():
  # Seconds per trial on a laptop CPU; not part of the trial names.
  return {
    "num_epochs": 2,
    "proxy.schedule": "1,p,1",
    "data.max_examples": 200,
    "image_size": 16,
    "batch_size": 32,
    "eval_batch_size": 64,
    "checkpoint_every_epochs": 1,
  }


def get_sweep():
  return concat(product(**{"proxy.enabled": [False]}), product(**{"proxy.threshold": [0.5, 0.9]}))
