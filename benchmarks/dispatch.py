r"""Does the training loop keep the device busy? Dispatch time of N train steps versus their run.

    python benchmarks/dispatch.py [--steps=12] [--repeats=5] [--model=tiny_cnn] [--image_size=32]

The loop (`train.train_epoch`) only dispatches: the step number is folded into the key inside
the jitted step and the metrics are merged on the device, so the host can enqueue step k+1
while step k runs and waits once, at the end of the epoch. Measured here on ready-made device
batches (the input pipeline excluded), the same jitted step run two ways, alternated
`--repeats` times so background load hits both alike, medians reported:

  async:  this loop's pattern; `dispatch` is the time until the Python loop returns, `total`
          until the last step's results are ready. dispatch / total well under 1 means the
          loop returns before the device finishes: no step waits on the host.
  synced: the previous loop's pattern, which read `int(state.step)` every step to fold the key
          on the host, so the host waited for each step before it could enqueue the next.

`ahead` is how many steps of device work were still queued when the loop returned, (total -
dispatch) / (time per step). The runtime bounds it: XLA:CPU lets about 30 executions be in
flight (here two per step, the step and the metrics merge), after which a dispatch waits for
the oldest; so with more steps than that the loop stays that many steps ahead, not more.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

# Runnable as `python benchmarks/<name>.py` from anywhere: the repository root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # pylint: disable=wrong-import-position
from proxy_jax.core import parallel  # pylint: disable=wrong-import-position
from proxy_jax.run import steps, train
from proxy_jax.config import settings as config_settings  # noqa: E402


def make_batches(config, count: int, sharding) -> list[dict]:
  rng = np.random.default_rng(0)
  size, batch = config.image_size, config.batch_size
  return [
    parallel.to_global(
      {
        "image": rng.integers(0, 256, (batch, size, size, 3), np.uint8),
        "label": rng.integers(0, 10, batch).astype(np.int32),
        "id": np.arange(batch, dtype=np.int32),
        "mask": np.ones(batch, np.float32),
      },
      sharding,
      batch,
    )
    for _ in range(count)
  ]


def run_async(train_fn, state, batches, key):
  started = time.perf_counter()
  totals = None
  for batch in batches:
    state, metrics = train_fn(state, batch, key)
    totals = metrics if totals is None else train.merge_metrics(totals, metrics)
  dispatched = time.perf_counter()
  jax.block_until_ready((state, totals))
  return state, dispatched - started, time.perf_counter() - started


def run_synced(train_fn, state, batches, key):
  started = time.perf_counter()
  totals = None
  for batch in batches:
    step = int(state.step)  # The host waits here for the previous step.
    state, metrics = train_fn(state, batch, jax.random.fold_in(key, step))
    totals = metrics if totals is None else train.merge_metrics(totals, metrics)
  dispatched = time.perf_counter()
  jax.block_until_ready((state, totals))
  return state, dispatched - started, time.perf_counter() - started


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=12)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--model", default="tiny_cnn")
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--batch_size", type=int, default=64)
  args = parser.parse_args()
  config = default.get_config()
  config.model.name, config.image_size, config.batch_size = (
    args.model,
    args.image_size,
    args.batch_size,
  )
  config = config_settings.parse(config)
  replicated, sharding = parallel.shardings(parallel.make_mesh())
  model = train.create_model(config, 10)
  state = jax.device_put(
    train.create_train_state(config, model, jax.random.key(0), args.steps), replicated
  )
  train_fn = steps.make_train_step(config, replicated)
  batches = make_batches(config, args.steps, sharding)
  key = jax.random.key(1)
  state, _, _ = run_async(train_fn, state, batches[:2], key)  # Compilation, excluded.
  state, _, _ = run_synced(train_fn, state, batches[:2], key)
  rows = {"async": [], "synced": []}
  for _ in range(args.repeats):
    for name, run in (("async", run_async), ("synced", run_synced)):
      state, dispatch, total = run(train_fn, state, batches, key)
      rows[name].append((dispatch, total))
  print(
    f"devices: {jax.devices()}; {args.model} at {args.image_size} px, batch "
    f"{args.batch_size}, {args.steps} steps; medians of {args.repeats} alternated runs"
  )
  median = {
    name: [statistics.median(r[i] for r in runs) for i in (0, 1)] for name, runs in rows.items()
  }
  for name, (dispatch, total) in median.items():
    print(
      f"{name:>7}: dispatch {dispatch * 1e3:8.1f} ms, total {total * 1e3:8.1f} ms, "
      f"{total / args.steps * 1e3:6.2f} ms/step, "
      f"{args.steps * args.batch_size / total:7.0f} img/s, dispatch/total "
      f"{dispatch / total:.3f}, ahead {(total - dispatch) / (total / args.steps):4.1f} steps"
    )
  ratio = statistics.median(s[1] / a[1] for a, s in zip(rows["async"], rows["synced"]))
  print(f"synced / async total time (median of per-repeat ratios): {ratio:.3f}")


if __name__ == "__main__":
  main()
