"""Faithfulness of the explanations of models trained with and without Proxy Attention.

  python -m proxy_jax.faithfulness --workdirs=runs/base,runs/proxy --split=val [--cam=gradcampp]

For every model, on the same evaluation images (matched by example id, so each model sees its
own decoding of the same files), CAMs of the predicted class are scored by:
  deletion AUC   (lower is better)  the class probability as the most-attended pixels are
                                    replaced by the baseline, 0 -> 100 % in `steps` steps;
  insertion AUC  (higher is better) the same, revealing the most-attended pixels of a baseline;
  average drop % (lower is better)  mean of max(0, Y - O) / Y, O = probability on image * CAM;
  increase in confidence % (higher) share of images with O > Y (Chattopadhay et al., 2018).
The baseline is the dataset mean colour (zero after normalisation): less out of distribution than
black. Writes `<out>/faithfulness_<split>.csv` (one row per model, side by side) and
`<out>/faithfulness_<split>.png` (the same images' CAM overlays, one row per model). Every jitted
call sees one chunk shape: the ragged last chunk is padded (`chunked`) and its padding dropped.
(`python -m proxy_jax.study` trains the arms of a study and scores each final model with these
measures; see experiments/README.md.)
"""

import functools
import os

from absl import app
from absl import flags
from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from proxy_jax import cams
from proxy_jax import proxy
from proxy_jax.run import dispatch
from proxy_jax import cli
from proxy_jax import data
from proxy_jax.core import errors
from proxy_jax.images import images_grid
from proxy_jax import infer
from proxy_jax.images import preprocess
from proxy_jax.run import restore
from proxy_jax.core.io_utils import atomic_save_figure, atomic_write

BETTER = {
  "deletion_auc": "lower",
  "insertion_auc": "higher",
  "average_drop_pct": "lower",
  "increase_in_confidence_pct": "higher",
  "accuracy": "higher",
}


def pixel_ranks(maps):
  """(B, H, W) maps -> (B, H, W) rank of each pixel, 0 = most attended."""
  flat = maps.reshape(maps.shape[0], -1)
  order = jnp.argsort(-flat, axis=-1, stable=True)
  ranks = jnp.argsort(order, axis=-1, stable=True)
  return ranks.reshape(maps.shape)


@functools.partial(jax.jit, static_argnums=(0, 5))
def _curves(apply_fn, variables, images01, maps, targets, steps):
  """Probabilities of `targets` along deletion and insertion: two (B, steps + 1) arrays."""
  pixels = maps.shape[1] * maps.shape[2]
  ranks = pixel_ranks(maps)[..., None]
  counts = jnp.round(jnp.linspace(0.0, 1.0, steps + 1) * pixels)
  baseline = jnp.asarray(preprocess.IMAGENET_MEAN)

  def probability(images):
    logits = apply_fn(variables, preprocess.normalize(images))
    return jnp.take_along_axis(jax.nn.softmax(logits), targets[:, None], axis=-1)[:, 0]

  def at(count):
    top = ranks < count
    deleted = jnp.where(top, baseline, images01)
    inserted = jnp.where(top, images01, baseline)
    return probability(deleted), probability(inserted)

  deletion, insertion = jax.lax.map(at, counts)
  return deletion.T, insertion.T


@functools.partial(jax.jit, static_argnums=0)
def _confidence(apply_fn, variables, images01, maps, targets):
  """(probability on the image, probability on image * CAM) for `targets`."""

  def probability(images):
    logits = apply_fn(variables, preprocess.normalize(images))
    return jnp.take_along_axis(jax.nn.softmax(logits), targets[:, None], axis=-1)[:, 0]

  return probability(images01), probability(images01 * maps[..., None])


def auc(curves: np.ndarray) -> np.ndarray:
  """Trapezoidal area under (B, steps + 1) curves sampled on [0, 1]."""
  steps = curves.shape[-1] - 1
  return (curves[:, 1:] + curves[:, :-1]).sum(-1) / (2.0 * steps)


def explanation_scores(
  model,
  variables,
  images: np.ndarray,
  maps: np.ndarray,
  targets: np.ndarray,
  steps: int = 16,
  chunk: int = 16,
) -> dict:
  """Per-image deletion/insertion AUC and confidence drop/increase; see the module docstring."""

  def apply(part):
    images01 = np.asarray(part.inputs["image"], np.float32) / 255.0
    part_maps = np.asarray(part.inputs["map"], np.float32)
    part_targets = np.asarray(part.inputs["target"], np.int32)
    return (
      *_curves(model.apply, variables, images01, part_maps, part_targets, steps),
      *_confidence(model.apply, variables, images01, part_maps, part_targets),
    )

  deletion, insertion, full, masked = dispatch.apply_chunked(
    apply,
    {"image": images, "map": np.asarray(maps), "target": np.asarray(targets)},
    min(chunk, len(images)),
  )
  return {
    "deletion_auc": auc(deletion),
    "insertion_auc": auc(insertion),
    "drop": np.maximum(0.0, full - masked) / np.maximum(full, 1e-12),
    "increase": (masked > full).astype(np.float32),
    "deletion_curve": deletion.mean(0),
    "insertion_curve": insertion.mean(0),
  }


def common_source_indices(splits) -> np.ndarray:
  """The source indices (`data.Split`) of the examples every split holds, sorted."""
  shared = None
  for split in splits:
    shared = (
      np.asarray(split.source_indices)
      if shared is None
      else np.intersect1d(shared, split.source_indices)
    )
  return np.sort(shared)


def select(split, source_indices: np.ndarray):
  """The split's images and labels of the examples at `source_indices`, in that order."""
  position = {int(i): p for p, i in enumerate(split.source_indices)}
  index = np.array([position[int(i)] for i in source_indices], np.int64)
  return np.asarray(split.images[index]), np.asarray(split.labels[index])


def load_models(workdirs: list[str], split_name: str):
  models = []
  for workdir in workdirs:
    model, variables, config, class_names = restore.restore_for_inference(workdir)
    split = getattr(data.load_dataset(config, workdir), split_name)
    if split is None:
      raise errors.DataError(f"{workdir}: the dataset has no {split_name} split")
    split = data.eval_view(split, config.image_size)  # Training images are stored larger.
    models.append(
      {
        "workdir": workdir,
        "model": model,
        "variables": variables,
        "config": config,
        "class_names": class_names,
        "split": split,
      }
    )
  return models


def _shared_examples(models: list[dict], split_name: str) -> np.ndarray:
  """Source indices every workdir's split holds, labelled alike by all; DataError otherwise."""
  shared = common_source_indices([m["split"] for m in models])
  if not len(shared):
    raise errors.DataError("the workdirs share no evaluation example (different data or split)")
  smallest = min(len(m["split"]) for m in models)
  if len(shared) < smallest:
    logging.warning(
      "only %d of %d %s examples are shared by all workdirs (splits drawn with "
      "different data.split_seed or data?); comparing those",
      len(shared),
      smallest,
      split_name,
    )
  reference = select(models[0]["split"], shared)[1]
  for entry in models[1:]:
    if not np.array_equal(select(entry["split"], shared)[1], reference):
      raise errors.DataError(
        f"{entry['workdir']} labels the shared examples differently from "
        f"{models[0]['workdir']}: the runs use different data"
      )
  return shared


def compare_workdirs(
  workdirs: list[str],
  split_name: str = "val",
  cam: str = "gradcampp",
  num_images: int = 256,
  steps: int = 16,
  target: str = "predicted",
  names: list[str] | None = None,
  out: str = "faithfulness",
  grid_images: int = 8,
):
  """Scores every model's CAMs on the same images; writes the CSV and PNG; returns the table."""
  models = load_models(workdirs, split_name)
  shared = _shared_examples(models, split_name)
  shared = shared[:num_images] if num_images > 0 else shared
  names = names or [os.path.basename(os.path.normpath(w)) for w in workdirs]
  rows, panels = [], []
  for name, entry in zip(names, models):
    images, labels = select(entry["split"], shared)
    logits = infer.predict_logits(entry["model"], entry["variables"], images, 64)
    predicted = logits.argmax(-1)
    targets = predicted if target == "predicted" else labels
    maps = infer.cam_maps(cam, entry["model"], entry["variables"], images, targets)
    scores = explanation_scores(entry["model"], entry["variables"], images, maps, targets, steps)
    rows.append(
      {
        "model": name,
        "workdir": entry["workdir"],
        "cam_method": cam,
        "target": target,
        "images": len(shared),
        "accuracy": float((predicted == labels).mean()),
        "deletion_auc": float(scores["deletion_auc"].mean()),
        "insertion_auc": float(scores["insertion_auc"].mean()),
        "average_drop_pct": float(100 * scores["drop"].mean()),
        "increase_in_confidence_pct": float(100 * scores["increase"].mean()),
      }
    )
    panels.append(
      (
        name,
        images[:grid_images],
        maps[:grid_images],
        [entry["class_names"][i] for i in predicted[:grid_images]],
        [entry["class_names"][i] for i in labels[:grid_images]],
      )
    )
  table = pd.DataFrame(rows)
  os.makedirs(out, exist_ok=True)
  atomic_write(
    os.path.join(out, f"faithfulness_{split_name}.csv"), lambda f: table.to_csv(f, index=False), "w"
  )
  write_figure(panels, os.path.join(out, f"faithfulness_{split_name}.png"), cam)
  return table


def write_figure(panels, path: str, cam: str) -> None:
  """Row 0: the images, titled with their labels; then one row of CAM overlays per model."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  columns, pad = len(panels[0][1]), 2
  cells = [images_grid.as_uint8(panels[0][1])]
  cells += [cams.overlay(images, maps) for _, images, maps, _, _ in panels]
  picture = images_grid.grid(np.concatenate(cells), columns=columns, pad=pad)
  height, width = cells[0].shape[1] + pad, cells[0].shape[2] + pad
  figure, axis = plt.subplots(figsize=(1.6 * columns, 1.7 * (len(panels) + 1)))
  axis.imshow(picture, interpolation="nearest")
  axis.set_xticks(
    [pad + (c + 0.5) * width for c in range(columns)],
    [f"label {label}" for label in panels[0][4]],
    fontsize=7,
  )
  axis.xaxis.tick_top()
  axis.set_yticks(
    [pad + (r + 0.5) * height for r in range(len(panels) + 1)],
    ["images", *(name for name, *_ in panels)],
    fontsize=8,
  )
  for row, (_, _, _, predicted, _) in enumerate(panels, start=1):
    for column, label in enumerate(predicted):
      axis.text(
        pad + column * width + 1,
        pad + row * height + 1,
        f"pred {label}",
        fontsize=6,
        va="top",
        color="white",
        bbox={"facecolor": "black", "alpha": 0.5, "pad": 1},
      )
  axis.set_title(f"{cam} on the same images, one row per model", fontsize=9)
  figure.tight_layout()
  atomic_save_figure(path, figure, dpi=110, bbox_inches="tight")
  plt.close(figure)


# ---------------------------------------------------------------- CLI


def define_flags():
  flags.DEFINE_list("workdirs", None, "Trained run directories to compare.", required=True)
  flags.DEFINE_list("names", [], "Display names (default: the workdir names).")
  flags.DEFINE_enum("split", "val", ["val", "test", "train"], "Evaluation split.")
  flags.DEFINE_enum("cam", "gradcampp", cams.METHODS, "CAM method used for every model.")
  flags.DEFINE_enum("target", "predicted", proxy.CAM_TARGETS, "Class the CAM explains.")
  flags.DEFINE_integer("num_images", 256, "Images scored (0 = the whole split).")
  flags.DEFINE_integer("steps", 16, "Deletion/insertion steps from 0 to 100 % of the pixels.")
  flags.DEFINE_integer("grid_images", 8, "Images in the PNG grid.")
  flags.DEFINE_string("out", "faithfulness", "Output folder.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  table = compare_workdirs(
    f.workdirs,
    f.split,
    f.cam,
    f.num_images,
    f.steps,
    f.target,
    f.names or None,
    f.out,
    f.grid_images,
  )
  shown = table.drop(columns=["workdir"]).set_index("model").T
  shown.insert(0, "better", [BETTER.get(i, "") for i in shown.index])
  print(shown.to_string())
  print(
    f"\nwrote {os.path.join(f.out, f'faithfulness_{f.split}.csv')} and "
    f"{os.path.join(f.out, f'faithfulness_{f.split}.png')}"
  )


if __name__ == "__main__":
  cli.run(main, define_flags)
