r"""Why EfficientNet-Lite trained slowly on XLA:CPU: its depthwise convolutions, per op.

    python benchmarks/depthwise.py [--batch 8 --reps 5]

Times one depthwise convolution (a k x k filter per channel, TensorFlow "SAME" padding) forward
and with its gradients (input and kernel), at the shapes EfficientNet-Lite0's blocks see at
128 px, two ways: XLA's convolution (`lax.conv_general_dilated` with feature_group_count = C,
what `nn.Conv(groups=C)` lowers to) and the same sum as k * k strided slices times per-channel
weights (`models.common.depthwise_shifts`, what the models use on CPU). Prints the milliseconds
of each (median of `--reps`), their ratio and the largest difference of the outputs.
"""

import argparse
import os
import statistics
import sys
import time

import jax
from jax import lax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from proxy_jax.models import common, efficientnet  # noqa: E402  pylint: disable=wrong-import-position

# (input side, channels, kernel, stride): Lite0's depthwise layers at 128 px, one per stage.
SHAPES = (
  (64, 96, 3, 2),
  (32, 144, 5, 2),
  (16, 240, 3, 2),
  (8, 480, 5, 1),
  (8, 672, 5, 2),
  (4, 1152, 3, 1),
)


def xla_conv(x, w, stride, pads):
  return lax.conv_general_dilated(
    x,
    w,
    (stride, stride),
    pads,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=x.shape[-1],
  )


def shifts(x, w, stride, pads):
  return common.depthwise_shifts(x, w, (stride, stride), pads)


def milliseconds(fn, args, reps):
  jitted = jax.jit(fn)
  jax.block_until_ready(jitted(*args))
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(jitted(*args))
    times.append(time.perf_counter() - start)
  return 1000 * statistics.median(times)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--reps", type=int, default=5)
  args = parser.parse_args(argv)
  print(f"load average {os.getloadavg()[0]:.1f}; milliseconds, median of {args.reps}")
  print(
    f"{'shape (B,H,W,C) k/s':<28}{'conv fwd':>10}{'shift fwd':>10}{'ratio':>7}"
    f"{'conv grad':>11}{'shift grad':>11}{'ratio':>7}{'max diff':>10}"
  )
  for side, channels, kernel, stride in SHAPES:
    x = jax.random.normal(jax.random.key(0), (args.batch, side, side, channels))
    w = jax.random.normal(jax.random.key(1), (kernel, kernel, 1, channels))
    pads = (efficientnet.same_padding(side, kernel, stride),) * 2
    row = []
    for fn in (xla_conv, shifts):
      forward = lambda x, w, fn=fn: fn(x, w, stride, pads)
      grads = jax.grad(lambda x, w, fn=fn: jnp.sum(fn(x, w, stride, pads) ** 2), (0, 1))
      row.append((milliseconds(forward, (x, w), args.reps), milliseconds(grads, (x, w), args.reps)))
    difference = float(jnp.abs(xla_conv(x, w, stride, pads) - shifts(x, w, stride, pads)).max())
    (conv_f, conv_g), (shift_f, shift_g) = row
    print(
      f"{str((args.batch, side, side, channels)) + f' {kernel}/{stride}':<28}"
      f"{conv_f:>10.2f}{shift_f:>10.2f}{conv_f / shift_f:>7.1f}"
      f"{conv_g:>11.2f}{shift_g:>11.2f}{conv_g / shift_g:>7.1f}{difference:>10.1e}"
    )


if __name__ == "__main__":
  main()
