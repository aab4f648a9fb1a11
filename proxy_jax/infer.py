"""Inference with any trained workdir: top-k predictions as CSV, optional CAM overlays.

  python -m proxy_jax.infer --workdir=runs/x --images=PATH --top-k=5 [--cam=gradcampp --out=DIR]

PATH is an image file, a folder (searched recursively) or a glob pattern. Files are decoded
exactly as training decoded them (`data.load_image_file`: RGB, shorter side resized to the model's
image size, centre crop) and normalised by `preprocess.eval_inputs`, so a training image gives the
logits that evaluation gave it. Unreadable files are listed and skipped. Class indices map back to
the dataset's label names saved with the checkpoint.
"""

import functools
import glob
import os

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import pandas as pd
from PIL import Image

from proxy_jax import data
from proxy_jax import errors
from proxy_jax import preprocess
from proxy_jax.io_utils import atomic_write

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


def list_image_files(path: str) -> list[str]:
  """A file, every image under a folder (sorted, recursive) or the matches of a glob."""
  if os.path.isfile(path):
    return [path]
  if os.path.isdir(path):
    return [f for f in data.list_files(path) if f.lower().endswith(IMAGE_SUFFIXES)]
  matches = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
  if not matches:
    raise errors.MissingPathError(f"--images {path!r}: no such file, folder or glob match")
  return matches


@functools.partial(jax.jit, static_argnums=0)
def _forward(apply_fn, variables, images_uint8):
  return apply_fn(variables, preprocess.eval_inputs(images_uint8))


def predict_logits(model, variables, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """float32 logits (N, classes); batches are padded to one shape so nothing recompiles."""
  outputs = []
  for begin in range(0, len(images), batch_size):
    chunk = images[begin:begin + batch_size]
    padded = np.resize(chunk, (batch_size, *chunk.shape[1:])) if len(chunk) < batch_size else chunk
    outputs.append(np.asarray(_forward(model.apply, variables, padded))[:len(chunk)])
  classes = outputs[0].shape[-1] if outputs else 0
  return np.concatenate(outputs) if outputs else np.zeros((0, classes), np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
  return np.asarray(jax.nn.softmax(np.asarray(logits, np.float32), axis=-1))


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices, probabilities), (N, k) each, most likely first; ties keep the lower index."""
  k = min(k, probabilities.shape[-1])
  order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
  return order, np.take_along_axis(probabilities, order, axis=-1)


def predictions_table(paths: list[str], probabilities: np.ndarray, class_names: list[str],
                      k: int) -> pd.DataFrame:
  indices, values = top_k(probabilities, k)
  rows = []
  for path, index_row, value_row in zip(paths, indices, values):
    row = {"file": path}
    for rank, (index, value) in enumerate(zip(index_row, value_row), start=1):
      row[f"class_{rank}"] = class_names[index]
      row[f"index_{rank}"] = int(index)
      row[f"prob_{rank}"] = float(value)
    rows.append(row)
  return pd.DataFrame(rows)


def cam_maps(method: str, model, variables, images: np.ndarray, targets: np.ndarray,
             chunk_size: int = 64) -> np.ndarray:
  """(N, S, S) maps in [0, 1] for `targets`, computed `chunk_size` images per call."""
  from proxy_jax import cams  # pylint: disable=g-import-not-at-top
  maps = []
  for begin in range(0, len(images), chunk_size):
    inputs = preprocess.eval_inputs(images[begin:begin + chunk_size])
    maps.append(np.asarray(cams.compute(method, model.apply, variables, inputs,
                                        targets=targets[begin:begin + chunk_size],
                                        chunk_size=chunk_size)))
  return np.concatenate(maps) if maps else np.zeros(images.shape[:3], np.float32)


def _safe(text: str) -> str:
  return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:60]


def write_overlays(out_dir: str, paths: list[str], images: np.ndarray, maps: np.ndarray,
                   labels: list[str], alpha: float = 0.5, scale: int = 4) -> list[str]:
  """One PNG per image: (image | overlay), upscaled so small images stay visible."""
  from proxy_jax import cams  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  overlays = cams.overlay(images, maps, alpha)
  written = []
  for index, (path, image, blended, label) in enumerate(zip(paths, images, overlays, labels)):
    pair = Image.fromarray(np.concatenate([image, blended], axis=1))
    if scale > 1:
      pair = pair.resize((pair.width * scale, pair.height * scale), Image.NEAREST)
    stem = os.path.splitext(os.path.basename(path))[0]
    target = os.path.join(out_dir, f"{index:05d}_{_safe(stem)}_{_safe(label)}.png")
    pair.save(target)
    written.append(target)
  return written


def run_inference(workdir: str, images_path: str, k: int = 5, cam: str = "", out: str = "",
                  batch_size: int = 0, alpha: float = 0.5) -> pd.DataFrame:
  """Writes <out>/predictions.csv (and <out>/cams/*.png with `cam`); returns the table."""
  from proxy_jax import train  # pylint: disable=g-import-not-at-top
  model, variables, config, class_names = train.restore_for_inference(workdir)
  images, paths, skipped = data.load_image_files(list_image_files(images_path),
                                                        config.image_size)
  for path in skipped:
    logging.warning("skipped unreadable image %s", path)
  if not paths:
    raise errors.DataError(f"--images {images_path!r}: no readable image")
  logits = predict_logits(model, variables, images, batch_size or config.eval_batch_size)
  probabilities = softmax(logits)
  table = predictions_table(paths, probabilities, class_names, k)
  out = out or os.path.join(workdir, "infer")
  os.makedirs(out, exist_ok=True)
  atomic_write(os.path.join(out, "predictions.csv"),
               lambda f: table.to_csv(f, index=False), "w")
  if cam:
    predicted = probabilities.argmax(-1)
    maps = cam_maps(cam, model, variables, images, predicted,
                    min(64, int(config.cams.chunk_size)) if "cams" in config else 64)
    write_overlays(os.path.join(out, "cams"), paths, images, maps,
                   [class_names[i] for i in predicted], alpha)
  if skipped:
    skipped_table = pd.DataFrame({"file": skipped})
    atomic_write(os.path.join(out, "skipped.csv"),
                 lambda f: skipped_table.to_csv(f, index=False), "w")
  return table


# ---------------------------------------------------------------- CLI


def define_flags():
  flags.DEFINE_string("workdir", None, "A trained run directory (with checkpoints/).",
                      required=True)
  flags.DEFINE_string("images", None, "Image file, folder or glob.", required=True)
  flags.DEFINE_integer("top_k", 5, "Classes per image in the CSV.")
  flags.DEFINE_string("cam", "", "CAM method for overlays (e.g. gradcampp); empty = none.")
  flags.DEFINE_string("out", "", "Output folder (default: <workdir>/infer).")
  flags.DEFINE_integer("batch_size", 0, "Images per forward pass (0 = config.eval_batch_size).")
  flags.DEFINE_float("alpha", 0.5, "Weight of the CAM colour map in the overlays.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  table = run_inference(f.workdir, f.images, f.top_k, f.cam, f.out, f.batch_size, f.alpha)
  with pd.option_context("display.width", 200, "display.max_rows", 50):
    print(table.drop(columns=[c for c in table.columns if c.startswith("index_")]).to_string(
        index=False))
  print(f"\nwrote {os.path.join(f.out or os.path.join(f.workdir, 'infer'), 'predictions.csv')}")


if __name__ == "__main__":
  define_flags()
  from proxy_jax.sweep import hyphen_flags_parser  # pylint: disable=g-import-not-at-top
  errors.run_main(main, flags_parser=hyphen_flags_parser)
