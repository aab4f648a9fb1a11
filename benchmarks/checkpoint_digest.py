r"""What checkpoint digests cost: the manifest at save and the check at restore, beside the save
and the restore themselves.

    python benchmarks/checkpoint_digest.py                       # default run and ResNet-50
    python benchmarks/checkpoint_digest.py --cases default --rounds 7

For each case it builds the run's real train state (the default config's tiny CNN; ResNet-50 at
224 px with AdamW, about 300 MB of parameters and optimizer state), then, in alternating rounds,
saves a checkpoint the way a run does (Orbax, synchronous) and times apart the save proper, the
manifest (SHA-256 of every file), the check of every file against it and the restore proper.
Prints the medians over rounds and the digest's share of each (the target: under 5% of a save).
The checkpoints go to --dir (default: a temporary folder on the workdir's kind of disk, /tmp).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import jax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # pylint: disable=wrong-import-position
from proxy_jax.run import checkpoint_files, checkpoints, train  # noqa: E402
from proxy_jax.config import settings as config_settings  # noqa: E402

CASES = {
  "default": {},
  "resnet50": {
    "model.name": "resnet50",
    "image_size": 224,
    "optimizer.name": "adamw",
    "num_classes": 1000,
  },
}


def build_state(overrides: dict):
  config = default.get_config()
  classes = overrides.get("num_classes", 10)
  for field, value in overrides.items():
    if field == "num_classes":
      continue
    section, _, name = field.rpartition(".")
    setattr(config[section] if section else config, name, value)
  config = config_settings.parse(config)
  model = train.create_model(config, classes)
  state = train.create_train_state(config, model, jax.random.key(0), 100)
  # A trained run's optimizer moments are not zeros (which would compress to nothing): every
  # float array gets random values, as incompressible as trained weights.
  keys = iter(jax.random.split(jax.random.key(1), len(jax.tree.leaves(state))))
  return jax.tree.map(
    lambda x: (
      jax.random.normal(next(keys), x.shape, x.dtype)
      if hasattr(x, "dtype") and jax.numpy.issubdtype(x.dtype, jax.numpy.floating)
      else x
    ),
    state,
  )


def one_round(state, directory: str, epoch: int) -> dict:
  ckpt = checkpoints.RunCheckpoints(directory, keep=2)
  items = {
    "state": checkpoints.ocp.args.StandardSave(state),
    "meta": checkpoints.ocp.args.JsonSave({"epoch": epoch}),
  }
  began = time.perf_counter()
  ckpt.manager.save(epoch, args=checkpoints.ocp.args.Composite(**items))
  ckpt.manager.wait_until_finished()
  saved = time.perf_counter()
  checkpoint_files.write_manifest(ckpt._epoch_dir(epoch))  # pylint: disable=protected-access
  manifested = time.perf_counter()
  ckpt._verify(epoch)  # pylint: disable=protected-access
  verified = time.perf_counter()
  ckpt._restore(epoch, state, None)  # pylint: disable=protected-access
  restored = time.perf_counter()
  ckpt.close()
  size = sum(
    os.path.getsize(os.path.join(root, name))
    for root, _, names in os.walk(ckpt._epoch_dir(epoch))
    for name in names
  )  # pylint: disable=protected-access
  return {
    "save": saved - began,
    "manifest": manifested - saved,
    "verify": verified - manifested,
    "restore": restored - verified,
    "mb": size / 1e6,
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cases", default="default,resnet50")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--dir", default="")
  args = parser.parse_args(argv)
  print(f"load average at start: {os.getloadavg()[0]:.2f}", flush=True)
  names = args.cases.split(",")
  states = {name: build_state(CASES[name]) for name in names}
  base = tempfile.mkdtemp(prefix="digest_bench_", dir=args.dir or None)
  timings = {name: [] for name in names}
  try:
    for index in range(args.rounds):  # Cases alternate within each round.
      for name in names:
        folder = os.path.join(base, f"{name}_{index}")
        timings[name].append(one_round(states[name], folder, 1))
        shutil.rmtree(folder)
  finally:
    shutil.rmtree(base, ignore_errors=True)
  print(f"medians of {args.rounds} rounds (seconds; share = digest work / the operation)")
  print(
    f"{'case':10} {'MB':>8} {'save':>8} {'manifest':>9} {'share':>7} {'restore':>8} "
    f"{'verify':>8} {'share':>7}"
  )
  for name in names:
    med = {k: statistics.median(r[k] for r in timings[name]) for k in timings[name][0]}
    print(
      f"{name:10} {med['mb']:8.1f} {med['save']:8.3f} {med['manifest']:9.3f} "
      f"{100 * med['manifest'] / med['save']:6.1f}% {med['restore']:8.3f} "
      f"{med['verify']:8.3f} {100 * med['verify'] / med['restore']:6.1f}%"
    )


if __name__ == "__main__":
  main()
