r"""Cost of each augmentation: its train step time over the plain train step's.

    python benchmarks/augment.py [--repeats=5] [--steps=3] [--cases=tiny_32,resnet18_64]
        [--methods=mixup,cutmix,...]

Targets (issue 10): label-preserving and non-guided mixing methods at most 1.10x a plain step,
CAM-guided ones (attentive_cutmix, snapmix, and KeepAugment's gradient map) at most 1.5x.
"Plain" is the default pipeline (flip/rotation and normalisation only). Every method gets its
own jitted step on the same model, state and batch; all are compiled first, then timed in
turns (plain, method 1, method 2, ..., plain, ...) `--repeats` times, `--steps` steps each, so
background load hits all alike; the table reports medians and each median's ratio to plain's.
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
from proxy_jax import augment  # pylint: disable=wrong-import-position
from proxy_jax.config import settings as config_settings  # noqa: E402
from proxy_jax.run import restore, steps, train

NUM_CLASSES = 10
CASES = {
  # name: (model, image size, batch, small stem)
  "tiny_32": ("tiny_cnn", 32, 64, "auto"),
  # The ImageNet stem (7x7/2 + max pool) keeps a CPU step to about a second.
  "resnet18_64": ("resnet18", 64, 64, "false"),
  # An accelerator-sized step (seconds per step on a CPU; pass --cases to run it).
  "resnet18_128": ("resnet18", 128, 128, "false"),
}
CPU_CASES = ("tiny_32", "resnet18_64")
GUIDED = ("attentive_cutmix", "snapmix", "keep_salient")


def method_overrides() -> dict:
  """Method name -> config.augment overrides, for every registered method."""
  methods = {}
  for name in augment.FAMILIES["policy"]:
    methods[name] = {"policy": name}
  for name in augment.FAMILIES["erase"]:
    methods[name] = {"erase": name}
  for name in augment.FAMILIES["mix"]:
    methods[name] = {"mix": name}
  first_eraser = next(iter(augment.FAMILIES["erase"]), None)
  methods["keep_salient"] = {
    "keep_salient": True,
    **({"erase": first_eraser} if first_eraser else {}),
  }
  return methods


def case_config(case: str, overrides: dict):
  model, size, batch, small_stem = CASES[case]
  config = default.get_config()
  config.model.name, config.image_size, config.batch_size = model, size, batch
  config.model.small_stem = small_stem
  for field, value in overrides.items():
    config.augment[field] = value
  return config_settings.parse(config)


def time_steps(step_fn, state, batch, num_steps: int):
  started = time.perf_counter()
  for index in range(num_steps):
    state, metrics = step_fn(state, batch, jax.random.key(index))
  jax.block_until_ready((state, metrics))
  return state, (time.perf_counter() - started) / num_steps


def measure(case: str, methods: dict, repeats: int, num_steps: int) -> dict:
  config = case_config(case, {})
  model = train.create_model(config, NUM_CLASSES)
  state = train.create_train_state(config, model, jax.random.key(0), steps_per_epoch=100)
  rng = np.random.default_rng(0)
  size, batch_size = config.image_size, config.batch_size
  batch = {
    "image": rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8),
    "label": (np.arange(batch_size) % NUM_CLASSES).astype(np.int32),
    "mask": np.ones(batch_size, np.float32),
    "is_proxy": np.zeros(batch_size, bool),
  }
  batch = jax.device_put(batch)
  step_fns = {"plain": steps.make_train_step(config)}
  for name, overrides in methods.items():
    method_config = case_config(case, overrides)
    frozen = restore.load_frozen(method_config, NUM_CLASSES)
    step_fns[name] = steps.make_train_step(method_config, frozen=frozen)
  for fn in step_fns.values():  # Compile everything before timing anything.
    state, _ = time_steps(fn, state, batch, 1)
  seconds = {name: [] for name in step_fns}
  for _ in range(repeats):
    for name, fn in step_fns.items():
      state, per_step = time_steps(fn, state, batch, num_steps)
      seconds[name].append(per_step)
  return {name: statistics.median(times) for name, times in seconds.items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--cases", default=",".join(CPU_CASES), help="of: " + ", ".join(CASES))
  parser.add_argument("--methods", default="", help="comma list (default: every method)")
  args = parser.parse_args()
  methods = method_overrides()
  if args.methods:
    methods = {name: methods[name] for name in args.methods.split(",")}
  device = jax.devices()[0]
  print(
    f"{jax.device_count()} {device.platform} device(s) ({device.device_kind}); "
    f"{args.repeats} repeats of {args.steps} steps, medians"
  )
  for case in args.cases.split(","):
    model, size, batch, _ = CASES[case]
    medians = measure(case, methods, args.repeats, args.steps)
    plain = medians["plain"]
    print(f"\n{case}: {model}, {size} px, batch {batch}")
    print(f"{'method':<18} {'ms/step':>9} {'ratio':>7} {'target':>7}")
    for name, seconds in medians.items():
      target = "" if name == "plain" else ("1.50" if name in GUIDED else "1.10")
      ratio = seconds / plain
      verdict = "" if not target else ("ok" if ratio <= float(target) else "MISSED")
      print(f"{name:<18} {seconds * 1e3:9.1f} {ratio:7.2f} {target:>7} {verdict}")


if __name__ == "__main__":
  main()
