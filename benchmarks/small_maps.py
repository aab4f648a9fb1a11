"""XLA:CPU's slow convolutions on tiny feature maps, the im2col path that avoids them, and PyTorch.

    python benchmarks/small_maps.py                       # ResNet-18, ImageNet stem, 64 px
    python benchmarks/small_maps.py --torch-python /work/torchvenv/bin/python --rounds 3
    python benchmarks/small_maps.py --image-size 224 --batch 16 --skip-plain --gradcam \
        --torch-python /work/torchvenv/bin/python --rounds 3
    python benchmarks/small_maps.py --model efficientnet_lite0 --image-size 224 --batch 16 \
        --skip-plain --gradcam --torch-python /work/torchvenv/bin/python --rounds 3

`--model efficientnet_lite0` times EfficientNet-Lite0 instead (depthwise convolutions), against
`efficientnet-lite-pytorch`'s model (random weights: speed does not depend on them), Grad-CAM
on both sides on the head's activated output (an identity module after `extract_features` on the
torch side, as benchmarks/efficientnet_lite_cams.py).

At 64 px the ImageNet stem leaves ResNet-18's last stage 2x2 pixels, where XLA:CPU's 3x3
convolutions (and, worse, their gradients) run far below their usual rate. `models/common.py`
computes convolutions with outputs of at most 2x2 as im2col + one matmul on CPU. This prints
forward and train-step images/s with that path off (plain `lax.conv_general_dilated`) and on;
the path is chosen when a function is traced, so each setting gets freshly jitted functions.
With PyTorch importable here, or a Python that has it given as --torch-python (torch is no
project requirement; torchvision's ResNet-18 when torchvision loads, else the fixtures' copy),
the same model and step in PyTorch are timed on the same CPU; `--gradcam` adds Grad-CAM
(`cams.compute` against pytorch-grad-cam's `GradCAM` on `layer4[-1]`, predicted class).

Run it on an idle machine (the load average is printed): on busy cores PyTorch's OpenMP
threads wait for descheduled peers and its figures collapse far more than JAX's.
Each round runs the JAX side and the PyTorch side in fresh processes, one after the other,
their order alternating between rounds (so neither always runs on a cooler or warmer machine);
each figure in a process is the median of `--reps` timed runs after compilation / warm-up.
The table gives the median over rounds of each figure, and each ratio as the median of its
per-round ratios (each pairs two processes that ran back to back).
"""

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="resnet18", choices=("resnet18", "efficientnet_lite0"))
  parser.add_argument("--image-size", type=int, default=64)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--reps", type=int, default=5, help="timed runs per figure per process")
  parser.add_argument(
    "--rounds",
    type=int,
    default=1,
    help="rounds of (JAX process, PyTorch process), order alternating",
  )
  parser.add_argument(
    "--skip-plain",
    action="store_true",
    help="time only the im2col setting (plain is slow, and at >= 96 px "
    "no map is 2x2 so both settings are the same program)",
  )
  parser.add_argument("--gradcam", action="store_true", help="also time Grad-CAM")
  parser.add_argument(
    "--torch-python", default="", help="a Python with torch, for the PyTorch comparison"
  )
  parser.add_argument("--side", choices=("jax", "torch"), default="", help=argparse.SUPPRESS)
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
  from proxy_jax import cams, models  # pylint: disable=g-import-not-at-top
  from proxy_jax.run import model_state, steps
  from proxy_jax.models import common  # pylint: disable=g-import-not-at-top

  common.CPU_IM2COL = im2col
  size, batch = args.image_size, args.batch
  model = models.create(args.model, args.num_classes, size, "float32", small_stem=False)
  images = jax.random.normal(jax.random.key(0), (batch, size, size, 3))
  labels = jax.random.randint(jax.random.key(1), (batch,), 0, args.num_classes)
  targets = jax.nn.one_hot(labels, args.num_classes)  # steps.cross_entropy takes soft targets.
  variables = jax.jit(model.init)(jax.random.key(2), images[:1])
  state = model_state.TrainState.create(
    apply_fn=model.apply,
    params=variables["params"],
    tx=optax.adamw(1e-3),
    batch_stats=variables["batch_stats"],
  )
  forward = jax.jit(lambda v, x: model.apply(v, x))

  def step(state, images, targets):
    def loss_fn(params):
      logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats},
        images,
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": jax.random.key(3)},
      )
      return jnp.mean(steps.cross_entropy(logits, targets)), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads, batch_stats=updates["batch_stats"]), loss

  step = jax.jit(step)
  holder = {"state": state}

  def train_once():
    holder["state"], loss = step(holder["state"], images, targets)
    jax.block_until_ready(loss)

  rates = {
    "forward": batch
    / median_seconds(lambda: jax.block_until_ready(forward(variables, images)), args.reps),
    "train": batch / median_seconds(train_once, args.reps),
  }
  if args.gradcam and im2col:  # One model call for the batch, as pytorch-grad-cam makes.
    rates["gradcam"] = batch / median_seconds(
      lambda: jax.block_until_ready(
        cams.compute("gradcam", model.apply, variables, images, chunk_size=batch)
      ),
      args.reps,
    )
  return rates


def jax_side(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top

  return {
    "plain": None if args.skip_plain else jax_rates(args, im2col=False),
    "im2col": jax_rates(args, im2col=True),
    "platform": jax.devices()[0].platform,
    "version": jax.__version__,
  }


# ---------------------------------------------------------------- PyTorch


def torch_model(args):
  """torchvision's ResNet-18 (the pretrained-converter fixtures' plain-torch copy without it), or
  efficientnet-lite-pytorch's Lite0 wrapped so Grad-CAM can hook the head's activated output."""
  if args.model == "efficientnet_lite0":
    from torch import nn  # pylint: disable=g-import-not-at-top
    from efficientnet_lite_pytorch import EfficientNet  # pylint: disable=g-import-not-at-top

    class Wrapped(nn.Module):
      def __init__(self, net):
        super().__init__()
        self.net, self.cam_layer = net, nn.Identity()

      def forward(self, x):
        features = self.cam_layer(self.net.extract_features(x))
        return self.net._fc(self.net._dropout(self.net._avg_pooling(features).flatten(1)))  # pylint: disable=protected-access

    net = EfficientNet.from_name(
      "efficientnet-lite0", num_classes=args.num_classes, image_size=args.image_size
    )
    return Wrapped(net), "efficientnet-lite-pytorch"
  try:
    from torchvision.models import resnet18  # pylint: disable=g-import-not-at-top

    return resnet18(num_classes=args.num_classes), "torchvision"
  except (ImportError, RuntimeError):  # A torchvision built for another torch: RuntimeError.
    sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
    from make_pretrained_fixtures import BasicBlock, ResNet  # pylint: disable=g-import-not-at-top

    return ResNet(BasicBlock, (2, 2, 2, 2), args.num_classes, 64), "fixture copy"


def torch_side(args) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model, source = torch_model(args)
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

  rates = {
    "forward": args.batch / median_seconds(forward, args.reps),
    "train": args.batch / median_seconds(train_once, args.reps),
    "version": torch.__version__,
    "threads": torch.get_num_threads(),
    "model": source,
  }
  if args.gradcam:
    from pytorch_grad_cam import GradCAM  # pylint: disable=g-import-not-at-top

    model.eval()
    layer = model.cam_layer if args.model == "efficientnet_lite0" else model.layer4[-1]
    with GradCAM(model=model, target_layers=[layer]) as gradcam:
      rates["gradcam"] = args.batch / median_seconds(
        lambda: gradcam(input_tensor=images, targets=None), args.reps
      )
  return rates


# ---------------------------------------------------------------- rounds and table


def run_side(args, side: str, python: str) -> dict:
  """One fresh process for `side`; its result is the JSON on its last stdout line."""
  command = [
    python,
    os.path.abspath(__file__),
    f"--side={side}",
    f"--model={args.model}",
    f"--image-size={args.image_size}",
    f"--batch={args.batch}",
    f"--num-classes={args.num_classes}",
    f"--reps={args.reps}",
  ]
  command += ["--skip-plain"] * args.skip_plain + ["--gradcam"] * args.gradcam
  result = subprocess.run(command, capture_output=True, text=True, check=False)
  if result.returncode:
    sys.exit(f"{side} process failed ({result.returncode}):\n{result.stderr[-3000:]}")
  return json.loads(result.stdout.strip().splitlines()[-1])


def torch_python(args) -> str:
  if args.torch_python:
    return args.torch_python
  return sys.executable if importlib.util.find_spec("torch") else ""


def measure_rounds(args) -> list:
  """[(jax result, torch result or None)] per round, the two processes' order alternating."""
  reference_python, results = torch_python(args), []
  for index in range(max(1, args.rounds)):
    order = ["jax", "torch"] if index % 2 == 0 else ["torch", "jax"]
    done = {}
    for side in order:
      if side == "torch" and not reference_python:
        done[side] = None
      else:
        done[side] = run_side(args, side, sys.executable if side == "jax" else reference_python)
    results.append((done["jax"], done["torch"]))
    # The 1-minute load average, so a table says whether it ran on an idle machine: with other
    # work on the cores, PyTorch's OpenMP threads wait on descheduled peers (10x slower seen).
    line = f"round {index + 1} ({' then '.join(order)}, load {os.getloadavg()[0]:.1f}): "
    line += f"JAX im2col {brief(done['jax']['im2col'])}"
    if done["torch"] is not None:
      line += f", PyTorch {brief(done['torch'])}"
    print(line, flush=True)
  return results


def brief(rates: dict) -> str:
  return " ".join(f"{k} {rates[k]:.1f}" for k in ("forward", "train", "gradcam") if k in rates)


def print_table(args, results):
  columns = ["forward", "train"] + ["gradcam"] * args.gradcam
  titles = {"forward": "forward", "train": "train step", "gradcam": "Grad-CAM"}
  print(f"medians of {len(results)} round(s), {args.reps} timed runs each, images/s")
  print(f"{'':<32}" + "".join(f"{titles[c]:>12}" for c in columns))
  settings = [("plain", "JAX, plain conv (before)"), ("im2col", "JAX, im2col on tiny maps")]
  settings = [(key, name) for key, name in settings if results[0][0][key] is not None]
  rows = [(name, [r[0][key] for r in results]) for key, name in settings]
  reference = [r[1] for r in results if r[1] is not None]
  if reference:
    rows.append((f"PyTorch {reference[0]['version']} ({reference[0]['threads']} thr)", reference))
  for name, per_round in rows:
    cells = [
      statistics.median([r[c] for r in per_round]) if c in per_round[0] else float("nan")
      for c in columns
    ]
    print(f"{name:<32}" + "".join(f"{cell:>12.1f}" for cell in cells))
  ratios = []
  if len(settings) == 2:
    ratios.append(
      ("im2col / plain", [r[0]["im2col"] for r in results], [r[0]["plain"] for r in results])
    )
  if reference:
    ratios += [
      (f"{name.split(',')[1].strip()} / PyTorch", [r[0][key] for r in results], reference)
      for key, name in settings
    ]
  for name, tops, bottoms in ratios:
    cells = [
      statistics.median([t[c] / b[c] for t, b in zip(tops, bottoms)])
      if c in tops[0] and c in bottoms[0]
      else float("nan")
      for c in columns
    ]
    print(f"{name:<32}" + "".join(f"{cell:>12.2f}" for cell in cells))
  if not reference:
    print("PyTorch: not importable here and no --torch-python given; no comparison")


def main(argv=None):
  args = parse_args(argv)
  if args.side:
    print(json.dumps(jax_side(args) if args.side == "jax" else torch_side(args)))
    return
  print(
    f"{args.model}, ImageNet stem, {args.image_size} px (last stage "
    f"{args.image_size // 32}x{args.image_size // 32}), batch {args.batch}, float32, "
    f"CPU ({os.cpu_count()} cores), load average {os.getloadavg()[0]:.1f}",
    flush=True,
  )
  print_table(args, measure_rounds(args))


if __name__ == "__main__":
  main()
