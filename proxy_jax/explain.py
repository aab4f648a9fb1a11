"""Explain a trained model's predictions: one CAM overlay PNG per image and a predictions CSV.

  python -m proxy_jax.explain --workdir runs/x --images DIR_OR_FILE --method gradcampp --out DIR

DIR_OR_FILE is one image or a folder searched recursively (sorted). Images are decoded exactly
as training decoded them (`data.load_image_file`) and normalised with `data.normalize`; files
that do not decode are reported and skipped. Maps are for the predicted class unless `--target`
names a class index. Writes `<out>/<name>_<method>.png` (the overlay) for each image and
`<out>/predictions.csv` (file, predicted index and class name, probability, overlay file).
"""

import argparse
import csv
import os
import sys

import jax
import numpy as np
from PIL import Image

from proxy_jax import cams
from proxy_jax import data
from proxy_jax import errors
from proxy_jax import train


class ExplainError(errors.UserError):
  """A problem with the command line's inputs, reported as one clear line."""


def parse_args(argv=None):
  parser = argparse.ArgumentParser(prog="python -m proxy_jax.explain",
                                   description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", required=True, help="a trained run (config + checkpoint)")
  parser.add_argument("--images", required=True, help="an image file or a folder of images")
  parser.add_argument("--method", default="gradcampp", choices=cams.METHODS)
  parser.add_argument("--out", required=True, help="folder for the overlays and the CSV")
  parser.add_argument("--target", type=int, default=None,
                      help="class index to explain (default: each image's predicted class)")
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--alpha", type=float, default=0.5, help="weight of the colour map")
  parser.add_argument("--colormap", default="jet")
  parser.add_argument("--smooth-sigma", type=float, default=0.0)
  parser.add_argument("--seed", type=int, default=0, help="noise seed of the SmoothGrad family")
  return parser.parse_args(argv)


def list_files(path: str) -> list[str]:
  """The file itself, or every non-hidden file under the folder (recursive, sorted)."""
  if os.path.isfile(path):
    return [path]
  if not os.path.isdir(path):
    raise ExplainError(f"--images {path!r} is neither a file nor a folder")
  return data.list_files(path)


def overlay_name(path: str, root: str, method: str) -> str:
  """A flat, unique PNG name: the path below `root` with separators turned into "__"."""
  relative = os.path.relpath(path, root) if os.path.isdir(root) else os.path.basename(path)
  stem = os.path.splitext(relative)[0].replace(os.sep, "__")
  return f"{stem}_{method}.png"


def explain_batches(model, variables, images_uint8, args):
  """(maps (N, S, S), probabilities (N, classes)); batches padded to one shape (one compile)."""
  options = {"smooth_sigma": args.smooth_sigma, "return_logits": True}
  if args.method in cams.NOISY_METHODS:
    options["key"] = jax.random.key(args.seed)
  batch = max(1, min(args.batch_size, len(images_uint8)))
  maps, probabilities = [], []
  for begin in range(0, len(images_uint8), batch):
    chunk = images_uint8[begin:begin + batch]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
    inputs = data.normalize(padded.astype(np.float32) / 255.0)
    targets = None if args.target is None else np.full((batch,), args.target, np.int32)
    chunk_maps, logits = cams.compute(args.method, model.apply, variables, inputs, targets,
                                      **options)
    maps.append(np.asarray(chunk_maps)[:len(chunk)])
    probabilities.append(np.asarray(jax.nn.softmax(logits, axis=-1))[:len(chunk)])
  return np.concatenate(maps), np.concatenate(probabilities)


def run(args) -> list[dict]:
  """Writes the overlays and the CSV; returns the CSV rows."""
  paths = list_files(args.images)
  try:
    model, variables, config, class_names = train.restore_for_inference(args.workdir)
  except FileNotFoundError as error:
    raise ExplainError(f"--workdir {args.workdir!r}: {error}") from error
  if args.target is not None and not 0 <= args.target < len(class_names):
    raise ExplainError(f"--target {args.target} is not a class index (0..{len(class_names) - 1})")
  images, kept, skipped = data.load_image_files(paths, config.image_size)
  if not kept:
    raise ExplainError(f"no readable images among the {len(paths)} file(s) found")
  for path in skipped:
    print(f"skipped (not a readable image): {path}", file=sys.stderr)
  maps, probabilities = explain_batches(model, variables, images, args)
  overlays = cams.overlay(images, maps, args.alpha, args.colormap)
  os.makedirs(args.out, exist_ok=True)
  rows = []
  for path, blended, probs in zip(kept, overlays, probabilities):
    name = overlay_name(path, args.images, args.method)
    Image.fromarray(blended).save(os.path.join(args.out, name))
    index = int(np.argmax(probs))
    rows.append({"file": path, "predicted_index": index, "predicted_class": class_names[index],
                 "probability": f"{float(probs[index]):.6f}", "overlay": name})
  with open(os.path.join(args.out, "predictions.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  return rows


def main(argv=None) -> int:
  args = parse_args(argv)
  try:
    rows = run(args)
  except errors.UserError as error:
    return errors.report(error)
  print(f"wrote {len(rows)} {args.method} overlays and predictions.csv to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
