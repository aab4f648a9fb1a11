"""CAM throughput against a plain forward pass of the same model and batch.

    python benchmarks/cams.py --model resnet18 --image-size 224 --batch 16
    python benchmarks/cams.py --model resnet18 --image-size 64 --batch 64 --methods gradcam,scorecam

For each method: images/s and the ratio (CAM time / forward time), each the median of several
timed runs after compilation, all measured in one process. Multi-pass methods (Score-CAM, the
SmoothGrad family, Integrated Gradients) are timed `--slow-reps` times only.
"""

import argparse
import os
import statistics
import sys
import time

import jax

# Runnable as `python benchmarks/<name>.py` from anywhere: the repository root on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from proxy_jax import cams, models  # pylint: disable=wrong-import-position


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet18", choices=models.MODEL_NAMES)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--batch", type=int, default=16)
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--dtype", default="float32", choices=models.DTYPE_CHOICES)
  parser.add_argument(
    "--methods",
    default=",".join(cams.METHODS),
    help="comma-separated subset of: " + ", ".join(cams.METHODS),
  )
  parser.add_argument("--reps", type=int, default=7, help="timed runs per cheap method")
  parser.add_argument("--slow-reps", type=int, default=1, help="timed runs per multi-pass method")
  # Defaults keep every model call at the forward pass's batch size: a like-for-like
  # comparison, and multi-pass methods stay within the forward pass's memory.
  parser.add_argument("--chunk-size", type=int, default=0, help="0 = --batch")
  parser.add_argument("--inner-chunk-size", type=int, default=0, help="0 = min(--batch, 32)")
  parser.add_argument("--num-samples", type=int, default=16, help="SmoothGrad/VarGrad samples")
  parser.add_argument("--steps", type=int, default=32, help="Integrated Gradients steps")
  args = parser.parse_args(argv)
  args.chunk_size = args.chunk_size or args.batch
  args.inner_chunk_size = args.inner_chunk_size or min(args.batch, 32)
  args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  for method in args.methods:
    cams.check_method(method)
  return args


def paired_medians(forward, cam, reps: int) -> tuple[float, float]:
  """Median seconds of `forward()` and `cam()` over `reps` alternating runs, after compiling.

  Alternating the two keeps the ratio fair on a shared machine: a burst of load from another
  process slows both sides of a pair, not just one method.
  """
  jax.block_until_ready(forward())
  jax.block_until_ready(cam())
  forward_times, cam_times = [], []
  for _ in range(max(1, reps)):
    for fn, times in ((forward, forward_times), (cam, cam_times)):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      times.append(time.perf_counter() - start)
  return statistics.median(forward_times), statistics.median(cam_times)


def main(argv=None):
  args = parse_args(argv)
  model = models.create(args.model, args.num_classes, args.image_size, dtype=args.dtype)
  images = jax.random.normal(jax.random.key(0), (args.batch, args.image_size, args.image_size, 3))
  variables = jax.jit(model.init)(jax.random.key(1), images[:1])
  # Perturbed parameters so gradients are not trivially zero (ViT's head starts at zero).
  variables = jax.tree_util.tree_map(
    lambda p: p + 0.01 * jax.random.normal(jax.random.key(2), p.shape, p.dtype), variables
  )

  forward = jax.jit(model.apply)
  print(
    f"model={args.model} image_size={args.image_size} batch={args.batch} dtype={args.dtype} "
    f"device={jax.devices()[0].platform} ({jax.device_count()} device(s))"
  )
  print(
    f"chunk_size={args.chunk_size} inner_chunk_size={args.inner_chunk_size} "
    f"smoothgrad samples={args.num_samples} ig steps={args.steps}"
  )
  print(f"{'method':<22}{'images/s':>10}{'ms/batch':>12}{'forward ms':>12}{'x forward':>11}")
  options = dict(
    chunk_size=args.chunk_size,
    inner_chunk_size=args.inner_chunk_size,
    num_samples=args.num_samples,
    steps=args.steps,
    key=jax.random.key(3),
  )
  for method in args.methods:
    reps = args.slow_reps if method in cams.MULTI_PASS else args.reps
    run = jax.jit(lambda v, x, m=method: cams.compute(m, model.apply, v, x, **options))
    forward_s, cam_s = paired_medians(
      lambda: forward(variables, images), lambda: run(variables, images), reps
    )
    print(
      f"{method:<22}{args.batch / cam_s:>10.1f}{cam_s * 1e3:>12.1f}{forward_s * 1e3:>12.1f}"
      f"{cam_s / forward_s:>11.2f}",
      flush=True,
    )


if __name__ == "__main__":
  main()
