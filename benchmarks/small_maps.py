"""XLA:CPU's slow convolutions on tiny feature maps, and the im2col path that avoids them.

    python benchmarks/small_maps.py                       # ResNet-18, ImageNet stem, 64 px
    python benchmarks/small_maps.py --torch-python /tmp/torchvenv/bin/python

At 64 px the ImageNet stem leaves ResNet-18's last stage 2x2 pixels, where XLA:CPU's 3x3
convolutions (and, worse, their gradients) run far below their usual rate. `models/common.py`
computes convolutions with outputs of at most 2x2 as im2col + one matmul on CPU. This prints
forward and train-step images/s with that path off (plain `lax.conv_general_dilated`) and on,
each the median of `--reps` timed runs after compilation, and their ratio, all in one process;
the path is chosen when a function is traced, so each setting gets freshly jitted functions.
With PyTorch importable here, or a Python that has it given as --torch-python (torch is no
project requirement), the same model and step in PyTorch are timed on the same CPU.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--image-size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--reps", type=int, default=5)
  parser.add_argument("--torch-python", default="",
                      help="a Python with torch, for the PyTorch comparison")
  parser.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
  return parser.parse_args(argv)


def median_seconds(fn, reps):
  fn()  # Compilation / warm-up.
  times = []
  for _ in range(max(1, reps)):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


# ---------------------------------------------------------------- JAX


def jax_rates(args, im2col: bool) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from proxy_jax import model_state, models, steps  # pylint: disable=g-import-not-at-top
  from proxy_jax.models import common  # pylint: disable=g-import-not-at-top

  common.CPU_IM2COL = im2col
  size, batch = args.image_size, args.batch
  model = models.create("resnet18", args.num_classes, size, "float32", small_stem=False)
  images = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
  labels = jax.random.randint(jax.random.key(1), (batch,), 0, args.num_classes)
  variables = jax.jit(model.init)(jax.random.key(2), images[:1])
  state = model_state.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                  tx=optax.adamw(1e-3), batch_stats=variables["batch_stats"])
  forward = jax.jit(lambda v, x: model.apply(v, x))

  def step(state, images, labels):
    def loss_fn(params):
      logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                       images, train=True, mutable=["batch_stats"])
      return steps.cross_entropy(logits, labels, jnp.ones(labels.shape)), updates
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"]), loss

  step = jax.jit(step)
  holder = {"state": state}

  def train_once():
    holder["state"], loss = step(holder["state"], images, labels)
    jax.block_until_ready(loss)

  forward_s = median_seconds(lambda: jax.block_until_ready(forward(variables, images)),
                             args.reps)
  train_s = median_seconds(train_once, args.reps)
  return {"forward": batch / forward_s, "train": batch / train_s}


# ---------------------------------------------------------------- PyTorch


def torch_rates(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
  # torchvision's ResNet layout in plain torch (the pretrained-converter fixtures' copy).
  from make_pretrained_fixtures import BasicBlock, ResNet  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = ResNet(BasicBlock, (2, 2, 2, 2), args.num_classes, 64)
  images = torch.randn(args.batch, 3, args.image_size, args.image_size)
  labels = torch.randint(0, args.num_classes, (args.batch,))
  optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
  loss_fn = nn.CrossEntropyLoss()

  def forward():
    model.eval()
    with torch.no_grad():
      model(images)

  def train_once():
    model.train()
    optimizer.zero_grad()
    loss_fn(model(images), labels).backward()
    optimizer.step()

  return {"forward": args.batch / median_seconds(forward, args.reps),
          "train": args.batch / median_seconds(train_once, args.reps),
          "version": torch.__version__, "threads": torch.get_num_threads()}


def torch_rates_anywhere(args):
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
    return torch_rates(args)
  except ImportError:
    pass
  if not args.torch_python:
    return None
  command = [args.torch_python, os.path.abspath(__file__), "--torch-only",
             f"--image-size={args.image_size}", f"--batch={args.batch}",
             f"--num-classes={args.num_classes}", f"--reps={args.reps}"]
  result = subprocess.run(command, capture_output=True, text=True, check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
  args = parse_args(argv)
  if args.torch_only:
    print(json.dumps(torch_rates(args)))
    return
  import jax  # pylint: disable=g-import-not-at-top
  print(f"resnet18, ImageNet stem, {args.image_size} px (last stage "
        f"{args.image_size // 32}x{args.image_size // 32}), batch {args.batch}, float32, "
        f"{jax.devices()[0].platform} ({os.cpu_count()} cores)")
  plain, im2col = jax_rates(args, im2col=False), jax_rates(args, im2col=True)
  reference = torch_rates_anywhere(args)
  print(f"{'images/s':<28}{'forward':>10}{'train step':>12}")
  rows = [("JAX, plain conv (before)", plain), ("JAX, im2col on tiny maps", im2col)]
  if reference is not None:
    rows.append((f"PyTorch {reference['version']} ({reference['threads']} thr)", reference))
  for name, rates in rows:
    print(f"{name:<28}{rates['forward']:>10.1f}{rates['train']:>12.1f}")
  print(f"{'im2col / plain':<28}{im2col['forward'] / plain['forward']:>10.2f}"
        f"{im2col['train'] / plain['train']:>12.2f}")
  if reference is not None:
    for name, rates in rows[:2]:
      print(f"{name.split(',')[1].strip() + ' / PyTorch':<28}"
            f"{rates['forward'] / reference['forward']:>10.2f}"
            f"{rates['train'] / reference['train']:>12.2f}")
  else:
    print("PyTorch: not importable here and no --torch-python given; no comparison")


if __name__ == "__main__":
  main()
