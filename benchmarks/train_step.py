r"""Training-step throughput and model FLOP utilisation (MFU) on synthetic data.

    python benchmarks/train_step.py --model resnet50 --image-size 224 --batch 256 --dtype auto
    python benchmarks/train_step.py --model resnet18 --image-size 64 --batch 64 --dtype float32

Runs the project's own jitted `train_step` and `eval_step` (the functions `main.py` trains with)
on random uint8 images, so the figure is the step alone: no input pipeline, no host work. For
each it prints images/s (median of `--windows` timed windows of `--steps` dispatched steps,
after compilation) and, where the device's peak is known, MFU = the FLOPs XLA counts in the
lowered step / step time / peak FLOP/s. The count is printed per image so it can be checked
against the model's textbook figure (ResNet-50 at 224 px: 4.1 G multiply-adds, so about 8.2
GFLOP forward per image and about 3x that for a training step).
"""

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

# Runnable as `python benchmarks/<name>.py` from anywhere: the repository root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from configs import default  # pylint: disable=wrong-import-position
from proxy_jax import models  # pylint: disable=wrong-import-position
from proxy_jax.config import settings as config_settings  # noqa: E402
from proxy_jax.run import steps, train

# Dense bf16 peak of one chip in FLOP/s (vendor figures, no sparsity): the MFU denominator.
# float32 runs are compared with the same figure (TF32/bf16 tensor cores are the ceiling).
PEAK_BF16_FLOPS = {
  "H100": 989.4e12,
  "H200": 989.4e12,
  "A100": 312e12,
  "L4": 121e12,
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5e": 197e12,
  "TPU v5p": 459e12,
  "TPU v6": 918e12,
}


def peak_flops(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  for name, flops in PEAK_BF16_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return None


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default="resnet50", choices=models.MODEL_NAMES)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--dtype", default="auto", help="auto, float32 or bfloat16")
  parser.add_argument("--steps", type=int, default=10, help="steps dispatched per window")
  parser.add_argument("--windows", type=int, default=5, help="timed windows (median)")
  parser.add_argument(
    "--peak-tflops",
    type=float,
    default=0.0,
    help="override the device's dense bf16 peak (TFLOP/s) for MFU",
  )
  return parser.parse_args(argv)


def make_config(args):
  config = default.get_config()
  config.model.name, config.image_size = args.model, args.image_size
  config.model.small_stem = "auto"
  config.dtype = args.dtype
  config.batch_size = args.batch
  return config_settings.parse(config)


def counted_flops(jitted, *example_args) -> float | None:
  """FLOPs XLA counts in the lowered (pre-optimisation) program.

  The lowered count is taken because it is backend-independent: after compilation a GPU turns
  convolutions into cuDNN custom calls whose FLOPs the compiled cost analysis omits. Where the
  backend's lowering reports no count (seen on GPU), the same program lowered for the CPU is
  counted instead.
  """

  def flops_of(lower):
    try:
      analysis = lower().cost_analysis()
    except Exception:  # pylint: disable=broad-except
      return None  # Some backends do not implement cost analysis.
    if isinstance(analysis, list):  # Older jax: one dict per computation.
      analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops") or 0) or None

  # Shapes only, so the CPU lowering is not tied to the devices the arguments live on.
  abstract = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(np.shape(x), getattr(x, "dtype", None) or np.result_type(x)),
    example_args,
  )
  return flops_of(lambda: jitted.lower(*example_args)) or flops_of(
    lambda: jitted.trace(*abstract).lower(lowering_platforms=("cpu",))
  )


def time_windows(run_window, windows: int) -> float:
  """Median seconds of one window; the first call (compilation, warm-up) is excluded."""
  run_window()
  times = []
  for _ in range(windows):
    start = time.perf_counter()
    run_window()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def synthetic_batch(args):
  rng = np.random.default_rng(0)
  shape = (args.batch, args.image_size, args.image_size, 3)
  return {
    "image": jnp.asarray(rng.integers(0, 256, shape, dtype=np.uint8)),
    "label": jnp.asarray(rng.integers(0, args.num_classes, args.batch, dtype=np.int32)),
    "mask": jnp.ones((args.batch,), jnp.float32),
  }


def main(argv=None):
  args = parse_args(argv)
  config = make_config(args)
  resolved = models.resolve_dtype(config.dtype)  # What "auto" means on this backend.
  model = train.create_model(config, args.num_classes)
  state = train.create_train_state(config, model, jax.random.key(0), steps_per_epoch=1000)
  batch = synthetic_batch(args)
  train_fn, eval_fn = steps.make_train_step(config), steps.make_eval_step()
  step_args = (batch, jax.random.key(1))
  device = jax.devices()[0]
  peak = args.peak_tflops * 1e12 if args.peak_tflops else peak_flops(device)
  print(
    f"model={args.model} image_size={args.image_size} batch={args.batch} dtype={resolved} "
    f"device={device.platform}:{getattr(device, 'device_kind', '?')} "
    f"({jax.device_count()} device(s)) peak={peak / 1e12 if peak else float('nan'):.0f} "
    "TFLOP/s bf16 dense"
  )
  train_flops = counted_flops(train_fn, state, *step_args)
  eval_flops = counted_flops(eval_fn, state, batch)

  holder = {"state": state}

  def train_window():
    current = holder["state"]
    for _ in range(args.steps):
      current, metrics = train_fn(current, *step_args)
    jax.block_until_ready(metrics)
    holder["state"] = current

  def eval_window():
    for _ in range(args.steps):
      metrics = eval_fn(holder["state"], batch)
    jax.block_until_ready(metrics)

  print(f"{'step':<6}{'images/s':>11}{'ms/step':>10}{'GFLOP/img':>11}{'TFLOP/s':>9}{'MFU':>7}")
  for name, window, flops in (
    ("train", train_window, train_flops),
    ("eval", eval_window, eval_flops),
  ):
    seconds = time_windows(window, args.windows) / args.steps
    achieved = flops / seconds if flops else float("nan")
    mfu = f"{achieved / peak:.1%}" if (peak and flops) else "n/a"
    per_image = flops / args.batch / 1e9 if flops else float("nan")
    print(
      f"{name:<6}{args.batch / seconds:>11.1f}{seconds * 1e3:>10.2f}{per_image:>11.2f}"
      f"{achieved / 1e12:>9.1f}{mfu:>7}",
      flush=True,
    )


if __name__ == "__main__":
  main()
